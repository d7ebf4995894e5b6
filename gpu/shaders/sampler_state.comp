#version 450
#extension GL_GOOGLE_include_directive : require
// The sampler's bookkeeping on the device, so a step needs no host round trip.
// phase 0 (before the forward pass): the embedding row, and the timestep TimestepTable ops read, is the
// timestep of step st[ST_STEP];
// phase 1 (after the update): advance to the next step.
layout(local_size_x = 1) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint phase; } p;
void main() {
    if (p.phase == 0u) {
        uint t = uint(tab[st[ST_STEP] * 16u]);
        st[ST_ROW] = t;
        st[ST_TIMESTEP] = t;
    } else {
        st[ST_STEP] += 1u;
    }
}
