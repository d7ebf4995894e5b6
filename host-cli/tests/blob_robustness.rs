//! `Model::new_checked` on hostile bytes: truncations, bit flips with and without a repaired checksum, and
//! random buffers. Every input must give a model or an error, never a panic; a blob that validates must run
//! (or fail with an error) without panicking. The cargo-fuzz target in `fuzz/` explores the same property
//! further; this is its deterministic, always-run floor.

mod common;

use common::{fixtures, host_cli_ok};
use ddpm_core::{fnv1a64, Model};

/// 16-byte aligned copy of `bytes`.
fn aligned(bytes: &[u8]) -> Vec<u128> {
    let mut w = vec![0u128; bytes.len().div_ceil(16)];
    bytemuck::cast_slice_mut::<u128, u8>(&mut w)[..bytes.len()].copy_from_slice(bytes);
    w
}

/// Validates `bytes`; if it validates, runs one forward pass. Returns whether it validated.
fn exercise(bytes: &[u8]) -> bool {
    let words = aligned(bytes);
    let b = &bytemuck::cast_slice::<u128, u8>(&words)[..bytes.len()];
    let Ok(m) = Model::new_checked(b) else { return false };
    // Cap the work a mutated header could ask for.
    let n_in = m.in_channels().saturating_mul(m.height()).saturating_mul(m.width());
    let n_out = m.out_channels().saturating_mul(m.height()).saturating_mul(m.width());
    if m.arena_bytes() > 64 << 20 || n_in > 1 << 20 || n_out > 1 << 20 {
        return true;
    }
    let mut arena = vec![0u128; m.arena_bytes().div_ceil(16)];
    let x = vec![0.5f32; n_in];
    let mut y = vec![0f32; n_out];
    let class = (m.num_classes() > 0).then_some(0);
    let _ = m.forward(bytemuck::cast_slice_mut(&mut arena), &x, 10.0, class, &mut y);
    true
}

/// xorshift64*, a fixed-seed generator for reproducible mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The small fixture model (attention, scale-shift time embedding) as an f16 blob and as an int8 blob (whose
/// quantized ops carry integer tables that validation must police too).
fn small_blobs() -> [Vec<u8>; 2] {
    let tmp = tempfile::tempdir().unwrap();
    let d = fixtures().join("unet/d_safetensors");
    ["f16", "int8"].map(|precision| {
        let out = tmp.path().join(format!("d-{precision}.blob"));
        host_cli_ok(&[
            "convert",
            d.join("model.safetensors").to_str().unwrap(),
            "--config",
            d.join("config.json").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--precision",
            precision,
            "--calibration-trajectories",
            "1",
            "--calibration-steps",
            "4",
        ]);
        std::fs::read(out).unwrap()
    })
}

fn repair_checksum(b: &mut [u8]) {
    if b.len() >= 32 {
        let sum = fnv1a64(&b[32..]);
        b[24..32].copy_from_slice(&sum.to_le_bytes());
    }
}

#[test]
fn the_real_blob_validates_and_misalignment_is_an_error() {
    for blob in small_blobs() {
        assert!(exercise(&blob));
        let words = aligned(&[&[0u8][..], &blob].concat());
        let shifted = &bytemuck::cast_slice::<u128, u8>(&words)[1..blob.len() + 1];
        assert_eq!(Model::new_checked(shifted).unwrap_err(), ddpm_core::BlobError::Misaligned);
    }
}

#[test]
fn every_truncation_is_an_error() {
    for blob in small_blobs() {
        // Every prefix of the metadata, then strided prefixes through the tensor data.
        let meta_end = 4096.min(blob.len());
        for len in (0..meta_end).chain((meta_end..blob.len()).step_by(997)) {
            assert!(!exercise(&blob[..len]), "prefix of {len} bytes validated");
        }
    }
}

#[test]
fn mutated_metadata_with_repaired_checksum_never_panics() {
    for blob in small_blobs() {
        let table_end = {
            // Mutate the header, schedule and tables: the part validation must police.
            let strings_off = u32::from_le_bytes(blob[88..92].try_into().unwrap()) as usize;
            strings_off.min(blob.len())
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for round in 0..3000 {
            let mut b = blob.clone();
            for _ in 0..1 + round % 4 {
                let at = (rng.next() as usize) % table_end;
                match rng.next() % 4 {
                    0 => b[at] ^= 1 << (rng.next() % 8),
                    1 => b[at] = rng.next() as u8,
                    2 => b[at] = 0,
                    _ => b[at] = 0xff,
                }
            }
            repair_checksum(&mut b);
            accepted += usize::from(exercise(&b));
        }
        // Some mutations are harmless (e.g. a float parameter); most must be caught.
        assert!(accepted < 3000, "validation accepted every mutation");
    }
}

/// The integer tables of an int8 blob (biases and requantization pairs, lookup tables, the softmax table) are
/// data, not metadata: mutating them must be caught by validation or run without a panic.
#[test]
fn mutated_int8_tables_never_panic() {
    let [_, blob] = small_blobs();
    let strings_off = u32::from_le_bytes(blob[88..92].try_into().unwrap()) as usize;
    let mut rng = Rng(0x5151_2020_dead_beef);
    for _ in 0..2000 {
        let mut b = blob.clone();
        let at = strings_off + (rng.next() as usize) % (b.len() - strings_off);
        b[at] = match rng.next() % 3 {
            0 => 0x80,
            1 => 0x7f,
            _ => rng.next() as u8,
        };
        repair_checksum(&mut b);
        exercise(&b);
    }
}

#[test]
fn random_buffers_never_panic() {
    let mut rng = Rng(42);
    for len in [0usize, 1, 7, 8, 127, 128, 129, 256, 1000, 5000] {
        for _ in 0..50 {
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len >= 8 {
                b[..8].copy_from_slice(b"DDPMBLOB");
            }
            if len >= 32 {
                b[8..12].copy_from_slice(&1u32.to_le_bytes());
                b[12..16].copy_from_slice(&128u32.to_le_bytes());
                b[16..24].copy_from_slice(&(len as u64).to_le_bytes());
            }
            repair_checksum(&mut b);
            exercise(&b);
        }
    }
}
