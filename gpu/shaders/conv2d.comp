#version 450
#extension GL_GOOGLE_include_directive : require
// Conv2d: zero-padded cross-correlation. Workgroup (x, y, n) computes 64 output pixels of CONV_CHANNELS
// output channels starting at y·CONV_CHANNELS, so the weights a workgroup reads are uniform and each input
// value it loads serves CONV_CHANNELS outputs. Each output is summed in the CPU's order (bias, then input
// channel, kernel row, kernel column); padding contributes nothing, as on the CPU.
// w (co,ci,kh,kw) * x (ci,h,w) + b (co) -> out (co,ho,wo)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint x_off; uint ci; uint h; uint w; uint co; uint kh; uint kw;
    uint s; uint pt; uint pl; uint ho; uint wo; uint wgt; uint wf16; uint b;
} p;

// Output channels per workgroup (keep in step with CONV_CHANNELS in src/plan.rs).
const uint CONV_CHANNELS = 8u;

void main() {
    uint plane = p.ho * p.wo;
    uint pix = gl_GlobalInvocationID.x;
    if (pix >= plane) return;
    uint oc0 = gl_WorkGroupID.y * CONV_CHANNELS;
    uint oy = pix / p.wo;
    uint ox = pix % p.wo;
    uint base = gl_WorkGroupID.z * p.stride;
    uint ksize = p.ci * p.kh * p.kw;
    // Channels past the last (when co is not a multiple of CONV_CHANNELS) compute with the last channel's
    // weights and are not written; constant trip counts keep `acc` in registers.
    uint wrow[CONV_CHANNELS];
    float acc[CONV_CHANNELS];
    for (uint j = 0u; j < CONV_CHANNELS; j++) {
        uint oc = min(oc0 + j, p.co - 1u);
        wrow[j] = oc * ksize;
        acc[j] = vec_f32(p.b, oc);
    }
    for (uint c = 0u; c < p.ci; c++) {
        uint xc = base + p.x_off + c * p.h * p.w;
        for (uint ky = 0u; ky < p.kh; ky++) {
            int iy = int(oy * p.s + ky) - int(p.pt);
            bool row_in = iy >= 0 && iy < int(p.h);
            for (uint kx = 0u; kx < p.kw; kx++) {
                int ix = int(ox * p.s + kx) - int(p.pl);
                if (!row_in || ix < 0 || ix >= int(p.w)) continue;
                float xv = a[xc + uint(iy) * p.w + uint(ix)];
                uint k = (c * p.kh + ky) * p.kw + kx;
                for (uint j = 0u; j < CONV_CHANNELS; j++) acc[j] += weight(p.wgt, wrow[j] + k, p.wf16) * xv;
            }
        }
    }
    for (uint j = 0u; j < CONV_CHANNELS; j++) {
        if (oc0 + j < p.co) a[base + p.out_off + (oc0 + j) * plane + pix] = acc[j];
    }
}
