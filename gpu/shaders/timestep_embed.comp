#version 450
#extension GL_GOOGLE_include_directive : require
// TimestepEmbed: copies the host-computed sinusoidal embedding of the current timestep (row st[ST_ROW]).
// t -> out (dim)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint dim; uint emb_off; uint emb_width; } p;
void main() {
    uint k = gl_GlobalInvocationID.x;
    if (k >= p.dim) return;
    a[gl_WorkGroupID.z * p.stride + p.out_off + k] = emb[st[ST_ROW] * p.emb_width + p.emb_off + k];
}
