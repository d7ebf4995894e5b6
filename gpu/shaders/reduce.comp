#version 450
#extension GL_GOOGLE_include_directive : require
// Reduce: out[o, i] = the ReduceFn of code `kind` over x[o, :, i], in index order.
// x (outer,n,inner) -> out (outer,inner)
layout(local_size_x = 64) in;
#include "common.glsl"
#include "codes.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint x_off; uint outer; uint n; uint inner; uint kind; } p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.outer * p.inner) return;
    uint base = gl_WorkGroupID.z * p.stride;
    uint xs = base + p.x_off + (g / p.inner) * p.n * p.inner + g % p.inner;
    float acc;
    if (p.kind == REDUCE_MAX) {
        acc = uintBitsToFloat(0xff800000u);
        for (uint j = 0u; j < p.n; j++) acc = max(acc, a[xs + j * p.inner]);
    } else if (p.kind == REDUCE_MIN) {
        acc = uintBitsToFloat(0x7f800000u);
        for (uint j = 0u; j < p.n; j++) acc = min(acc, a[xs + j * p.inner]);
    } else if (p.kind == REDUCE_L2 || p.kind == REDUCE_SUM_SQUARE) {
        acc = 0.0;
        for (uint j = 0u; j < p.n; j++) { float v = a[xs + j * p.inner]; acc += v * v; }
        if (p.kind == REDUCE_L2) acc = sqrt(acc);
    } else {
        acc = 0.0;
        for (uint j = 0u; j < p.n; j++) acc += a[xs + j * p.inner];
        if (p.kind == REDUCE_MEAN) acc /= float(p.n);
    }
    a[base + p.out_off + g] = acc;
}
