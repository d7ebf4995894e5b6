#version 450
#extension GL_GOOGLE_include_directive : require
// Conv2d: zero-padded cross-correlation, one invocation per output element, summed in the CPU's order
// (bias, then input channel, kernel row, kernel column).
// w (co,ci,kh,kw) * x (ci,h,w) + b (co) -> out (co,ho,wo)
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
    uint oc = g / plane;
    uint oy = (g % plane) / p.wo;
    uint ox = g % p.wo;
    uint base = gl_WorkGroupID.z * p.stride;
    uint ksize = p.ci * p.kh * p.kw;
    float acc = vec_f32(p.b, oc);
    for (uint c = 0u; c < p.ci; c++) {
        uint xc = base + p.x_off + c * p.h * p.w;
        for (uint ky = 0u; ky < p.kh; ky++) {
            int iy = int(oy * p.s + ky) - int(p.pt);
            if (iy < 0 || iy >= int(p.h)) continue;
            for (uint kx = 0u; kx < p.kw; kx++) {
                int ix = int(ox * p.s + kx) - int(p.pl);
                if (ix < 0 || ix >= int(p.w)) continue;
                float wv = weight(p.wgt, oc * ksize + (c * p.kh + ky) * p.kw + kx, p.wf16);
                acc += wv * a[xc + uint(iy) * p.w + uint(ix)];
            }
        }
    }
    a[base + p.out_off + g] = acc;
}
