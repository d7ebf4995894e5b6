#version 450
#extension GL_GOOGLE_include_directive : require
// ClassEmbed: out += table[class].
// table (classes,c), class -> out (c)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push { uint stride; uint out_off; uint c; uint table; uint wf16; } p;
void main() {
    uint k = gl_GlobalInvocationID.x;
    if (k >= p.c) return;
    a[gl_WorkGroupID.z * p.stride + p.out_off + k] += weight(p.table, st[ST_CLASS] * p.c + k, p.wf16);
}
