#version 450
#extension GL_GOOGLE_include_directive : require
// BinaryConst: Binary with a stored f32 tensor t as b (as a when `swap` = 1: out = t ∘ a); bits 0-2 of `bcast`
// broadcast the value, bits 3-5 the tensor. out may be the value where it spans every dimension.
// a (its broadcast size), t (its broadcast size) -> out (d0·d1·d2)
layout(local_size_x = 64) in;
#include "common.glsl"
#include "codes.glsl"
#include "math.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint a_off; uint t; uint d0; uint d1; uint d2; uint bcast; uint kind; uint swap;
} p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.d0 * p.d1 * p.d2) return;
    uvec3 d = uvec3(p.d0, p.d1, p.d2);
    uvec3 i = uvec3(g / (p.d1 * p.d2), (g / p.d2) % p.d1, g % p.d2);
    uint base = gl_WorkGroupID.z * p.stride;
    float x = a[base + p.a_off + broadcast_index(p.bcast & 7u, d, i)];
    float c = vec_f32(p.t, broadcast_index(p.bcast >> 3, d, i));
    a[base + p.out_off + g] = p.swap != 0u ? binary_fn(p.kind, c, x) : binary_fn(p.kind, x, c);
}
