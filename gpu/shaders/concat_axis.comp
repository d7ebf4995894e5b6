#version 450
#extension GL_GOOGLE_include_directive : require
// ConcatAxis: out[o] = [a[o]; b[o]].
// a (outer,na,inner), b (outer,nb,inner) -> out (outer,na+nb,inner)
layout(local_size_x = 64) in;
#include "common.glsl"
layout(push_constant) uniform Push {
    uint stride; uint out_off; uint a_off; uint b_off; uint outer; uint na; uint nb; uint inner;
} p;
void main() {
    uint g = gl_GlobalInvocationID.x;
    uint ra = p.na * p.inner;
    uint rb = p.nb * p.inner;
    if (g >= p.outer * (ra + rb)) return;
    uint o = g / (ra + rb);
    uint r = g % (ra + rb);
    uint base = gl_WorkGroupID.z * p.stride;
    a[base + p.out_off + g] = r < ra ? a[base + p.a_off + o * ra + r] : a[base + p.b_off + o * rb + (r - ra)];
}
