#version 450
#extension GL_GOOGLE_include_directive : require
// Softmax over the middle dimension of [outer, n, inner], numerically stable as the CPU: exp(x − max) / Σ, the max
// and the sum taken in index order by one invocation per column (out may be x).
// x (outer,n,inner) -> out (outer,n,inner)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint x_off; uint outer; uint n; uint inner; } p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.outer * p.inner) return;
    uint col = (g / p.inner) * p.n * p.inner + g % p.inner;
    uint base = gl_WorkGroupID.z * p.stride;
    uint xs = base + p.x_off + col;
    uint os = base + p.out_off + col;
    float mx = uintBitsToFloat(0xff800000u); // -inf
    for (uint j = 0u; j < p.n; j++) mx = max(mx, a[xs + j * p.inner]);
    float sum = 0.0;
    for (uint j = 0u; j < p.n; j++) {
        float e = exp(a[xs + j * p.inner] - mx);
        a[os + j * p.inner] = e;
        sum += e;
    }
    float inv = 1.0 / sum;
    for (uint j = 0u; j < p.n; j++) a[os + j * p.inner] *= inv;
}
