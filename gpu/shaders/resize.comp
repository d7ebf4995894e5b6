#version 450
#extension GL_GOOGLE_include_directive : require
// Resize: each channel of x (c, h, w) resized to (c, ho, wo), `mode` = ResizeCoord | ResizeSample << 4, with the
// CPU's coordinate arithmetic (core/src/ops/resample.rs): the mapped coordinate in f32, its quotient correctly
// rounded (so nearest sampling picks the CPU's pixel on every device), bilinear as (1 − a)·top + a·bottom of the
// horizontal lerps.
// x (c,h,w) -> out (c,ho,wo)
layout(local_size_x = 64) in;
#include "common.glsl"
#include "codes.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint x_off; uint c; uint h; uint w; uint ho; uint wo; uint mode; } p;

// n / d rounded to nearest, as IEEE division (Vulkan allows 2.5 ulp): one residual correction of the quotient.
float div_rn(float n, float d) {
    precise float q = n / d;
    precise float r = fma(-q, d, n);
    precise float res = q + r / d;
    return res;
}

// ResizeCoord::map.
float map_coord(uint coord, uint x, uint n_in, uint n_out) {
    float fx = float(x);
    float fi = float(n_in);
    float fo = float(n_out);
    if (coord == RESIZE_COORD_HALF_PIXEL || (coord == RESIZE_COORD_PYTORCH_HALF_PIXEL && n_out > 1u)) {
        precise float v = div_rn((fx + 0.5) * fi, fo) - 0.5;
        return v;
    }
    if (coord == RESIZE_COORD_ALIGN_CORNERS && n_out > 1u) return div_rn(fx * (fi - 1.0), fo - 1.0);
    if (coord == RESIZE_COORD_ASYMMETRIC) return div_rn(fx * fi, fo);
    return 0.0;
}

// The two input indices along one axis and the weight of the second (resample.rs `taps`).
void taps(uint o, uint n_in, uint n_out, uint coord, uint sample_kind, out uint i0, out uint i1, out float wt) {
    uint last = n_in - 1u;
    float x = map_coord(coord, o, n_in, n_out);
    i1 = 0u;
    wt = 0.0;
    float v;
    if (sample_kind == RESIZE_SAMPLE_LINEAR) {
        x = clamp(x, 0.0, float(last));
        float f = floor(x);
        i0 = min(uint(max(f, 0.0)), last);
        i1 = min(i0 + 1u, last);
        wt = x - f;
        return;
    }
    if (sample_kind == RESIZE_SAMPLE_FLOOR) {
        v = floor(x);
    } else if (sample_kind == RESIZE_SAMPLE_CEIL) {
        v = ceil(x);
    } else {
        float f = floor(x);
        bool up = sample_kind == RESIZE_SAMPLE_ROUND_PREFER_FLOOR ? x - f > 0.5 : x - f >= 0.5;
        v = up ? f + 1.0 : f;
    }
    i0 = min(uint(max(v, 0.0)), last);
}

void main() {
    uint g = gl_GlobalInvocationID.x;
    uint plane = p.ho * p.wo;
    if (g >= p.c * plane) return;
    uint ch = g / plane;
    uint oy = (g % plane) / p.wo;
    uint ox = g % p.wo;
    uint coord = p.mode & 15u;
    uint sample_kind = p.mode >> 4;
    uint y0, y1, x0, x1;
    float wy, wx;
    taps(oy, p.h, p.ho, coord, sample_kind, y0, y1, wy);
    taps(ox, p.w, p.wo, coord, sample_kind, x0, x1, wx);
    uint base = gl_WorkGroupID.z * p.stride;
    uint xc = base + p.x_off + ch * p.h * p.w;
    float r;
    if (sample_kind == RESIZE_SAMPLE_LINEAR) {
        float top = (1.0 - wx) * a[xc + y0 * p.w + x0] + wx * a[xc + y0 * p.w + x1];
        float bot = (1.0 - wx) * a[xc + y1 * p.w + x0] + wx * a[xc + y1 * p.w + x1];
        r = (1.0 - wy) * top + wy * bot;
    } else {
        r = a[xc + y0 * p.w + x0];
    }
    a[base + p.out_off + g] = r;
}
