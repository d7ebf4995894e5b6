#version 450
#extension GL_GOOGLE_include_directive : require
// Unary: out = f(x) for the UnaryFn of code `kind` with parameters a, b (out may be x).
// x (n) -> out (n)
layout(local_size_x = 64) in;
#include "common.glsl"
#include "codes.glsl"
#include "math.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint x_off; uint n; uint kind; float pa; float pb; } p;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.n) return;
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.out_off + i] = unary_fn(p.kind, a[base + p.x_off + i], p.pa, p.pb);
}
