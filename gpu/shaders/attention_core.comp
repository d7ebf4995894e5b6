#version 450
#extension GL_GOOGLE_include_directive : require
// Attention phase 2: for each query and head, softmax(q·k / √d)·v with a running maximum (online softmax,
// as the CPU), accumulated straight into t, which phase 1's projections no longer need.
// scratch [t | q | k | v], each (hw,c) -> t (hw,c)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint s_off; uint c; uint hw; uint heads; float scale; } p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.hw * p.heads) return;
    uint i = g / p.heads;
    uint h = g % p.heads;
    uint d = p.c / p.heads;
    uint n = p.c * p.hw;
    uint base = gl_WorkGroupID.z * p.stride + p.s_off;
    uint acc = base + i * p.c + h * d;
    uint q = base + n + i * p.c + h * d;
    for (uint k = 0u; k < d; k++) a[acc + k] = 0.0;
    float mx = uintBitsToFloat(0xff800000u); // -inf
    float sum = 0.0;
    for (uint j = 0u; j < p.hw; j++) {
        uint kr = base + 2u * n + j * p.c + h * d;
        uint vr = base + 3u * n + j * p.c + h * d;
        float s = 0.0;
        for (uint k = 0u; k < d; k++) s += a[q + k] * a[kr + k];
        s *= p.scale;
        if (s > mx) {
            float r = exp(mx - s);
            sum *= r;
            for (uint k = 0u; k < d; k++) a[acc + k] *= r;
            mx = s;
        }
        float pr = exp(s - mx);
        sum += pr;
        for (uint k = 0u; k < d; k++) a[acc + k] += pr * a[vr + k];
    }
    float inv = 1.0 / sum;
    for (uint k = 0u; k < d; k++) a[acc + k] *= inv;
}
