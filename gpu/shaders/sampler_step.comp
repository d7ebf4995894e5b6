#version 450
#extension GL_GOOGLE_include_directive : require
// One DDPM (diffusers DDPMScheduler.step) or DDIM (DDIMScheduler.step) update for every element of the
// batch, elementwise. The per-step scalars are precomputed on the host exactly as ddpm_core's sampler does
// (see src/sample.rs for the table row), so only the per-element arithmetic runs here.
// model output (arena), x_t -> x_{t-1} (xt), x̂₀ (x0s)
layout(local_size_x = 64) in;
#include "common.glsl"
#include "codes.glsl"
#include "philox.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint len; uint prediction_type; uint variance_type; uint clip; float clip_range;
} p;

float predict_x0(float x, float m, float sa, float sb) {
    if (p.prediction_type == PREDICTION_TYPE_SAMPLE) return m;
    if (p.prediction_type == PREDICTION_TYPE_V_PREDICTION) return sa * x - sb * m;
    return (x - sb * m) / sa;
}

float clip_x0(float v) {
    return p.clip != 0u ? min(max(v, -p.clip_range), p.clip_range) : v;
}

void main() {
    uint e = gl_GlobalInvocationID.x;
    if (e >= p.len) return;
    uint n = gl_WorkGroupID.z;
    uint i = st[ST_STEP];
    uint r = i * 16u;
    float sa = tab[r + 2u];
    float sb = tab[r + 3u];
    bool noisy = tab[r + 1u] != 0.0;
    uint xi = n * p.len + e;
    uint mo = n * p.stride + p.out_off;
    float x = xt[xi];
    float m = a[mo + e];
    float x0 = predict_x0(x, m, sa, sb);
    float z = noisy ? normal_at(uvec2(st[ST_SEED_LO], st[ST_SEED_HI]), st[ST_FIRST_IMAGE] + n, i + 1u, e) : 0.0;
    float next;
    if (st[ST_METHOD] == 0u) {
        // 1. x̂₀, clipped; 2. posterior mean (Ho et al. eq. 7); 3. + σ_t z.
        x0 = clip_x0(x0);
        next = tab[r + 4u] * x0 + tab[r + 5u] * x;
        if (noisy) {
            if (p.variance_type == VARIANCE_TYPE_LEARNED) {
                next += sqrt(a[mo + p.len + e]) * z;
            } else if (p.variance_type == VARIANCE_TYPE_LEARNED_RANGE) {
                float frac = (a[mo + p.len + e] + 1.0) / 2.0;
                float log_var = frac * tab[r + 8u] + (1.0 - frac) * tab[r + 7u];
                next += exp(0.5 * log_var) * z;
            } else {
                next += tab[r + 6u] * z;
            }
        }
    } else {
        // ε̂ from the unclipped x̂₀; x_{t-1} = √(1 − ᾱ_prev − σ²) ε̂ + √ᾱ_prev clip(x̂₀) + σ z (Song et al. eq. 12).
        float eps = p.prediction_type == PREDICTION_TYPE_SAMPLE ? (x - sa * x0) / sb : (p.prediction_type == PREDICTION_TYPE_V_PREDICTION ? sa * m + sb * x : m);
        x0 = clip_x0(x0);
        next = tab[r + 4u] * eps;
        next += tab[r + 5u] * x0;
        if (noisy) next += tab[r + 6u] * z;
    }
    x0s[xi] = x0;
    xt[xi] = next;
}
