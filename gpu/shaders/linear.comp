#version 450
#extension GL_GOOGLE_include_directive : require
// Linear (and the q, k, v projections of Attention): a dense layer applied to each of `rows` rows.
// w (o,i) · x (rows,i) + b (o) -> out (rows,o)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint x_off; uint n_in; uint n_out; uint rows; uint w; uint wf16; uint b;
} p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.rows * p.n_out) return;
    uint row = g / p.n_out;
    uint j = g % p.n_out;
    uint base = gl_WorkGroupID.z * p.stride;
    uint xr = base + p.x_off + row * p.n_in;
    float acc = 0.0;
    for (uint k = 0u; k < p.n_in; k++) {
        acc += weight(p.w, j * p.n_in + k, p.wf16) * a[xr + k];
    }
    a[base + p.out_off + g] = vec_f32(p.b, j) + acc;
}
