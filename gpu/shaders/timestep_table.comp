#version 450
#extension GL_GOOGLE_include_directive : require
// TimestepTable: out = table[t] for the integer timestep st[ST_TIMESTEP] (the host checks it is below `rows`
// before it submits; the row is clamped all the same, so no read leaves the table).
// table (rows,n), t -> out (n)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint n; uint table; uint wf16; uint rows; } p;
void main() {
    uint k = gl_GlobalInvocationID.x;
    if (k >= p.n) return;
    uint row = min(st[ST_TIMESTEP], p.rows - 1u);
    a[gl_WorkGroupID.z * p.stride + p.out_off + k] = weight(p.table, row * p.n + k, p.wf16);
}
