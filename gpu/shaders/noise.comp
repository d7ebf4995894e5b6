#version 450
#extension GL_GOOGLE_include_directive : require
// x_T (or any draw) from the noise stream: xt[n] = stream(seed, image first + n, draw st[ST_DRAW]).
// -> xt (N, len)
layout(local_size_x = 64) in;
#include "common.glsl"
#include "philox.glsl"
layout(push_constant) uniform Push { uint len; } p;
void main() {
    uint e = gl_GlobalInvocationID.x;
    if (e >= p.len) return;
    uint n = gl_WorkGroupID.z;
    xt[n * p.len + e] = normal_at(uvec2(st[ST_SEED_LO], st[ST_SEED_HI]), st[ST_FIRST_IMAGE] + n, st[ST_DRAW], e);
}
