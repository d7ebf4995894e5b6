#version 450
#extension GL_GOOGLE_include_directive : require
// AddChannel: x[c] += v[c] (the time embedding, `default` shift).
// x (c,hw), v (c) -> x (c,hw)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint x_off; uint v_off; uint c; uint hw; } p;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.c * p.hw) return;
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.x_off + i] += a[base + p.v_off + i / p.hw];
}
