// Shared declarations of every compute shader: the one descriptor set (see `src/kernels.rs`) and helpers.
//
// Every shader runs over a batch: workgroup z is the sample index, and sample n's forward arena starts at
// float n * p.stride of `a`. Value offsets in push constants are in floats, relative to that start.

// The forward arenas of the batch, one per sample, `stride` floats apart.
layout(std430, set = 0, binding = 0) buffer Arena { float a[]; };
// The blob itself as 32-bit words: f32 tensors are read with uintBitsToFloat, f16 ones unpacked in pairs.
layout(std430, set = 0, binding = 1) readonly buffer Weights { uint wt[]; };
// Run state: [0] step index, [1] class, [2] embedding row, [3] noise draw, [4] seed low, [5] seed high,
// [6] method (0 DDPM, 1 DDIM), [7] noise-stream index of the batch's first image, [8] the integer timestep
// (the row of a TimestepTable op's table).
layout(std430, set = 0, binding = 2) buffer State { uint st[]; };
// Per-step scalars, 16 floats per step (see `src/sample.rs`).
layout(std430, set = 0, binding = 3) readonly buffer StepTable { float tab[]; };
// Timestep embeddings precomputed on the host, one row per training timestep plus one for `forward`.
layout(std430, set = 0, binding = 4) readonly buffer Emb { float emb[]; };
// x_t and x̂₀ of the batch, N·C·H·W each.
layout(std430, set = 0, binding = 5) buffer Xt { float xt[]; };
layout(std430, set = 0, binding = 6) buffer X0 { float x0s[]; };

const uint ST_STEP = 0u;
const uint ST_CLASS = 1u;
const uint ST_ROW = 2u;
const uint ST_DRAW = 3u;
const uint ST_SEED_LO = 4u;
const uint ST_SEED_HI = 5u;
const uint ST_METHOD = 6u;
const uint ST_FIRST_IMAGE = 7u;
const uint ST_TIMESTEP = 8u;

// Element i of the tensor whose data starts at word `off` of the blob; `f16` selects the storage type.
float weight(uint off, uint i, uint f16) {
    if (f16 != 0u) {
        vec2 pair = unpackHalf2x16(wt[off + (i >> 1)]);
        return (i & 1u) != 0u ? pair.y : pair.x;
    }
    return uintBitsToFloat(wt[off + i]);
}

// An f32 vector (bias, norm parameter): always f32 in the blob.
float vec_f32(uint off, uint i) {
    return uintBitsToFloat(wt[off + i]);
}

float silu1(float x) {
    return x / (1.0 + exp(-x));
}
