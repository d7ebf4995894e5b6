#version 450
#extension GL_GOOGLE_include_directive : require
// Add: out = (a + b)·scale (out may be a or b: each element is read before it is written).
// a (n), b (n) -> out (n)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint a_off; uint b_off; uint n; float scale; } p;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.n) return;
    uint base = gl_WorkGroupID.z * p.stride;
    float s = a[base + p.a_off + i] + a[base + p.b_off + i];
    a[base + p.out_off + i] = p.scale == 1.0 ? s : s * p.scale;
}
