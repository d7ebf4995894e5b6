#version 450
#extension GL_GOOGLE_include_directive : require
// ConvTranspose2d as a gather: output (o, oy, ox) sums w[i][o][ky][kx]·x[i][iy][ix] over the taps with
// oy = iy·s + ky − top and ox = ix·s + kx − left, in the CPU's order (bias, then input channel, kernel row,
// kernel column: each tap meets at most one input pixel of an output pixel).
// w (ci,co,kh,kw) ⋆ x (ci,h,w) + b (co) -> out (co,ho,wo)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint x_off; uint ci; uint h; uint w; uint co; uint kh; uint kw;
    uint s; uint pt; uint pl; uint ho; uint wo; uint wgt; uint wf16; uint b;
} p;

void main() {
    uint g = gl_GlobalInvocationID.x;
    uint plane = p.ho * p.wo;
    if (g >= p.co * plane) return;
    uint o = g / plane;
    uint oy = (g % plane) / p.wo;
    uint ox = g % p.wo;
    uint base = gl_WorkGroupID.z * p.stride;
    uint taps = p.kh * p.kw;
    float acc = vec_f32(p.b, o);
    for (uint i = 0u; i < p.ci; i++) {
        uint xc = base + p.x_off + i * p.h * p.w;
        uint wr = (i * p.co + o) * taps;
        for (uint ky = 0u; ky < p.kh; ky++) {
            int ty = int(oy + p.pt) - int(ky);
            if (ty < 0 || uint(ty) % p.s != 0u) continue;
            uint iy = uint(ty) / p.s;
            if (iy >= p.h) continue;
            for (uint kx = 0u; kx < p.kw; kx++) {
                int tx = int(ox + p.pl) - int(kx);
                if (tx < 0 || uint(tx) % p.s != 0u) continue;
                uint ix = uint(tx) / p.s;
                if (ix >= p.w) continue;
                acc += weight(p.wgt, wr + ky * p.kw + kx, p.wf16) * a[xc + iy * p.w + ix];
            }
        }
    }
    a[base + p.out_off + g] = acc;
}
