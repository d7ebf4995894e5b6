#version 450
#extension GL_GOOGLE_include_directive : require
// ScaleShift: x[c] = x[c]·(1 + v[c]) + v[C + c] (the time embedding, `scale_shift`).
// x (c,hw), v (2c) -> x (c,hw)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint x_off; uint v_off; uint c; uint hw; } p;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.c * p.hw) return;
    uint base = gl_WorkGroupID.z * p.stride;
    uint ch = i / p.hw;
    float x = a[base + p.x_off + i];
    a[base + p.x_off + i] = x * (1.0 + a[base + p.v_off + ch]) + a[base + p.v_off + p.c + ch];
}
