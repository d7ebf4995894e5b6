#version 450
#extension GL_GOOGLE_include_directive : require
// Binary: out = a ∘ b over [d0, d1, d2], each operand broadcast as its bits of `bcast` say (bits 0-2: a, bits 3-5:
// b), ∘ the BinaryFn of code `kind`. out may be an operand that spans every dimension (read before written).
// a, b (their broadcast sizes) -> out (d0·d1·d2)
layout(local_size_x = 64) in;
#include "common.glsl"
#include "codes.glsl"
#include "math.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint a_off; uint b_off; uint d0; uint d1; uint d2; uint bcast; uint kind;
} p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.d0 * p.d1 * p.d2) return;
    uvec3 d = uvec3(p.d0, p.d1, p.d2);
    uvec3 i = uvec3(g / (p.d1 * p.d2), (g / p.d2) % p.d1, g % p.d2);
    uint base = gl_WorkGroupID.z * p.stride;
    float x = a[base + p.a_off + broadcast_index(p.bcast & 7u, d, i)];
    float y = a[base + p.b_off + broadcast_index(p.bcast >> 3, d, i)];
    a[base + p.out_off + g] = binary_fn(p.kind, x, y);
}
