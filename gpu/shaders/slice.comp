#version 450
#extension GL_GOOGLE_include_directive : require
// Slice: out[o, j, i] = x[o, start + j·step, i] for j < count.
// x (outer,n,inner) -> out (outer,count,inner)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint x_off; uint outer; uint n; uint inner; uint start; uint step; uint count;
} p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.outer * p.count * p.inner) return;
    uint i = g % p.inner;
    uint j = (g / p.inner) % p.count;
    uint o = g / (p.inner * p.count);
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.out_off + g] = a[base + p.x_off + (o * p.n + p.start + j * p.step) * p.inner + i];
}
