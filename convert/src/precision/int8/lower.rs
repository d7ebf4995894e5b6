//! The program rewrite: each op of the calibrated f32 program becomes its int8 counterpart(s), with the
//! activations quantized at the scales calibration chose and the constants folded by `fold.rs`.

use std::collections::HashMap;

use super::calibrate::{silu_range, symmetric_scale, Hist, InputMeans, Site};
use super::floats;
use super::fold::{exp_table, fixed, fixed_pair, fold_conv, silu_table, Kernel, EXP_LEN, EXP_STEPS};
use crate::error::Result;
use crate::graph::{Data, Graph, Shape, SCRATCH};
use crate::{bail, err};
use ddpm_core::format::DType;
use ddpm_core::ops::{pad_code, resize_mode, PadMode, ResizeSample};
use ddpm_core::program::{Op, Role, NO_LUT};

/// The int8 program under construction from the f32 program `f`, with the calibration it is built from.
pub(super) struct Builder<'g> {
    pub(super) f: &'g Graph,
    pub(super) q: Graph,
    /// Current int8-program value of each f32 value.
    pub(super) map: Vec<Option<u32>>,
    /// The site that wrote each f32-typed value of the int8 program (to quantize it when needed).
    pub(super) site_of: HashMap<u32, Site>,
    /// Scale chosen for each site.
    pub(super) scales: HashMap<Site, f32>,
    pub(super) hists: HashMap<Site, Hist>,
    pub(super) means: InputMeans,
    /// f32 tensors of the f32 program copied into the int8 one.
    pub(super) copied: HashMap<u32, u32>,
    pub(super) silu_luts: HashMap<(u32, u32, i32), u32>,
    /// Scale and zero point chosen for each post-SiLU site.
    pub(super) asym: HashMap<Site, (f32, i32)>,
    pub(super) exp_table: Option<u32>,
    /// Sites stored as i16.
    pub(super) wide: Vec<Site>,
    pub(super) notes: Vec<String>,
    /// Ops the int8 program runs in f32.
    pub(super) float_ops: usize,
    /// The f32 copy made of each quantized value that an f32 op reads (one `Dequantize` per value).
    pub(super) dequantized: HashMap<u32, u32>,
}

impl Builder<'_> {
    fn scale(&mut self, site: Site, dtype: DType) -> Result<f32> {
        if let Some(&s) = self.scales.get(&site) {
            return Ok(s);
        }
        let h = self.hists.get(&site).ok_or_else(|| err!(Quantize, "internal: no calibration data for {site:?}"))?;
        let s = symmetric_scale(h, dtype);
        self.scales.insert(site, s);
        Ok(s)
    }

    fn dtype(&self, site: Site) -> DType {
        if self.wide.contains(&site) {
            DType::I16
        } else {
            DType::I8
        }
    }

    /// A new asymmetric i8 value for the output of a SiLU at `site` (see the module docs).
    fn silu_value(&mut self, shape: Shape, site: Site) -> Result<u32> {
        let (scale, zero) = match self.asym.get(&site) {
            Some(&p) => p,
            None => {
                let h = self
                    .hists
                    .get(&site)
                    .ok_or_else(|| err!(Quantize, "internal: no calibration data for {site:?}"))?;
                let p = silu_range(h);
                self.asym.insert(site, p);
                p
            }
        };
        let v = self.q.typed_value(shape.c, shape.h, shape.w, DType::I8, scale);
        self.q.values[v as usize].zero = zero;
        Ok(v)
    }

    /// A new quantized value for `site`.
    fn qvalue(&mut self, shape: Shape, site: Site) -> Result<u32> {
        let dtype = self.dtype(site);
        let scale = self.scale(site, dtype)?;
        Ok(self.q.typed_value(shape.c, shape.h, shape.w, dtype, scale))
    }

    fn info(&self, v: u32) -> Shape {
        self.q.values[v as usize]
    }

    /// The int8-program value holding f32 value `v`, quantized, for an op that takes no zero point.
    fn input(&mut self, v: u32) -> Result<u32> {
        let q = self.conv_input(v)?;
        if self.info(q).zero != 0 {
            bail!(
                Quantize,
                "internal: a post-SiLU value (zero point {}) read by an op other than a convolution",
                self.info(q).zero
            );
        }
        Ok(q)
    }

    /// The int8-program value holding f32 value `v`, quantized (a `Quantize` op is added for an f32 one), for a
    /// convolution, which accepts a zero point.
    fn conv_input(&mut self, v: u32) -> Result<u32> {
        let cur = self.map[v as usize].ok_or_else(|| err!(Quantize, "internal: value {v} read before written"))?;
        if self.info(cur).dtype != DType::F32 {
            return Ok(cur);
        }
        let site = *self.site_of.get(&cur).ok_or_else(|| err!(Quantize, "internal: f32 value {cur} has no site"))?;
        let out = self.qvalue(self.info(cur), site)?;
        self.q.push(Op::Quantize { out, x: cur });
        self.map[v as usize] = Some(out);
        Ok(out)
    }

    pub(super) fn float_tensor(&mut self, t: u32) -> Result<u32> {
        if let Some(&c) = self.copied.get(&t) {
            return Ok(c);
        }
        let src = &self.f.tensors[t as usize];
        let data = floats(self.f, t)?.to_vec();
        let c = self.q.tensor(&src.name, src.dims.clone(), data);
        self.copied.insert(t, c);
        Ok(c)
    }

    /// Quantized convolution (or linear layer, as a 1×1 convolution) of `x` with the f32 kernel `w`, bias `b`,
    /// folded by [`fold_conv`] (which corrects the bias with the input's per-channel means `x_mean`).
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        x: u32,
        x_mean: Option<&[f64]>,
        w: &[f32],
        b: &[f32],
        dims: [usize; 4],
        stride: u32,
        pad: [u32; 4],
        out: u32,
    ) -> Result<()> {
        let co = dims[0];
        let (wq, brq) = fold_conv(&Kernel { w, b, dims, stride, pad }, self.info(x), self.info(out), x_mean);
        // Names: the module's, as in the checkpoint; `#brq` for its bias and requantization table.
        let w = self.q.typed_tensor(name, dims.to_vec(), Data::I8(wq));
        let brq = self.q.typed_tensor(&format!("{name}#brq"), vec![co, 3], Data::I32(brq));
        self.q.push(Op::QConv2d { out, x, w, brq, stride, pad });
        Ok(())
    }

    /// The SiLU table from symmetric codes of scale `mid` to codes of scale `out` with zero point `out_zero`.
    fn silu_lut(&mut self, mid: f32, out: f32, out_zero: i32) -> u32 {
        let key = (mid.to_bits(), out.to_bits(), out_zero);
        if let Some(&t) = self.silu_luts.get(&key) {
            return t;
        }
        let table = silu_table(mid, out, out_zero);
        let t = self.q.typed_tensor(&format!("silu_lut.{}", self.silu_luts.len()), vec![256], Data::I8(table));
        self.silu_luts.insert(key, t);
        t
    }

    fn exp_table(&mut self) -> u32 {
        *self.exp_table.get_or_insert_with(|| self.q.typed_tensor("softmax_exp", vec![EXP_LEN], Data::I16(exp_table())))
    }

    /// Maps f32 value `v` to a new int8-program value; when the f32 op worked in place (`alias`), the new value
    /// takes over the old one's memory.
    fn define(&mut self, v: u32, new: u32, alias: Option<u32>) {
        if let Some(old) = alias {
            if self.info(old).bytes() == self.info(new).bytes() {
                self.q.aliases.push((old, new));
            }
        }
        self.map[v as usize] = Some(new);
    }

    pub(super) fn op(&mut self, i: usize, op: &Op, output: u32) -> Result<()> {
        let f = self.f;
        let shape = |v: u32| f.values[v as usize];
        let cur = |b: &Self, v: u32| b.map[v as usize];
        match *op {
            _ if self.moves_quantized(op) => self.move_op(op)?,
            Op::ConcatAxis { out, a, b, outer, na, nb, inner } if self.requantizable_pair(a, b) => {
                // Inputs at two scales: the finer one is requantized to the coarser one's scale (whose range
                // holds it, so nothing saturates) by a `QAdd` of it with itself at weight 0, then the codes move.
                let (aq, bq) = (self.info_of(a), self.info_of(b));
                let (fine, coarse) = if self.info(aq).scale < self.info(bq).scale { (aq, bq) } else { (bq, aq) };
                let (fi, ci) = (self.info(fine), self.info(coarse));
                let r = self.q.typed_value(fi.c, fi.h, fi.w, fi.dtype, ci.scale);
                let (ma, mb, shift) = fixed_pair(f64::from(fi.scale) / f64::from(ci.scale), 0.0);
                self.q.push(Op::QAdd { out: r, a: fine, b: fine, ma, mb, shift });
                let (aq, bq) = if fine == aq { (r, bq) } else { (aq, r) };
                let s = shape(out);
                let o = self.q.typed_value(s.c, s.h, s.w, ci.dtype, ci.scale);
                self.q.push(Op::ConcatAxis { out: o, a: aq, b: bq, outer, na, nb, inner });
                self.define(out, o, None);
            }
            Op::TimestepEmbed { out, flip_sin_to_cos, freq_shift, max_period } => {
                let s = shape(out);
                let o = self.q.value(s.c, s.h, s.w);
                self.q.push(Op::TimestepEmbed { out: o, flip_sin_to_cos, freq_shift, max_period });
                self.site_of.insert(o, Site::Out(i));
                self.define(out, o, None);
            }
            // An affine map (other than a reshape) of a quantized value runs in f32 like the ops without int8
            // kernels.
            Op::Affine { x, .. } if cur(self, x).is_some_and(|q| self.info(q).dtype != DType::F32) => {
                self.float_op(i, op)?
            }
            Op::Affine { out, x, mul, add } => {
                let xq = cur(self, x).ok_or_else(|| err!(Quantize, "internal: value {x} unset"))?;
                let s = shape(out);
                let o = self.q.value(s.c, s.h, s.w);
                self.q.push(Op::Affine { out: o, x: xq, mul, add });
                self.site_of.insert(o, Site::Out(i));
                self.define(out, o, None);
            }
            Op::Linear { out, x, w, b } => {
                let xq = self.conv_input(x)?;
                let o = self.qvalue(shape(out), Site::Out(i))?;
                let dims = f.tensors[w as usize].dims.clone();
                let name = f.tensors[w as usize].name.trim_end_matches(".weight").to_string();
                let mean = self.means.get(&(i, 0)).cloned();
                let (w, b) = (floats(f, w)?, floats(f, b)?);
                self.conv(&name, xq, mean.as_deref(), w, b, [dims[0], dims[1], 1, 1], 1, [0; 4], o)?;
                self.define(out, o, None);
            }
            Op::Conv2d { out, x, w, b, stride, pad, .. } => {
                let xq = self.conv_input(x)?;
                if out == output {
                    self.wide.push(Site::Out(i));
                }
                let o = self.qvalue(shape(out), Site::Out(i))?;
                let d = &f.tensors[w as usize].dims;
                let dims = [d[0], d[1], d[2], d[3]];
                let name = f.tensors[w as usize].name.trim_end_matches(".weight").to_string();
                let mean = self.means.get(&(i, 0)).cloned();
                self.conv(&name, xq, mean.as_deref(), floats(f, w)?, floats(f, b)?, dims, stride, pad, o)?;
                self.define(out, o, None);
            }
            Op::Silu { out, x } => {
                let xq = self.input(x)?;
                if self.info(xq).dtype != DType::I8 {
                    bail!(Quantize, "internal: SiLU of an i16 value");
                }
                let o = if self.read_by_convs_only(i, out) {
                    self.silu_value(shape(out), Site::Out(i))?
                } else {
                    self.qvalue(shape(out), Site::Out(i))?
                };
                let table = self.silu_lut(self.info(xq).scale, self.info(o).scale, self.info(o).zero);
                self.q.push(Op::QLut { out: o, x: xq, table });
                self.define(out, o, (out == x).then_some(xq));
            }
            Op::GroupNorm { out, x, gamma, beta, groups, eps, silu } => {
                let xq = self.input(x)?;
                let o = if silu && self.read_by_convs_only(i, out) {
                    self.silu_value(shape(out), Site::Out(i))?
                } else {
                    self.qvalue(shape(out), Site::Out(i))?
                };
                let (gamma, beta) = (self.float_tensor(gamma)?, self.float_tensor(beta)?);
                let (lut, mid_scale) = if silu {
                    let mid = self.scale(Site::PreAct(i), DType::I8)?;
                    (self.silu_lut(mid, self.info(o).scale, self.info(o).zero), mid)
                } else {
                    (NO_LUT, self.info(o).scale)
                };
                self.q.push(Op::QGroupNorm { out: o, x: xq, gamma, beta, groups, eps, lut, mid_scale });
                self.define(out, o, (out == x).then_some(xq));
            }
            Op::AddChannel { x, v } => {
                let (xq, vq) = (self.input(x)?, self.input(v)?);
                let o = self.qvalue(shape(x), Site::Out(i))?;
                let so = f64::from(self.info(o).scale);
                let (ma, mb, shift) =
                    fixed_pair(f64::from(self.info(xq).scale) / so, f64::from(self.info(vq).scale) / so);
                self.q.push(Op::QAdd { out: o, a: xq, b: vq, ma, mb, shift });
                self.define(x, o, Some(xq));
            }
            Op::Add { out, a, b, scale } => {
                let (aq, bq) = (self.input(a)?, self.input(b)?);
                let o = self.qvalue(shape(out), Site::Out(i))?;
                let r = |v: u32, b: &Self| f64::from(b.info(v).scale) * f64::from(scale) / f64::from(b.info(o).scale);
                let (ma, mb, shift) = fixed_pair(r(aq, self), r(bq, self));
                self.q.push(Op::QAdd { out: o, a: aq, b: bq, ma, mb, shift });
                let alias = if out == a {
                    Some(aq)
                } else if out == b {
                    Some(bq)
                } else {
                    None
                };
                self.define(out, o, alias);
            }
            Op::Attention { out, x, xn, w, heads, scale, .. } => {
                let (xq, nq) = (self.input(x)?, self.input(xn)?);
                let s = shape(x);
                let c = s.c;
                let (xn_mean, att_mean) = (self.means.get(&(i, 0)).cloned(), self.means.get(&(i, 1)).cloned());
                let mut qkv = [0u32; 3];
                for (k, site) in [Site::Q(i), Site::K(i), Site::V(i)].into_iter().enumerate() {
                    qkv[k] = self.qvalue(s, site)?;
                    let name = f.tensors[w[2 * k] as usize].name.trim_end_matches(".weight").to_string();
                    self.conv(
                        &name,
                        nq,
                        xn_mean.as_deref(),
                        floats(f, w[2 * k])?,
                        floats(f, w[2 * k + 1])?,
                        [c, c, 1, 1],
                        1,
                        [0; 4],
                        qkv[k],
                    )?;
                }
                let att = self.qvalue(s, Site::Attn(i))?;
                let sc = |v: u32, b: &Self| f64::from(b.info(v).scale);
                let dh = (c / heads as usize) as f64;
                let (m_score, s_score) = fixed(sc(qkv[0], self) * sc(qkv[1], self) / dh.sqrt() * EXP_STEPS);
                let (m_out, s_out) = fixed(sc(qkv[2], self) / (32768.0 * sc(att, self)));
                let exp = self.exp_table();
                self.q.push(Op::QSdpa {
                    out: att,
                    q: qkv[0],
                    k: qkv[1],
                    v: qkv[2],
                    scratch: SCRATCH,
                    heads,
                    exp,
                    m_score,
                    s_score,
                    m_out,
                    s_out,
                });
                let proj = self.qvalue(s, Site::Proj(i))?;
                let name = f.tensors[w[6] as usize].name.trim_end_matches(".weight").to_string();
                let (w, b) = (floats(f, w[6])?, floats(f, w[7])?);
                self.conv(&name, att, att_mean.as_deref(), w, b, [c, c, 1, 1], 1, [0; 4], proj)?;
                let o = self.qvalue(s, Site::Out(i))?;
                let so = sc(o, self);
                let (ma, mb, shift) =
                    fixed_pair(sc(xq, self) * f64::from(scale) / so, sc(proj, self) * f64::from(scale) / so);
                self.q.push(Op::QAdd { out: o, a: xq, b: proj, ma, mb, shift });
                self.define(out, o, (out == x).then_some(xq));
            }
            Op::Upsample2x { out, x } => {
                let xq = self.input(x)?;
                let (xi, s) = (self.info(xq), shape(out));
                let o = self.q.typed_value(s.c, s.h, s.w, xi.dtype, xi.scale);
                self.q.push(Op::Upsample2x { out: o, x: xq });
                self.define(out, o, None);
            }
            Op::Concat { out, a, b } => {
                let (aq, bq) = (self.input(a)?, self.input(b)?);
                let o = self.qvalue(shape(out), Site::Out(i))?;
                let so = f64::from(self.info(o).scale);
                let (ma, sa) = fixed(f64::from(self.info(aq).scale) / so);
                let (mb, sb) = fixed(f64::from(self.info(bq).scale) / so);
                self.q.push(Op::QConcat { out: o, a: aq, b: bq, ma, sa, mb, sb });
                self.define(out, o, None);
            }
            Op::ClassEmbed { out, table } => {
                let xq = self.input(out)?;
                let o = self.qvalue(shape(out), Site::Out(i))?;
                let table = self.float_tensor(table)?;
                self.q.push(Op::QClassEmbed { out: o, x: xq, table });
                self.define(out, o, Some(xq));
            }
            Op::ScaleShift { x, v } => {
                let (xq, vq) = (self.input(x)?, self.input(v)?);
                let o = self.qvalue(shape(x), Site::Out(i))?;
                self.q.push(Op::QScaleShift { out: o, x: xq, v: vq });
                self.define(x, o, Some(xq));
            }
            // Data-movement ops whose operands do not allow the quantized form (see `moves_quantized`).
            Op::Permute { .. }
            | Op::Slice { .. }
            | Op::ConcatAxis { .. }
            | Op::Pad { .. }
            | Op::Pool2d { .. }
            | Op::Resize { .. } => self.float_op(i, op)?,
            _ if op.has_no_int8_kernel() => self.float_op(i, op)?,
            _ => bail!(Quantize, "internal: {} in an f32 program", op.name()),
        }
        Ok(())
    }

    /// Whether `op` moves elements (a data-movement op, or `Affine` as a reshape) and every value it reads is
    /// quantized with one type, scale and zero point, so that it runs on the codes and its output keeps them:
    /// no dequantize and quantize steps, no rounding. Bilinear resizing and padding with a constant that no code
    /// stands for run in f32; so do ops whose inputs are f32 already, or quantized unlike each other (an axis
    /// concatenation of two scales without zero points requantizes one input instead: see [`Builder::op`]).
    fn moves_quantized(&self, op: &Op) -> bool {
        let moves = match *op {
            Op::Permute { .. } | Op::Slice { .. } | Op::ConcatAxis { .. } | Op::Pool2d { .. } | Op::Pad { .. } => true,
            Op::Affine { mul, add, .. } => mul == 1.0 && add == 0.0,
            Op::Resize { mode, .. } => resize_mode(mode).is_some_and(|m| m.1 != ResizeSample::Linear),
            _ => false,
        };
        if !moves {
            return false;
        }
        let mut coding = None;
        let mut all_alike = true;
        op.for_each_value(|v, role| {
            if role == Role::In {
                let s = self.map[v as usize].map(|q| self.info(q));
                let c = s.map(|s| (s.dtype, s.scale.to_bits(), s.zero));
                all_alike &= s.is_some_and(|s| s.dtype.is_quantized()) && coding.get_or_insert(c) == &c;
            }
        });
        let Some(Some((dtype, scale, zero))) = coding else { return false };
        match *op {
            Op::Pad { value, mode, .. } if mode == PadMode::Constant as u32 => {
                all_alike && pad_code(value, f32::from_bits(scale), zero, dtype.qmax()).is_some()
            }
            _ => all_alike,
        }
    }

    /// The current int8-program value of f32 value `v` (set: checked by the callers' conditions).
    fn info_of(&self, v: u32) -> u32 {
        self.map[v as usize].unwrap_or(v)
    }

    /// Whether f32 values `a` and `b` are quantized with one type and no zero point but at different scales,
    /// so that an axis concatenation of them runs on codes after requantizing one (a `QAdd` takes no zero point).
    fn requantizable_pair(&self, a: u32, b: u32) -> bool {
        let (Some(aq), Some(bq)) = (self.map[a as usize], self.map[b as usize]) else { return false };
        let (ai, bi) = (self.info(aq), self.info(bq));
        ai.dtype.is_quantized() && ai.dtype == bi.dtype && ai.zero == 0 && bi.zero == 0 && aq != bq
    }

    /// `op` on the codes of its quantized inputs ([`Builder::moves_quantized`]): the output is a new value of the
    /// inputs' type, scale and zero point.
    fn move_op(&mut self, op: &Op) -> Result<()> {
        let mut new = *op;
        let (mut input, mut out) = (None, None);
        op.for_each_value(|v, role| match role {
            Role::In => input = input.or(self.map[v as usize]),
            _ => out = Some(v),
        });
        let (x, out) = input.zip(out).ok_or_else(|| err!(Quantize, "internal: {} without operands", op.name()))?;
        let (xi, s) = (self.info(x), self.f.values[out as usize]);
        let o = self.q.typed_value(s.c, s.h, s.w, xi.dtype, xi.scale);
        self.q.values[o as usize].zero = xi.zero;
        let map = &self.map;
        let mut missing = false;
        new.map_operands(&mut |w, role| match role {
            Role::In => match map[*w as usize] {
                Some(q) => *w = q,
                None => missing = true,
            },
            Role::Out => *w = o,
            _ => {}
        });
        if missing {
            bail!(Quantize, "internal: {} reads a value before it is written", op.name());
        }
        self.q.push(new);
        self.define(out, o, None);
        Ok(())
    }

    /// Whether every op that reads f32 value `v` is a convolution or linear layer, which take a zero point (so a
    /// SiLU output may be asymmetric).
    /// Only the ops after `at` up to the next one that writes `v` read what op `at` wrote.
    fn read_by_convs_only(&self, at: usize, v: u32) -> bool {
        for op in &self.f.ops[at + 1..] {
            let (mut reads, mut writes) = (false, false);
            op.for_each_value(|w, role| {
                reads |= w == v && matches!(role, Role::In | Role::InOut);
                writes |= w == v && matches!(role, Role::Out | Role::InOut);
            });
            if reads && !matches!(op, Op::Conv2d { .. } | Op::Linear { .. }) {
                return false;
            }
            if writes {
                break;
            }
        }
        true
    }

    /// An op without an int8 kernel, in f32: quantized inputs are dequantized first, tensors copied, and the
    /// output is an f32 value that the next integer op quantizes with the scale calibrated for it.
    fn float_op(&mut self, i: usize, op: &Op) -> Result<()> {
        self.float_ops += 1;
        let mut words = Vec::new();
        op.for_each_operand(&mut |w, role| words.push((w, role)));
        let mut new_words = Vec::with_capacity(words.len());
        let mut out = None;
        for &(w, role) in &words {
            new_words.push(match role {
                Role::In | Role::InOut => {
                    let q = self.map[w as usize]
                        .ok_or_else(|| err!(Quantize, "internal: value {w} read before written"))?;
                    if self.info(q).dtype == DType::F32 {
                        q
                    } else if let Some(&d) = self.dequantized.get(&q).filter(|_| role == Role::In) {
                        d
                    } else {
                        let s = self.info(q);
                        let d = self.q.value(s.c, s.h, s.w);
                        self.q.push(Op::Dequantize { out: d, x: q });
                        // Later f32 ops that read `q` read this copy (unless this op updates it in place).
                        if role == Role::In {
                            self.dequantized.insert(q, d);
                        }
                        d
                    }
                }
                Role::Out | Role::Scratch => {
                    let s = self.f.values[w as usize];
                    let o = self.q.value(s.c, s.h, s.w);
                    if role == Role::Out {
                        self.site_of.insert(o, Site::Out(i));
                        out = Some((w, o));
                    }
                    o
                }
                Role::Tensor => self.float_tensor(w)?,
                Role::Param => w,
            });
        }
        let mut new = *op;
        let mut k = 0;
        new.map_operands(&mut |w, _| {
            *w = new_words[k];
            k += 1;
        });
        self.q.push(new);
        let (v, o) = out.ok_or_else(|| err!(Quantize, "internal: {} writes no value", op.name()))?;
        self.define(v, o, None);
        Ok(())
    }
}
