#version 450
#extension GL_GOOGLE_include_directive : require
// ClassTable: out = table[class] (the class is checked against the blob's class count on the host).
// table (classes,n), class -> out (n)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint n; uint table; uint wf16; } p;
void main() {
    uint k = gl_GlobalInvocationID.x;
    if (k >= p.n) return;
    a[gl_WorkGroupID.z * p.stride + p.out_off + k] = weight(p.table, st[ST_CLASS] * p.n + k, p.wf16);
}
