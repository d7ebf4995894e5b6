#version 450
#extension GL_GOOGLE_include_directive : require
// MatMul: out[i] = a[i]·b[i] for i < batch, a [m, k], b [k, n] ([n, k] when trans_b); bit 0 of `shared`: one a
// for every i, bit 1: one b. One invocation per output element, summed over k ascending.
// a (batch|1, m, k), b (batch|1, k, n) or (batch|1, n, k) -> out (batch, m, n)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint a_off; uint b_off; uint batch; uint m; uint k; uint n; uint shared_ab; uint trans_b;
} p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.batch * p.m * p.n) return;
    uint j = g % p.n;
    uint r = g / p.n;
    uint i = r % p.m;
    uint bi = r / p.m;
    uint base = gl_WorkGroupID.z * p.stride;
    uint ar = base + p.a_off + (((p.shared_ab & 1u) != 0u ? 0u : bi * p.m) + i) * p.k;
    uint bm = base + p.b_off + ((p.shared_ab & 2u) != 0u ? 0u : bi * p.k * p.n);
    float acc = 0.0;
    if (p.trans_b != 0u) {
        uint br = bm + j * p.k;
        for (uint kk = 0u; kk < p.k; kk++) acc += a[ar + kk] * a[br + kk];
    } else {
        for (uint kk = 0u; kk < p.k; kk++) acc += a[ar + kk] * a[bm + kk * p.n + j];
    }
    a[base + p.out_off + g] = acc;
}
