#version 450
#extension GL_GOOGLE_include_directive : require
// Attention phase 3: out = (x + bo + wo·t)·scale, channel-major (out may be x: same element).
// t (hw,c) from the scratch; wo (c,c); bo (c); x (c,hw) -> out (c,hw)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint x_off; uint s_off; uint c; uint hw; uint wo; uint wf16; uint bo; float scale;
} p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.c * p.hw) return;
    uint ch = g / p.hw;
    uint i = g % p.hw;
    uint base = gl_WorkGroupID.z * p.stride;
    uint t = base + p.s_off + i * p.c;
    float acc = 0.0;
    for (uint k = 0u; k < p.c; k++) acc += weight(p.wo, ch * p.c + k, p.wf16) * a[t + k];
    a[base + p.out_off + g] = (a[base + p.x_off + g] + vec_f32(p.bo, ch) + acc) * p.scale;
}
