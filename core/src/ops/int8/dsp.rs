//! The Arm DSP-extension instructions the packed convolution kernel ([`super::conv2d_dsp`]) is built from, on
//! `u32` words holding two i16 halves (low half first):
//!
//! - `smlad(a, b, acc)` = `acc + a.lo·b.lo + a.hi·b.hi` (two signed 16 × 16 products, summed modulo 2³²);
//! - [`sxtb16`]`(v)` = bytes 0 and 2 of `v`, each sign-extended to 16 bits; [`sxtb16_ror8`] the same of bytes 1
//!   and 3 (`sxtb16 rd, rm, ror #8`);
//! - [`dot_groups`]: the kernel's inner loop, per group of four taps one weight load, two `sxtb16` and eight
//!   `smlad` into the accumulators of [`P`] pixels;
//! - [`transpose`]: four taps' words of four pixels' i8 inputs into the pixels' i16 pairs (`sxtb16`, `pkhbt`,
//!   `pkhtb`).
//!
//! On an Arm core with the DSP extension (`cfg(ddpm_dsp)`, set by `core/build.rs`: thumbv7em, or any Arm target
//! whose target features include `dsp`) they are `asm!`: stable Rust has no intrinsic for these instructions,
//! and LLVM's parallel-DSP pass only pairs i16 loads (the weights are i8). The two loops are one `asm!` block
//! each, loads and stores included, because with one block per instruction LLVM's scheduler hoisted the loads
//! and spilled (the inner loop took 30–39 instructions per group instead of 16, the transposition 46 instead of
//! 25). Everywhere else the same functions are plain
//! integer arithmetic with the same results, so the kernel's packing and ordering logic runs and is tested on
//! the host; the firmware check (`scripts/firmware-test.sh`, checksums equal to the host's) covers the `asm!`.

/// Output pixels per inner loop.
pub const P: usize = 4;
/// Four taps of [`P`] pixels as i16 pairs: `[pixel][(tap 0, tap 2), (tap 1, tap 3)]`.
pub type Group = [[u32; 2]; P];

#[cfg(all(target_arch = "arm", ddpm_dsp))]
mod arm {
    use super::{Group, P};
    use core::arch::asm;

    /// Bytes 0 and 2 of `v`, sign-extended to the low and high halves (the `sxtb16` instruction).
    #[inline(always)]
    pub fn sxtb16(v: u32) -> u32 {
        let r: u32;
        // SAFETY: `sxtb16` reads one register and writes one: no memory, no stack, no flags, no other state.
        unsafe {
            asm!("sxtb16 {r}, {v}", r = lateout(reg) r, v = in(reg) v, options(pure, nomem, nostack, preserves_flags));
        }
        r
    }

    /// Bytes 1 and 3 of `v`, sign-extended to the low and high halves (`sxtb16 rd, rm, ror #8`).
    #[inline(always)]
    pub fn sxtb16_ror8(v: u32) -> u32 {
        let r: u32;
        // SAFETY: as for `sxtb16`; the rotation is part of the same instruction.
        unsafe {
            asm!("sxtb16 {r}, {v}, ror #8", r = lateout(reg) r, v = in(reg) v,
                 options(pure, nomem, nostack, preserves_flags));
        }
        r
    }

    /// Adds the products of the first `n = min(w.len() / 4, xs.len())` groups: for group `g`, with `q` the word
    /// of weights `w[4g..4g + 4]` and `x = xs[g][p]`, `acc[p] += smlad(sxtb16(q), x[0]) + smlad(sxtb16_ror8(q), x[1])`.
    #[inline(always)]
    pub fn dot_groups(acc: [i32; P], w: &[i8], xs: &[Group]) -> [i32; P] {
        let n = (w.len() / 4).min(xs.len());
        let [mut a0, mut a1, mut a2, mut a3] = acc;
        let (mut wp, mut xp) = (w.as_ptr(), xs.as_ptr());
        // One group: a weight word (any alignment: the M4 loads unaligned words), its two halves, then per pixel
        // one `ldrd` of its pair of words (aligned: `Group` is an array of u32) and two `smlad`.
        macro_rules! group {
            () => {
                concat!(
                    "ldr {q}, [{wp}], #4\n",
                    "sxtb16 {e}, {q}\n",
                    "sxtb16 {q}, {q}, ror #8\n",
                    "ldrd {x0}, {x1}, [{xp}], #8\n",
                    "smlad {a0}, {e}, {x0}, {a0}\n",
                    "smlad {a0}, {q}, {x1}, {a0}\n",
                    "ldrd {x0}, {x1}, [{xp}], #8\n",
                    "smlad {a1}, {e}, {x0}, {a1}\n",
                    "smlad {a1}, {q}, {x1}, {a1}\n",
                    "ldrd {x0}, {x1}, [{xp}], #8\n",
                    "smlad {a2}, {e}, {x0}, {a2}\n",
                    "smlad {a2}, {q}, {x1}, {a2}\n",
                    "ldrd {x0}, {x1}, [{xp}], #8\n",
                    "smlad {a3}, {e}, {x0}, {a3}\n",
                    "smlad {a3}, {q}, {x1}, {a3}\n",
                )
            };
        }
        if n >= 2 {
            let mut pairs = n / 2;
            // SAFETY: the loop runs `n / 2` times, two groups each, so it reads the words `w[..4·(n & !1)]` and
            // the groups `xs[..n & !1]`, all inside the borrowed slices (`n` is at most both lengths); it writes
            // only its register operands (the temporaries are outputs, so no input shares their registers), uses
            // no stack, and its results depend only on its inputs and that memory (`pure`, `readonly`). `subs`
            // and `smlad` change the flags (N, Z, C, V, Q), so `preserves_flags` is not claimed.
            unsafe {
                asm!(
                    "2:",
                    group!(),
                    group!(),
                    "subs {k}, {k}, #1",
                    "bne 2b",
                    k = inout(reg) pairs,
                    wp = inout(reg) wp,
                    xp = inout(reg) xp,
                    q = out(reg) _,
                    e = out(reg) _,
                    x0 = out(reg) _,
                    x1 = out(reg) _,
                    a0 = inout(reg) a0,
                    a1 = inout(reg) a1,
                    a2 = inout(reg) a2,
                    a3 = inout(reg) a3,
                    options(pure, readonly, nostack),
                );
            }
            let _ = pairs;
        }
        if n % 2 == 1 {
            // SAFETY: one group at `wp`, `xp`, which now point at group `n − 1`, inside both slices as above.
            unsafe {
                asm!(
                    group!(),
                    wp = inout(reg) wp => _,
                    xp = inout(reg) xp => _,
                    q = out(reg) _,
                    e = out(reg) _,
                    x0 = out(reg) _,
                    x1 = out(reg) _,
                    a0 = inout(reg) a0,
                    a1 = inout(reg) a1,
                    a2 = inout(reg) a2,
                    a3 = inout(reg) a3,
                    options(pure, readonly, nostack),
                );
            }
        }
        [a0, a1, a2, a3]
    }

    /// [`super::transpose`] (see there), as one loop.
    #[inline(always)]
    pub fn transpose(buf: &mut [Group], lanes: &[u32]) {
        let mut n = buf.len().min(lanes.len() / 4);
        if n == 0 {
            return;
        }
        let (mut dst, mut src) = (buf.as_mut_ptr(), lanes.as_ptr());
        // SAFETY: the loop runs `n` times; each reads four words at `src` (then `src += 16`) and writes the 32
        // bytes of one group at `dst` (then `dst += 32`), so it reads `lanes[..4n]` and writes `buf[..n]`, inside
        // the slices (`n` is at most `buf.len()` and `lanes.len() / 4`; `buf` is borrowed mutably, so nothing
        // else sees the writes). `ldrd`/`strd` need 4-byte alignment: both are arrays of u32. No stack; `subs`
        // changes the flags.
        unsafe {
            asm!(
                "2:",
                "ldrd {l0}, {l1}, [{src}], #8",
                "ldrd {l2}, {l3}, [{src}], #8",
                // Bytes 0 and 2 (pixels 0 and 2) of taps 0 and 2: word 0 of pixels 0 and 2.
                "sxtb16 {t0}, {l0}",
                "sxtb16 {t1}, {l2}",
                "pkhbt {o0}, {t0}, {t1}, lsl #16",
                "pkhtb {o1}, {t1}, {t0}, asr #16",
                // Taps 1 and 3: word 1 of pixels 0 and 2.
                "sxtb16 {t0}, {l1}",
                "sxtb16 {t1}, {l3}",
                "pkhbt {o2}, {t0}, {t1}, lsl #16",
                "pkhtb {t1}, {t1}, {t0}, asr #16",
                "strd {o0}, {o2}, [{dst}]",
                "strd {o1}, {t1}, [{dst}, #16]",
                // Bytes 1 and 3 (pixels 1 and 3), the same.
                "sxtb16 {t0}, {l0}, ror #8",
                "sxtb16 {t1}, {l2}, ror #8",
                "pkhbt {o0}, {t0}, {t1}, lsl #16",
                "pkhtb {o1}, {t1}, {t0}, asr #16",
                "sxtb16 {t0}, {l1}, ror #8",
                "sxtb16 {t1}, {l3}, ror #8",
                "pkhbt {o2}, {t0}, {t1}, lsl #16",
                "pkhtb {t1}, {t1}, {t0}, asr #16",
                "strd {o0}, {o2}, [{dst}, #8]",
                "strd {o1}, {t1}, [{dst}, #24]",
                "adds {dst}, #32",
                "subs {n}, {n}, #1",
                "bne 2b",
                n = inout(reg) n,
                src = inout(reg) src,
                dst = inout(reg) dst,
                l0 = out(reg) _,
                l1 = out(reg) _,
                l2 = out(reg) _,
                l3 = out(reg) _,
                t0 = out(reg) _,
                t1 = out(reg) _,
                o0 = out(reg) _,
                o1 = out(reg) _,
                o2 = out(reg) _,
                options(nostack),
            );
        }
        let _ = (n, src, dst);
    }
}

#[cfg(all(target_arch = "arm", ddpm_dsp))]
pub use arm::{dot_groups, sxtb16, sxtb16_ror8, transpose};

/// Four taps × four pixels, one word per tap (byte p = pixel p's i8 input), into one [`Group`] per four words:
/// per pixel the i16 pairs (tap 0, tap 2) and (tap 1, tap 3). `sxtb16` splits a tap's word into pixels (0, 2)
/// and, rotated, (1, 3); `pkhbt`/`pkhtb` join two taps' halves. Groups past either slice are left alone.
#[cfg(not(all(target_arch = "arm", ddpm_dsp)))]
pub fn transpose(buf: &mut [Group], lanes: &[u32]) {
    let bt = |lo: u32, hi: u32| (lo & 0xffff) | hi << 16;
    let tb = |hi: u32, lo: u32| (hi & 0xffff_0000) | lo >> 16;
    for (gr, l) in buf.iter_mut().zip(lanes.chunks_exact(4)) {
        let e = l.iter().map(|&v| sxtb16(v)).collect_array();
        let o = l.iter().map(|&v| sxtb16_ror8(v)).collect_array();
        *gr = [
            [bt(e[0], e[2]), bt(e[1], e[3])],
            [bt(o[0], o[2]), bt(o[1], o[3])],
            [tb(e[2], e[0]), tb(e[3], e[1])],
            [tb(o[2], o[0]), tb(o[3], o[1])],
        ];
    }
}

/// The first four items as an array (the rest ignored, missing ones 0).
#[cfg(not(all(target_arch = "arm", ddpm_dsp)))]
trait CollectArray {
    fn collect_array(self) -> [u32; 4];
}

#[cfg(not(all(target_arch = "arm", ddpm_dsp)))]
impl<I: Iterator<Item = u32>> CollectArray for I {
    fn collect_array(mut self) -> [u32; 4] {
        core::array::from_fn(|_| self.next().unwrap_or(0))
    }
}

/// `acc + a.lo·b.lo + a.hi·b.hi` modulo 2³², as `smlad` computes it.
#[cfg(not(all(target_arch = "arm", ddpm_dsp)))]
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let lo = i32::from(a as i16) * i32::from(b as i16);
    let hi = i32::from((a >> 16) as i16) * i32::from((b >> 16) as i16);
    acc.wrapping_add(lo).wrapping_add(hi)
}

/// Bytes 0 and 2 of `v`, sign-extended to the low and high halves, as `sxtb16` computes it.
#[cfg(not(all(target_arch = "arm", ddpm_dsp)))]
#[inline(always)]
pub fn sxtb16(v: u32) -> u32 {
    let lo = u32::from(i16::from(v as u8 as i8) as u16);
    let hi = u32::from(i16::from((v >> 16) as u8 as i8) as u16);
    lo | hi << 16
}

/// Bytes 1 and 3 of `v`, sign-extended to the low and high halves, as `sxtb16 rd, rm, ror #8` computes it.
#[cfg(not(all(target_arch = "arm", ddpm_dsp)))]
#[inline(always)]
pub fn sxtb16_ror8(v: u32) -> u32 {
    sxtb16(v.rotate_right(8))
}

/// Adds the products of the first `min(w.len() / 4, xs.len())` groups, as the `asm!` loop computes them: for
/// group `g`, with `q` the word of weights `w[4g..4g + 4]` and `x = xs[g][p]`,
/// `acc[p] += smlad(sxtb16(q), x[0]) + smlad(sxtb16_ror8(q), x[1])`.
#[cfg(not(all(target_arch = "arm", ddpm_dsp)))]
pub fn dot_groups(mut acc: [i32; P], w: &[i8], xs: &[Group]) -> [i32; P] {
    for (q, xg) in w.chunks_exact(4).zip(xs) {
        let q = u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
        let (e, o) = (sxtb16(q), sxtb16_ror8(q));
        for (a, x) in acc.iter_mut().zip(xg) {
            *a = smlad(o, x[1], smlad(e, x[0], *a));
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The low and high halves of a word as i16.
    fn halves(v: u32) -> (i16, i16) {
        (v as i16, (v >> 16) as i16)
    }

    #[test]
    fn the_emulation_matches_the_instruction_definitions() {
        let v = u32::from_le_bytes([0x80, 0x7f, 0xff, 0x01]);
        assert_eq!(halves(sxtb16(v)), (-128, -1));
        assert_eq!(halves(sxtb16_ror8(v)), (127, 1));
        let pair = |lo: i16, hi: i16| u32::from(lo as u16) | u32::from(hi as u16) << 16;
        assert_eq!(smlad(pair(-3, 7), pair(5, -2), 100), 100 - 15 - 14);
        // Extreme products wrap modulo 2³² like the instruction (which only sets the Q flag).
        let m = pair(i16::MIN, i16::MIN);
        assert_eq!(smlad(m, m, 0), i32::MIN);
        assert_eq!(smlad(m, m, i32::MAX), -1);
    }
}
