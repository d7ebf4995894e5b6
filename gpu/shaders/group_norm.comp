#version 450
#extension GL_GOOGLE_include_directive : require
// GroupNorm (+ optional SiLU): one workgroup per group and sample; mean, then centred variance, as the CPU.
// x (c,hw), gamma, beta (c) -> out (c,hw) (out may be x)
layout(local_size_x = 256) in;
#include "common.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint x_off; uint c; uint hw; uint groups; uint gamma; uint beta; float eps; uint silu;
} p;
#include "workgroup_sum.glsl"

void main() {
    uint g = gl_WorkGroupID.x;
    uint l = gl_LocalInvocationID.x;
    uint cg = p.c / p.groups;
    uint n = cg * p.hw;
    uint base = gl_WorkGroupID.z * p.stride;
    uint xs = base + p.x_off + g * n;
    uint os = base + p.out_off + g * n;
    float s = 0.0;
    for (uint i = l; i < n; i += 256u) s += a[xs + i];
    float mean = workgroup_sum(s) / float(n);
    float v = 0.0;
    for (uint i = l; i < n; i += 256u) { float d = a[xs + i] - mean; v += d * d; }
    float var = workgroup_sum(v) / float(n);
    float inv = 1.0 / sqrt(var + p.eps);
    for (uint i = l; i < n; i += 256u) {
        uint ch = g * cg + i / p.hw;
        float sc = vec_f32(p.gamma, ch) * inv;
        float bias = vec_f32(p.beta, ch) - mean * sc;
        float y = a[xs + i] * sc + bias;
        a[os + i] = p.silu != 0u ? silu1(y) : y;
    }
}
