#version 450
#extension GL_GOOGLE_include_directive : require
// Pool2d: the PoolFn of code `kind` over each kh × kw window of each channel; windows start at
// (oy·sy − top, ox·sx − left) and the parts outside the input are left out (Max: the largest element inside;
// Average: their mean; AverageWithPad: their sum over kh·kw). Elements are taken row by row, as on the CPU.
// x (c,h,w) -> out (c,ho,wo)
layout(local_size_x = 64) in;
#include "common.glsl"
#include "codes.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint x_off; uint c; uint h; uint w; uint kh; uint kw; uint sy; uint sx; uint pt; uint pl;
    uint ho; uint wo; uint kind;
} p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    uint plane = p.ho * p.wo;
    if (g >= p.c * plane) return;
    uint ch = g / plane;
    uint oy = (g % plane) / p.wo;
    uint ox = g % p.wo;
    uint base = gl_WorkGroupID.z * p.stride;
    uint xc = base + p.x_off + ch * p.h * p.w;
    int y0 = int(oy * p.sy) - int(p.pt);
    int x0 = int(ox * p.sx) - int(p.pl);
    bool is_max = p.kind == POOL_MAX;
    float acc = is_max ? uintBitsToFloat(0xff800000u) : 0.0;
    uint count = 0u;
    for (int y = max(y0, 0); y < min(y0 + int(p.kh), int(p.h)); y++) {
        for (int x = max(x0, 0); x < min(x0 + int(p.kw), int(p.w)); x++) {
            float e = a[xc + uint(y) * p.w + uint(x)];
            acc = is_max ? max(acc, e) : acc + e;
            count++;
        }
    }
    float r = acc;
    if (p.kind == POOL_AVERAGE) r = acc / float(max(count, 1u));
    else if (p.kind == POOL_AVERAGE_WITH_PAD) r = acc / float(p.kh * p.kw);
    a[base + p.out_off + g] = r;
}
