#version 450
#extension GL_GOOGLE_include_directive : require
// Permute: x as row-major [d0, …, d5] with its axes reordered, output axis i = input axis (perm >> 4i) & 15.
// One invocation per output element; a pure copy.
// x (d0·…·d5) -> out (the same count)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint x_off; uint d0; uint d1; uint d2; uint d3; uint d4; uint d5; uint perm; uint n;
} p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.n) return;
    uint dims[6] = uint[6](p.d0, p.d1, p.d2, p.d3, p.d4, p.d5);
    uint istride[6];
    uint s = 1u;
    for (int i = 5; i >= 0; i--) {
        istride[i] = s;
        s *= dims[i];
    }
    // The output index in its dimensions (last fastest), mapped to the input offset.
    uint rest = g;
    uint src = 0u;
    for (int i = 5; i >= 0; i--) {
        uint axis = (p.perm >> (4 * i)) & 15u;
        uint od = dims[axis];
        src += (rest % od) * istride[axis];
        rest /= od;
    }
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.out_off + g] = a[base + p.x_off + src];
}
