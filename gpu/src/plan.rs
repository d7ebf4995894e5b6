//! Lowering: the blob's program as a list of kernel dispatches with their push constants, computed once per
//! model and batch size, without touching the device (so it is testable anywhere).

use ddpm_core::program::Op;
use ddpm_core::{DType, Model, RunError};

use crate::error::Error;
use crate::kernels::{Kernel, PUSH_WORDS, WORKGROUP};

/// One recorded dispatch: kernel, push constants, workgroup counts (z is the batch).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dispatch {
    pub(crate) kernel: Kernel,
    pub(crate) push: [u32; PUSH_WORDS],
    pub(crate) groups: [u32; 3],
}

/// A `TimestepEmbed` op's parameters and its columns in the embedding table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct EmbSlot {
    pub(crate) column: usize,
    pub(crate) dim: usize,
    pub(crate) flip_sin_to_cos: bool,
    pub(crate) freq_shift: f32,
    pub(crate) max_period: f32,
}

/// The lowered program.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) dispatches: Vec<Dispatch>,
    pub(crate) emb: Vec<EmbSlot>,
    /// Floats of one row of the embedding table (all `TimestepEmbed` outputs side by side; at least 1).
    pub(crate) emb_width: usize,
    /// Floats of one sample's forward arena.
    pub(crate) stride: u32,
    /// The fewest rows of the program's `TimestepTable` tables (`None` without one): the forward pass then takes
    /// integer timesteps below it only, as on the CPU.
    pub(crate) table_rows: Option<u32>,
}

impl Plan {
    /// The embedding-table row for timestep `t`: each `TimestepEmbed` op's output, computed by `ddpm-core`'s
    /// own function so that the GPU sees bit-identical embeddings.
    pub(crate) fn embedding_row(&self, t: f32, row: &mut [f32]) {
        for s in &self.emb {
            let out = &mut row[s.column..s.column + s.dim];
            ddpm_core::ops::timestep_embedding(out, t, s.flip_sin_to_cos, s.freq_shift, s.max_period);
        }
    }
}

/// Output channels one `Conv2d` workgroup computes (`CONV_CHANNELS` in `shaders/conv2d.comp`).
const CONV_CHANNELS: u32 = 8;

fn groups(items: usize) -> u32 {
    (items as u32).div_ceil(WORKGROUP)
}

impl Plan {
    /// The kernels the dispatches use, each once.
    pub(crate) fn kernels(&self) -> Vec<Kernel> {
        let mut k: Vec<Kernel> = Vec::new();
        for d in &self.dispatches {
            if !k.contains(&d.kernel) {
                k.push(d.kernel);
            }
        }
        k
    }

    /// Lowers `m`'s program; an op with no kernel is [`Error::UnsupportedOp`] (the int8 ops: int8 blobs are
    /// refused before planning).
    pub(crate) fn new(m: &Model<'_>, batch: u32) -> Result<Plan, Error> {
        let bad = RunError::Inconsistent;
        let value = |i: u32| m.value(i).ok_or(bad);
        // Offset of a value in floats within one sample's arena.
        let off = |i: u32| -> Result<u32, RunError> { Ok((value(i)?.offset / 4) as u32) };
        // Word offset of a tensor's data in the blob, and whether it is stored as f16.
        let tensor = |i: u32| -> Result<(u32, u32), RunError> {
            let t = m.tensor_info(i).ok_or(bad)?;
            Ok(((t.data_off / 4) as u32, u32::from(t.dtype == DType::F16)))
        };
        let stride = m.arena_bytes().div_ceil(4) as u32;
        let (mut dispatches, mut emb, mut emb_width) = (Vec::new(), Vec::new(), 0usize);
        let mut table_rows: Option<u32> = None;
        // The words of a (transposed) convolution: output and input offsets and shapes, kernel size, stride,
        // the top and left padding, the weights' offset and format, the bias.
        let conv_words = |out: u32, x: u32, w: u32, b: u32, s: u32, pad: [u32; 2]| -> Result<_, RunError> {
            let (o, xi) = (value(out)?, value(x)?);
            let info = m.tensor_info(w).ok_or(bad)?;
            let (wo, wf) = tensor(w)?;
            let (ci, hi, wi, co) = (xi.c as u32, xi.h as u32, xi.w as u32, o.c as u32);
            let (kh, kw, ho, wout) = (info.dims[2] as u32, info.dims[3] as u32, o.h as u32, o.w as u32);
            let words = [off(out)?, off(x)?, ci, hi, wi, co, kh, kw, s, pad[0], pad[1], ho, wout, wo, wf, tensor(b)?.0];
            Ok((o, words))
        };
        let mut push = |kernel: Kernel, items: usize, words: &[u32]| {
            if items == 0 {
                return;
            }
            let mut p = [0u32; PUSH_WORDS];
            p[0] = stride;
            p[1..=words.len()].copy_from_slice(words);
            let (x, y) = match kernel {
                // One workgroup per group or row.
                Kernel::GroupNorm | Kernel::LayerNorm => (items as u32, 1),
                // Workgroups of 64 output pixels (items = ho·wo) × CONV_CHANNELS output channels (word 6 = co).
                Kernel::Conv2d => (groups(items), p[6].div_ceil(CONV_CHANNELS)),
                _ => (groups(items), 1),
            };
            dispatches.push(Dispatch { kernel, push: p, groups: [x, y, batch] });
        };
        for op in m.ops() {
            match op {
                Op::TimestepEmbed { out, flip_sin_to_cos, freq_shift, max_period } => {
                    let dim = value(out)?.c;
                    emb.push(EmbSlot { column: emb_width, dim, flip_sin_to_cos, freq_shift, max_period });
                    // The table's width is patched in below, once all slots are known.
                    push(Kernel::TimestepEmbed, dim, &[off(out)?, dim as u32, emb_width as u32, 0]);
                    emb_width += dim;
                }
                Op::Linear { out, x, w, b } => {
                    let (o, xi) = (value(out)?, value(x)?);
                    let (wo, wf) = tensor(w)?;
                    let words = [off(out)?, off(x)?, xi.c as u32, o.c as u32, 1, wo, wf, tensor(b)?.0];
                    push(Kernel::Linear, o.c, &words);
                }
                Op::Silu { out, x } => {
                    push(Kernel::Silu, value(out)?.numel(), &[off(out)?, off(x)?, value(out)?.numel() as u32])
                }
                Op::ClassEmbed { out, table } => {
                    let c = value(out)?.c;
                    let (to, tf) = tensor(table)?;
                    push(Kernel::ClassEmbed, c, &[off(out)?, c as u32, to, tf]);
                }
                // The kernel convolves straight from `x` with bounds checks, so the op's `scratch` value (where the
                // CPU puts a zero-padded copy of the input) is not used.
                Op::Conv2d { out, x, w, b, stride: s, pad, .. } => {
                    let (o, words) = conv_words(out, x, w, b, s, [pad[0], pad[1]])?;
                    push(Kernel::Conv2d, o.h * o.w, &words);
                }
                Op::GroupNorm { out, x, gamma, beta, groups: g, eps, silu } => {
                    let o = value(out)?;
                    let words = [
                        off(out)?,
                        off(x)?,
                        o.c as u32,
                        (o.h * o.w) as u32,
                        g,
                        tensor(gamma)?.0,
                        tensor(beta)?.0,
                        eps.to_bits(),
                        u32::from(silu),
                    ];
                    push(Kernel::GroupNorm, g as usize, &words);
                }
                Op::AddChannel { x, v } | Op::ScaleShift { x, v } => {
                    let xi = value(x)?;
                    let k = if matches!(op, Op::AddChannel { .. }) { Kernel::AddChannel } else { Kernel::ScaleShift };
                    push(k, xi.numel(), &[off(x)?, off(v)?, xi.c as u32, (xi.h * xi.w) as u32]);
                }
                Op::Add { out, a, b, scale } => {
                    let n = value(out)?.numel();
                    push(Kernel::Add, n, &[off(out)?, off(a)?, off(b)?, n as u32, scale.to_bits()]);
                }
                Op::Attention { out, x, xn, scratch, w, heads, scale } => {
                    let o = value(out)?;
                    let (c, hw) = (o.c as u32, (o.h * o.w) as u32);
                    let n = c * hw;
                    let s = off(scratch)?;
                    push(Kernel::AttentionProject, o.numel(), &[s, off(xn)?, c, hw]);
                    for part in 0..3u32 {
                        let (wo, wf) = tensor(w[2 * part as usize])?;
                        let b = tensor(w[2 * part as usize + 1])?.0;
                        push(Kernel::Linear, o.numel(), &[s + (1 + part) * n, s, c, c, hw, wo, wf, b]);
                    }
                    let d = (o.c / heads.max(1) as usize) as f32;
                    let core_scale = 1.0 / libm_sqrtf(d);
                    push(Kernel::AttentionCore, (hw * heads) as usize, &[s, c, hw, heads, core_scale.to_bits()]);
                    let (wo, wf) = tensor(w[6])?;
                    let words = [off(out)?, off(x)?, s, c, hw, wo, wf, tensor(w[7])?.0, scale.to_bits()];
                    push(Kernel::AttentionOutput, o.numel(), &words);
                }
                Op::Upsample2x { out, x } => {
                    let xi = value(x)?;
                    push(
                        Kernel::Upsample2x,
                        value(out)?.numel(),
                        &[off(out)?, off(x)?, xi.c as u32, xi.h as u32, xi.w as u32],
                    );
                }
                Op::Concat { out, a, b } => {
                    let (na, nb) = (value(a)?.numel() as u32, value(b)?.numel() as u32);
                    push(Kernel::Concat, (na + nb) as usize, &[off(out)?, off(a)?, na, off(b)?, nb]);
                }
                Op::Affine { out, x, mul, add } => {
                    let n = value(out)?.numel();
                    push(Kernel::Affine, n, &[off(out)?, off(x)?, n as u32, mul.to_bits(), add.to_bits()]);
                }
                Op::LayerNorm { out, x, gamma, beta, eps } => {
                    let n = m.tensor_info(gamma).ok_or(bad)?.numel();
                    let rows = value(out)?.numel() / n.max(1);
                    let words = [off(out)?, off(x)?, n as u32, tensor(gamma)?.0, tensor(beta)?.0, eps.to_bits()];
                    push(Kernel::LayerNorm, rows, &words);
                }
                Op::ConvTranspose2d { out, x, w, b, stride: s, pad } => {
                    let (o, words) = conv_words(out, x, w, b, s, [pad[0], pad[1]])?;
                    push(Kernel::ConvTranspose2d, o.numel(), &words);
                }
                Op::TimestepTable { out, table } => {
                    let n = value(out)?.numel();
                    let rows = m.tensor_info(table).ok_or(bad)?.dims[0] as u32;
                    table_rows = Some(table_rows.map_or(rows, |r| r.min(rows)));
                    let (to, tf) = tensor(table)?;
                    push(Kernel::TimestepTable, n, &[off(out)?, n as u32, to, tf, rows]);
                }
                Op::ClassTable { out, table } => {
                    let n = value(out)?.numel();
                    let (to, tf) = tensor(table)?;
                    push(Kernel::ClassTable, n, &[off(out)?, n as u32, to, tf]);
                }
                Op::Unary { out, x, kind, a, b } => {
                    let n = value(out)?.numel();
                    push(Kernel::Unary, n, &[off(out)?, off(x)?, n as u32, kind, a.to_bits(), b.to_bits()]);
                }
                Op::Binary { out, a, b, dims, bcast, kind } => {
                    let n = value(out)?.numel();
                    let words = [off(out)?, off(a)?, off(b)?, dims[0], dims[1], dims[2], bcast, kind];
                    push(Kernel::Binary, n, &words);
                }
                Op::BinaryConst { out, a, t, dims, bcast, kind, swap } => {
                    let n = value(out)?.numel();
                    let words =
                        [off(out)?, off(a)?, tensor(t)?.0, dims[0], dims[1], dims[2], bcast, kind, u32::from(swap)];
                    push(Kernel::BinaryConst, n, &words);
                }
                Op::Permute { out, x, dims, perm } => {
                    let n = value(out)?.numel();
                    let mut words = [0u32; 10];
                    words[0] = off(out)?;
                    words[1] = off(x)?;
                    words[2..8].copy_from_slice(&dims);
                    words[8] = perm;
                    words[9] = n as u32;
                    push(Kernel::Permute, n, &words);
                }
                Op::MatMul { out, a, b, batch: nb, m: rows, k, n, shared, trans_b } => {
                    let words = [off(out)?, off(a)?, off(b)?, nb, rows, k, n, shared, u32::from(trans_b)];
                    push(Kernel::MatMul, value(out)?.numel(), &words);
                }
                Op::Softmax { out, x, outer, n, inner } => {
                    push(Kernel::Softmax, outer as usize * inner as usize, &[off(out)?, off(x)?, outer, n, inner]);
                }
                Op::Reduce { out, x, outer, n, inner, kind } => {
                    push(Kernel::Reduce, outer as usize * inner as usize, &[off(out)?, off(x)?, outer, n, inner, kind]);
                }
                Op::Slice { out, x, outer, n, inner, start, step, count } => {
                    let words = [off(out)?, off(x)?, outer, n, inner, start, step, count];
                    push(Kernel::Slice, value(out)?.numel(), &words);
                }
                Op::ConcatAxis { out, a, b, outer, na, nb, inner } => {
                    let words = [off(out)?, off(a)?, off(b)?, outer, na, nb, inner];
                    push(Kernel::ConcatAxis, value(out)?.numel(), &words);
                }
                Op::Constant { out, t } => {
                    let n = value(out)?.numel();
                    push(Kernel::Constant, n, &[off(out)?, n as u32, tensor(t)?.0]);
                }
                // A dense layer on each row: the Linear kernel, which takes a row count.
                Op::LinearRows { out, x, w, b } => {
                    let info = m.tensor_info(w).ok_or(bad)?;
                    let (n_out, n_in) = (info.dims[0], info.dims[1]);
                    let rows = value(x)?.numel() / n_in.max(1);
                    let (wo, wf) = tensor(w)?;
                    let words = [off(out)?, off(x)?, n_in as u32, n_out as u32, rows as u32, wo, wf, tensor(b)?.0];
                    push(Kernel::Linear, rows * n_out, &words);
                }
                Op::Pool2d { out, x, k, stride: s, pad, kind } => {
                    let (o, xi) = (value(out)?, value(x)?);
                    let words = [
                        off(out)?,
                        off(x)?,
                        xi.c as u32,
                        xi.h as u32,
                        xi.w as u32,
                        k[0],
                        k[1],
                        s[0],
                        s[1],
                        pad[0],
                        pad[1],
                        o.h as u32,
                        o.w as u32,
                        kind,
                    ];
                    push(Kernel::Pool2d, o.numel(), &words);
                }
                Op::Resize { out, x, mode } => {
                    let (o, xi) = (value(out)?, value(x)?);
                    let words =
                        [off(out)?, off(x)?, xi.c as u32, xi.h as u32, xi.w as u32, o.h as u32, o.w as u32, mode];
                    push(Kernel::Resize, o.numel(), &words);
                }
                Op::Pad { out, x, pad, value: v, mode } => {
                    let xi = value(x)?;
                    let words = [
                        off(out)?,
                        off(x)?,
                        xi.c as u32,
                        xi.h as u32,
                        xi.w as u32,
                        pad[0],
                        pad[1],
                        pad[2],
                        pad[3],
                        v.to_bits(),
                        mode,
                    ];
                    push(Kernel::Pad, value(out)?.numel(), &words);
                }
                // The int8 ops (int8 blobs are refused before planning, in `GpuModel::new`).
                Op::Quantize { .. }
                | Op::Dequantize { .. }
                | Op::QConv2d { .. }
                | Op::QLut { .. }
                | Op::QGroupNorm { .. }
                | Op::QAdd { .. }
                | Op::QSdpa { .. }
                | Op::QConcat { .. }
                | Op::QScaleShift { .. }
                | Op::QClassEmbed { .. } => return Err(Error::UnsupportedOp(op.name())),
            }
        }
        let emb_width = emb_width.max(1);
        for d in dispatches.iter_mut().filter(|d| d.kernel == Kernel::TimestepEmbed) {
            d.push[4] = emb_width as u32;
        }
        Ok(Plan { dispatches, emb, emb_width, stride, table_rows })
    }
}

/// √x rounded as the CPU's `libm::sqrtf` (IEEE square root is correctly rounded, so `f32::sqrt` is the same).
fn libm_sqrtf(x: f32) -> f32 {
    x.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm_convert::onnx::{convert_onnx, read_onnx, OnnxRequest};

    /// Every ONNX fixture network lowers without a device: each op one dispatch or more, and the forward pass
    /// bound to the timestep table's rows.
    #[test]
    fn every_onnx_fixture_lowers() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx");
        for name in
            ["tutorial", "tutorial_class", "lucidrains", "lucidrains_learned", "attention", "pooling", "diffusers"]
        {
            let out = convert_onnx(OnnxRequest {
                model: read_onnx(&root.join(name).join("legacy.onnx")).unwrap(),
                options: Default::default(),
                scheduler: None,
                scheduler_overrides: Default::default(),
                precision: ddpm_core::Precision::F16,
                calibration: Default::default(),
            })
            .unwrap();
            let blob = ddpm_convert::AlignedBlob::from_bytes(&out.blob);
            let m = blob.model().unwrap();
            let plan = Plan::new(&m, 2).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(plan.dispatches.len() >= m.num_ops(), "{name}");
            assert!(plan.dispatches.iter().all(|d| d.groups[2] == 2 && d.groups[0] > 0), "{name}");
            assert_eq!(plan.table_rows, Some(1000), "{name}");
        }
    }
}
