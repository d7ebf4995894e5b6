// The noise stream of ddpm_core::rng, exactly: Philox4x32-10, uniforms ((x >> 8) + 1)·2⁻²⁴, Box–Muller.
// Only sqrt, log, sin and cos differ from the CPU's libm (in the last bits; measured in tests/parity.rs).

uvec4 philox4x32_10(uvec4 c, uvec2 k) {
    for (int round = 0; round < 10; round++) {
        if (round > 0) k += uvec2(0x9E3779B9u, 0xBB67AE85u);
        uint h0, l0, h1, l1;
        umulExtended(0xD2511F53u, c.x, h0, l0);
        umulExtended(0xCD9E8D57u, c.z, h1, l1);
        c = uvec4(h1 ^ c.y ^ k.x, l1, h0 ^ c.w ^ k.y, l0);
    }
    return c;
}

float uniform01(uint x) {
    return float((x >> 8) + 1u) * (1.0 / 16777216.0);
}

// Element e of the stream of (seed, image, draw): counter [e/4, image, draw, 0], lane e mod 4.
float normal_at(uvec2 key, uint image, uint draw, uint e) {
    uvec4 x = philox4x32_10(uvec4(e >> 2, image, draw, 0u), key);
    uint lane = e & 3u;
    uint ua = lane < 2u ? x.x : x.z;
    uint ub = lane < 2u ? x.y : x.w;
    float r = sqrt(-2.0 * log(uniform01(ua)));
    // 2π·u in f32, as the CPU rounds it: (2·π as f32) · u.
    float theta = uintBitsToFloat(0x40C90FDBu) * uniform01(ub);
    return (lane & 1u) == 0u ? r * cos(theta) : r * sin(theta);
}
