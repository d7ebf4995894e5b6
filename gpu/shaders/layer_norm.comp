#version 450
#extension GL_GOOGLE_include_directive : require
// LayerNorm: each run of n consecutive elements normalised (mean, then centred biased variance, as the CPU),
// then ·gamma + beta. One workgroup per run and sample.
// x (rows,n), gamma, beta (n) -> out (rows,n) (out may be x)
layout(local_size_x = 256) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint x_off; uint n; uint gamma; uint beta; float eps; } p;
#include "workgroup_sum.glsl"

void main() {
    uint l = gl_LocalInvocationID.x;
    uint base = gl_WorkGroupID.z * p.stride;
    uint xs = base + p.x_off + gl_WorkGroupID.x * p.n;
    uint os = base + p.out_off + gl_WorkGroupID.x * p.n;
    float s = 0.0;
    for (uint i = l; i < p.n; i += 256u) s += a[xs + i];
    float mean = workgroup_sum(s) / float(p.n);
    float v = 0.0;
    for (uint i = l; i < p.n; i += 256u) { float d = a[xs + i] - mean; v += d * d; }
    float var = workgroup_sum(v) / float(p.n);
    float inv = 1.0 / sqrt(var + p.eps);
    for (uint i = l; i < p.n; i += 256u) {
        a[os + i] = (a[xs + i] - mean) * inv * vec_f32(p.gamma, i) + vec_f32(p.beta, i);
    }
}
