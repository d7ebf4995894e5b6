//! The noise stream: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
//! a counter-based generator, so any element of any step can be drawn independently, in any order, on any
//! device, and CPU, GPU and firmware draw the same numbers for the same seed.
//!
//! # Definition (what another backend must reproduce)
//! - Key: `k = [seed mod 2³², seed >> 32]`.
//! - Counter for element `e` of image `n` at draw `s` (`s = 0`: the starting noise x_T; `s = i`: the noise
//!   of the i-th denoising step): `c = [e / 4, n, s, 0]`.
//! - `philox(c, k)`: 10 rounds of `(h0, l0) = mulhilo(0xD2511F53, c0)`, `(h1, l1) = mulhilo(0xCD9E8D57, c2)`,
//!   `c = [h1 ^ c1 ^ k0, l1, h0 ^ c3 ^ k1, l0]`, with `k += [0x9E3779B9, 0xBB67AE85]` between rounds.
//! - Uniforms from the four output words `x`: `u = ((x >> 8) + 1) · 2⁻²⁴ ∈ (0, 1]` (f32, exact).
//! - Box–Muller in f32 with libm: `r = sqrt(−2 ln u₀)`, `θ = 2π·u₁`; lanes 0 and 1 of the block are
//!   `r·cos θ`, `r·sin θ`; lanes 2 and 3 the same from `u₂, u₃`. Element `e` takes lane `e mod 4`.

/// One Philox4x32-10 block.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = M0 * u64::from(c[0]);
        let p1 = M1 * u64::from(c[2]);
        let (h0, l0) = ((p0 >> 32) as u32, p0 as u32);
        let (h1, l1) = ((p1 >> 32) as u32, p1 as u32);
        c = [h1 ^ c[1] ^ k[0], l1, h0 ^ c[3] ^ k[1], l0];
    }
    c
}

/// The key for a seed.
pub const fn key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

fn uniform(x: u32) -> f32 {
    ((x >> 8) + 1) as f32 * (1.0 / 16_777_216.0)
}

/// Four standard normal samples: block `block` of image `image` at draw `draw`.
pub fn normal4(seed: u64, image: u32, draw: u32, block: u32) -> [f32; 4] {
    let x = philox4x32_10([block, image, draw, 0], key(seed));
    let pair = |a: u32, b: u32| {
        let r = libm::sqrtf(-2.0 * libm::logf(uniform(a)));
        let theta = 2.0 * core::f32::consts::PI * uniform(b);
        (r * libm::cosf(theta), r * libm::sinf(theta))
    };
    let (z0, z1) = pair(x[0], x[1]);
    let (z2, z3) = pair(x[2], x[3]);
    [z0, z1, z2, z3]
}

/// Fills `out` with elements `0..out.len()` of the stream of `(seed, image, draw)`.
pub fn fill_normal(out: &mut [f32], seed: u64, image: u32, draw: u32) {
    for (block, chunk) in out.chunks_mut(4).enumerate() {
        let z = normal4(seed, image, draw, block as u32);
        chunk.copy_from_slice(&z[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of Random123 (`kat_vectors`, philox4x32_10).
    #[test]
    fn random123_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        assert_eq!(
            philox4x32_10([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn normals_have_unit_moments_and_depend_on_every_coordinate() {
        // 409 600 draws: the standard error of the variance is sqrt(2/n) = 0.0022, of the mean 0.0016, so the
        // bounds below sit at about 4.5 standard errors.
        let mut z = [0f32; 4096];
        let (mut s1, mut s2, mut n) = (0f64, 0f64, 0f64);
        for image in 0..100 {
            fill_normal(&mut z, 7, image, 3);
            for v in z {
                assert!(v.is_finite());
                s1 += f64::from(v);
                s2 += f64::from(v) * f64::from(v);
                n += 1.0;
            }
        }
        let (mean, var) = (s1 / n, s2 / n - (s1 / n) * (s1 / n));
        assert!(mean.abs() < 0.007, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        let base = normal4(7, 0, 0, 0);
        assert_ne!(base, normal4(8, 0, 0, 0));
        assert_ne!(base, normal4(7, 1, 0, 0));
        assert_ne!(base, normal4(7, 0, 1, 0));
        assert_ne!(base, normal4(7, 0, 0, 1));
        assert_eq!(base, normal4(7, 0, 0, 0));
    }
}
