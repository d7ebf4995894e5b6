#version 450
#extension GL_GOOGLE_include_directive : require
// Concat: channel concatenation [a; b].
// a (ca,h,w), b (cb,h,w) -> out (ca+cb,h,w)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint a_off; uint na; uint b_off; uint nb; } p;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.na + p.nb) return;
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.out_off + i] = i < p.na ? a[base + p.a_off + i] : a[base + p.b_off + (i - p.na)];
}
