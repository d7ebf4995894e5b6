//! Precisions of the emitted program, as siblings: f32 is the reference the builders emit; `f16` says which
//! tensors the emitter stores as half; `int8` calibrates the f32 program and rewrites it in fixed point.

pub mod f16;
pub mod int8;
