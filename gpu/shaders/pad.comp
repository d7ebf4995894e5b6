#version 450
#extension GL_GOOGLE_include_directive : require
// Pad: each channel padded by [top, left, bottom, right] with the PadMode of code `mode`: the constant `value`,
// the mirror image without the edge (reflect; pads below the side, validated) or the edge pixel repeated.
// x (c,h,w) -> out (c, h + top + bottom, w + left + right)
layout(local_size_x = 64) in;
#include "common.glsl"
#include "codes.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint x_off; uint c; uint h; uint w; uint pt; uint pl; uint pb; uint pr; float value; uint mode;
} p;

// The input index of padded index i along an axis of length n with `lo` before it, or -1 for the constant.
int src(uint i, uint lo, uint n) {
    int j = int(i) - int(lo);
    int nn = int(n);
    if (j >= 0 && j < nn) return j;
    if (p.mode == PAD_EDGE) return clamp(j, 0, nn - 1);
    if (p.mode == PAD_REFLECT) return clamp(j < 0 ? -j : 2 * (nn - 1) - j, 0, nn - 1);
    return -1;
}

void main() {
    uint g = gl_GlobalInvocationID.x;
    uint ho = p.h + p.pt + p.pb;
    uint wo = p.w + p.pl + p.pr;
    if (g >= p.c * ho * wo) return;
    uint ch = g / (ho * wo);
    uint oy = (g % (ho * wo)) / wo;
    uint ox = g % wo;
    int y = src(oy, p.pt, p.h);
    int x = src(ox, p.pl, p.w);
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.out_off + g] =
        y >= 0 && x >= 0 ? a[base + p.x_off + ch * p.h * p.w + uint(y) * p.w + uint(x)] : p.value;
}
