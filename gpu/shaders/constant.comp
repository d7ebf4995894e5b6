#version 450
#extension GL_GOOGLE_include_directive : require
// Constant: out = t, an f32 tensor of out's size.
// t (n) -> out (n)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint n; uint t; } p;
void main() {
    uint k = gl_GlobalInvocationID.x;
    if (k >= p.n) return;
    a[gl_WorkGroupID.z * p.stride + p.out_off + k] = vec_f32(p.t, k);
}
