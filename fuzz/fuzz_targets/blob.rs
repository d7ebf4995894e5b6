//! Any byte string given to `Model::new_checked` yields a model or an error, never a panic; a model that
//! validates runs a forward pass (or returns an error) without panicking or reading out of bounds.
#![no_main]

use ddpm_core::Model;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Blobs must be 16-byte aligned; libFuzzer's buffer is not guaranteed to be.
    let mut words = vec![0u128; data.len().div_ceil(16)];
    let bytes = bytemuck::cast_slice_mut::<u128, u8>(&mut words);
    bytes[..data.len()].copy_from_slice(data);
    let Ok(m) = Model::new_checked(&bytes[..data.len()]) else { return };
    // Cap the work a mutated header can ask for.
    let n_in = m.in_channels().saturating_mul(m.height()).saturating_mul(m.width());
    let n_out = m.out_channels().saturating_mul(m.height()).saturating_mul(m.width());
    if m.arena_bytes() > 16 << 20 || n_in > 1 << 16 || n_out > 1 << 16 {
        return;
    }
    let mut arena = vec![0u8; m.arena_bytes_unaligned()];
    let x = vec![0.25f32; n_in];
    let mut y = vec![0f32; n_out];
    let class = (m.num_classes() > 0).then_some(0);
    let _ = m.forward(&mut arena, &x, 3.0, class, &mut y);
});
