#version 450
#extension GL_GOOGLE_include_directive : require
// Upsample2x: nearest neighbour, each pixel repeated in a 2×2 block.
// x (c,h,w) -> out (c,2h,2w)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint x_off; uint c; uint h; uint w; } p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    uint w2 = 2u * p.w;
    uint plane = 4u * p.h * p.w;
    if (g >= p.c * plane) return;
    uint ch = g / plane;
    uint oy = (g % plane) / w2;
    uint ox = g % w2;
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.out_off + g] = a[base + p.x_off + (ch * p.h + oy / 2u) * p.w + ox / 2u];
}
