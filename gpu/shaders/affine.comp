#version 450
#extension GL_GOOGLE_include_directive : require
// Affine: out = x·mul + add (out may be x).
// x (n) -> out (n)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint x_off; uint n; float mul; float add; } p;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.n) return;
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.out_off + i] = a[base + p.x_off + i] * p.mul + p.add;
}
