#version 450
#extension GL_GOOGLE_include_directive : require
// Attention phase 1: t = xnᵀ, token-major, into the first part of the scratch [t | q | k | v].
// xn (c,hw) -> t (hw,c)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint t_off; uint xn_off; uint c; uint hw; } p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.c * p.hw) return;
    uint ch = g / p.hw;
    uint i = g % p.hw;
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.t_off + i * p.c + ch] = a[base + p.xn_off + g];
}
