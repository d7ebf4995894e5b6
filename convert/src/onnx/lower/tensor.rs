//! Lowering of the ops that move, combine or reduce whole tensors: `Transpose`, `MatMul`/`Einsum` between
//! computed tensors and by constant matrices, `Softmax`, reductions, `Split`/`Slice`/`Gather`, `Concat` on any
//! axis, `Expand`, the norms that map onto `GroupNorm` (`InstanceNormalization`, `GroupNormalization`), and
//! `BatchNormalization`.
//!
//! Values are row-major with the ONNX shape (batch 1), so every op here works on the flat element order the
//! ONNX shape implies: a tensor viewed as `[outer, n, inner]` around an axis, or as up to six dimensions for a
//! permutation.

use ddpm_core::ops::{BinaryFn, PadMode, PoolFn, ReduceFn, ResizeCoord, ResizeSample, PERMUTE_DIMS};
use ddpm_core::program::Op;

use super::{attr_f, attr_i, attr_ints, attr_s, collapse, norm_eps, Lower, Sym};
use crate::error::{Context, Result};
use crate::onnx::arr::{self, Arr};
use crate::onnx::read::Node;
use crate::{bail, err};

/// `(outer, n, inner)` of `s` around axis `ax`.
pub(super) fn around(s: &[usize], ax: usize) -> (usize, usize, usize) {
    (s[..ax].iter().product(), s[ax], s[ax + 1..].iter().product())
}

/// `(outer, n, inner)` of `s` around the axes `lo..=hi` taken as one.
fn around_span(s: &[usize], lo: usize, hi: usize) -> (usize, usize, usize) {
    (s[..lo].iter().product(), s[lo..=hi].iter().product(), s[hi + 1..].iter().product())
}

fn u32_of(x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| err!(Model, "dimension {x} is too large"))
}

/// `perm` of a valid permutation of `0..r`, or `None`.
fn check_perm(perm: &[usize], r: usize) -> bool {
    let mut seen = vec![false; r];
    perm.len() == r && perm.iter().all(|&p| p < r && !std::mem::replace(&mut seen[p], true))
}

/// The part sizes of a `Split` of an axis of length `len`: input 1, the `split` attribute, or equal parts
/// (`num_outputs`, or one per output; the last part may be shorter).
pub(super) fn split_sizes(n: &Node, given: Option<&Arr>, len: usize) -> Result<Vec<usize>> {
    let parts = n.outputs.len();
    let sizes: Vec<usize> = match (given, attr_ints(n, "split")?) {
        (Some(a), _) => a.ints().iter().map(|&x| usize::try_from(x).unwrap_or(usize::MAX)).collect(),
        (None, Some(a)) => a.iter().map(|&x| usize::try_from(x).unwrap_or(usize::MAX)).collect(),
        (None, None) => {
            let k = attr_i(n, "num_outputs", parts as i64)?.max(1) as usize;
            let each = len.div_ceil(k);
            (0..k).map(|i| each.min(len.saturating_sub(i * each))).collect()
        }
    };
    if sizes.len() != parts || sizes.iter().try_fold(0usize, |a, &b| a.checked_add(b)) != Some(len) {
        refuse!(n, "split sizes {sizes:?} of an axis of {len} into {parts} outputs");
    }
    Ok(sizes)
}

impl Lower<'_> {
    /// `v` (shape `s`) with its axes permuted by `perm`: free when no element moves, else a `Permute` over the
    /// shape with unit axes dropped and runs of axes that stay together merged.
    pub(super) fn permuted(&mut self, v: u32, s: &[usize], perm: &[usize]) -> Result<(u32, Vec<usize>)> {
        if !check_perm(perm, s.len()) {
            bail!(Model, "permutation {perm:?} of a rank-{} tensor", s.len());
        }
        let to: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
        // Input axes larger than 1, in input order; their positions; then output-ordered runs of consecutive ones.
        let big: Vec<usize> = (0..s.len()).filter(|&i| s[i] > 1).collect();
        let pos = |a: usize| big.iter().position(|&b| b == a).unwrap_or(usize::MAX);
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for &a in perm.iter().filter(|&&p| s[p] > 1) {
            match groups.last_mut() {
                Some(g) if g.last().is_some_and(|&l| pos(l).wrapping_add(1) == pos(a)) => g.push(a),
                _ => groups.push(vec![a]),
            }
        }
        if groups.len() <= 1 {
            return self.reshaped(v, s, to);
        }
        if groups.len() > PERMUTE_DIMS {
            bail!(Model, "a permutation of {s:?} by {perm:?} needs more than {PERMUTE_DIMS} dimensions");
        }
        let mut in_order: Vec<usize> = (0..groups.len()).collect();
        in_order.sort_by_key(|&g| pos(groups[g][0]));
        let off = PERMUTE_DIMS - groups.len();
        let mut dims = [1u32; PERMUTE_DIMS];
        for (i, &g) in in_order.iter().enumerate() {
            dims[off + i] = u32_of(groups[g].iter().map(|&a| s[a]).product())?;
        }
        let mut p6: [usize; PERMUTE_DIMS] = core::array::from_fn(|i| i);
        for (j, slot) in p6.iter_mut().enumerate().skip(off) {
            let k = in_order.iter().position(|&g| g == j - off).unwrap_or(0);
            *slot = off + k;
        }
        let packed = p6.iter().enumerate().fold(0u32, |w, (i, &p)| w | (p as u32) << (4 * i));
        let o = self.new_value(&to)?;
        self.g.push(Op::Permute { out: o, x: v, dims, perm: packed });
        Ok((o, to))
    }

    pub(super) fn transpose(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let perm: Vec<usize> = match attr_ints(n, "perm")? {
            Some(p) => p.iter().map(|&x| usize::try_from(x).unwrap_or(usize::MAX)).collect(),
            None => (0..s.len()).rev().collect(),
        };
        if !check_perm(&perm, s.len()) {
            refuse!(n, "attribute perm={perm:?} is not a permutation of the input's {} axes", s.len());
        }
        let (o, to) = self.permuted(v, &s, &perm).with_context(|| format!("node {} (Transpose)", n.name))?;
        self.define(n, o, to);
        Ok(())
    }

    /// `MatMul` of a computed tensor by a constant matrix, or `Gemm` with more than one row: `LinearRows`.
    pub(super) fn linear_rows(
        &mut self,
        n: &Node,
        v: u32,
        s: &[usize],
        w: Vec<f32>,
        bias: Vec<f32>,
        k: usize,
    ) -> Result<()> {
        let o = bias.len();
        let rows: usize = s[..s.len() - 1].iter().product();
        let wt = self.g.tensor(&format!("{}.weight", n.name), vec![o, k], w);
        let bt = self.g.tensor(&format!("{}.bias", n.name), vec![o], bias);
        let mut shape = s.to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = o;
        arr::numel(&[rows, o])?;
        let out = self.new_value(&shape)?;
        self.g.push(Op::LinearRows { out, x: v, w: wt, b: bt });
        self.define(n, out, shape);
        Ok(())
    }

    /// `out[b] = a[b]·b[b]` for two computed tensors `[..., m, k]` and `[..., k, n]` (or `[..., n, k]` when
    /// `trans_b`); batch dimensions equal, or all 1 on one side.
    fn matmul_values(
        &mut self,
        (va, sa): (u32, &[usize]),
        (vb, sb): (u32, &[usize]),
        trans_b: bool,
    ) -> Result<(u32, Vec<usize>)> {
        if sa.len() < 2 || sb.len() < 2 {
            bail!(Model, "a product of {sa:?} and {sb:?} (operands of rank 2 or more)");
        }
        let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (kb, nn) =
            if trans_b { (sb[sb.len() - 1], sb[sb.len() - 2]) } else { (sb[sb.len() - 2], sb[sb.len() - 1]) };
        if k != kb {
            bail!(Model, "a product of {sa:?} and {sb:?}: inner dimensions {k} and {kb} differ");
        }
        let batch_shape = arr::broadcast_shape(ba, bb)?;
        let batch = arr::numel(&batch_shape)?;
        let (na, nb) = (arr::numel(ba)?, arr::numel(bb)?);
        let a_shared = na == 1 && batch > 1;
        let b_shared = nb == 1 && batch > 1;
        if (na != batch && !a_shared) || (nb != batch && !b_shared) {
            bail!(Model, "a product of {sa:?} and {sb:?}: batch dimensions broadcast only partly");
        }
        let mut shape = batch_shape;
        shape.extend([m, nn]);
        let o = self.new_value(&shape)?;
        self.g.push(Op::MatMul {
            out: o,
            a: va,
            b: vb,
            batch: u32_of(batch)?,
            m: u32_of(m)?,
            k: u32_of(k)?,
            n: u32_of(nn)?,
            shared: a_shared as u32 | (b_shared as u32) << 1,
            trans_b,
        });
        Ok((o, shape))
    }

    /// `MatMul` of two computed tensors (numpy semantics; rank-1 operands are promoted and the added axis
    /// removed).
    pub(super) fn matmul(&mut self, n: &Node) -> Result<()> {
        let ((va, sa), (vb, sb)) = (self.val(n, 0)?, self.val(n, 1)?);
        let pa = if sa.len() == 1 { vec![1, sa[0]] } else { sa.clone() };
        let pb = if sb.len() == 1 { vec![sb[0], 1] } else { sb.clone() };
        let (o, mut shape) =
            self.matmul_values((va, &pa), (vb, &pb), false).with_context(|| format!("node {} (MatMul)", n.name))?;
        if sb.len() == 1 {
            shape.pop();
        }
        if sa.len() == 1 {
            shape.remove(shape.len() - if sb.len() == 1 { 1 } else { 2 });
        }
        self.define(n, o, shape);
        Ok(())
    }

    /// `Einsum` of two computed tensors: permuted into `[batch, free a, summed]` and `[batch, summed, free b]`
    /// (or `[batch, free b, summed]`, whichever moves no data), one `MatMul`, then permuted to the output's order.
    pub(super) fn einsum(&mut self, n: &Node) -> Result<()> {
        let eq: String = super::attr_s(n, "equation", "")?.chars().filter(|c| !c.is_whitespace()).collect();
        let Some((lhs, out)) = eq.split_once("->") else {
            refuse!(n, "equation {eq:?} without an explicit output (write it with ->)")
        };
        let ins: Vec<&str> = lhs.split(',').collect();
        let letters_ok = |t: &str| t.chars().all(|c| c.is_ascii_alphabetic());
        if ins.len() != 2 || n.inputs.len() != 2 || !ins.iter().chain([&out]).all(|t| letters_ok(t)) {
            refuse!(n, "equation {eq:?} (two operands with one letter per axis are supported; no ellipsis)");
        }
        let ((va, sa), (vb, sb)) = (self.val(n, 0)?, self.val(n, 1)?);
        let (la, lb, lo): (Vec<char>, Vec<char>, Vec<char>) =
            (ins[0].chars().collect(), ins[1].chars().collect(), out.chars().collect());
        let distinct = |l: &[char]| l.iter().enumerate().all(|(i, c)| !l[..i].contains(c));
        if la.len() != sa.len() || lb.len() != sb.len() || !distinct(&la) || !distinct(&lb) || !distinct(&lo) {
            refuse!(n, "equation {eq:?} does not match operands {sa:?} and {sb:?} with distinct letters");
        }
        let size = |c: char| -> Option<usize> {
            la.iter().position(|&x| x == c).map(|i| sa[i]).or_else(|| lb.iter().position(|&x| x == c).map(|i| sb[i]))
        };
        for c in la.iter().filter(|c| lb.contains(c)) {
            let (x, y) =
                (sa[la.iter().position(|x| x == c).unwrap_or(0)], sb[lb.iter().position(|x| x == c).unwrap_or(0)]);
            if x != y {
                refuse!(n, "equation {eq:?}: axis {c} is {x} in one operand and {y} in the other");
            }
        }
        if lo.iter().any(|c| size(*c).is_none()) {
            refuse!(n, "equation {eq:?}: an output letter appears in no operand");
        }
        if la.iter().chain(&lb).any(|c| !(lo.contains(c) || la.contains(c) && lb.contains(c))) {
            refuse!(n, "equation {eq:?} sums an axis of one operand only");
        }
        let batch: Vec<char> = lo.iter().copied().filter(|c| la.contains(c) && lb.contains(c)).collect();
        let sum: Vec<char> = la.iter().copied().filter(|c| lb.contains(c) && !lo.contains(c)).collect();
        let free_a: Vec<char> = lo.iter().copied().filter(|c| la.contains(c) && !lb.contains(c)).collect();
        let free_b: Vec<char> = lo.iter().copied().filter(|c| lb.contains(c) && !la.contains(c)).collect();
        let perm_of = |l: &[char], order: &[char]| -> Vec<usize> {
            order.iter().map(|c| l.iter().position(|x| x == c).unwrap_or(0)).collect()
        };
        let is_identity = |p: &[usize], s: &[usize]| {
            let big: Vec<usize> = p.iter().copied().filter(|&i| s[i] > 1).collect();
            big.windows(2).all(|w| w[0] < w[1])
        };
        let prod = |l: &[char]| l.iter().map(|&c| size(c).unwrap_or(1)).product::<usize>();
        let (bn, mn, kn, nn) = (prod(&batch), prod(&free_a), prod(&sum), prod(&free_b));
        let order_a: Vec<char> = [&batch[..], &free_a, &sum].concat();
        let (pa, _) = self.permuted(va, &sa, &perm_of(&la, &order_a))?;
        let plain: Vec<char> = [&batch[..], &sum, &free_b].concat();
        let trans: Vec<char> = [&batch[..], &free_b, &sum].concat();
        let (trans_b, order_b) = if is_identity(&perm_of(&lb, &plain), &sb) || !is_identity(&perm_of(&lb, &trans), &sb)
        {
            (false, plain)
        } else {
            (true, trans)
        };
        let (pb, _) = self.permuted(vb, &sb, &perm_of(&lb, &order_b))?;
        let b_shape = if trans_b { [bn, nn, kn] } else { [bn, kn, nn] };
        let (mv, _) = self
            .matmul_values((pa, &[bn, mn, kn]), (pb, &b_shape), trans_b)
            .with_context(|| format!("node {} (Einsum {eq})", n.name))?;
        // The product is [batch…, free a…, free b…]; the output wants `lo`'s order.
        let prod_order: Vec<char> = [&batch[..], &free_a, &free_b].concat();
        let prod_shape: Vec<usize> = prod_order.iter().map(|&c| size(c).unwrap_or(1)).collect();
        let (o, to) = self.permuted(mv, &prod_shape, &perm_of(&prod_order, &lo))?;
        self.define(n, o, to);
        Ok(())
    }

    pub(super) fn softmax(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        if s.is_empty() {
            refuse!(n, "softmax of a scalar");
        }
        let ax = arr::axis(attr_i(n, "axis", -1)?, s.len())?;
        let (outer, len, inner) = around(&s, ax);
        let o = self.new_value(&s)?;
        self.g.push(Op::Softmax { out: o, x: v, outer: u32_of(outer)?, n: u32_of(len)?, inner: u32_of(inner)? });
        self.define(n, o, s);
        Ok(())
    }

    /// `Reduce*` of a computed tensor over one axis or a run of adjacent axes.
    pub(super) fn reduce(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let f = match n.op.as_str() {
            "ReduceSum" => ReduceFn::Sum,
            "ReduceMean" => ReduceFn::Mean,
            "ReduceMax" => ReduceFn::Max,
            "ReduceMin" => ReduceFn::Min,
            "ReduceL2" => ReduceFn::L2,
            _ => ReduceFn::SumSquare,
        };
        let axes = match self.constant(n, 1)? {
            Some(a) => a.ints(),
            None => attr_ints(n, "axes")?.unwrap_or_default(),
        };
        if axes.is_empty() && attr_i(n, "noop_with_empty_axes", 0)? != 0 {
            self.define(n, v, s);
            return Ok(());
        }
        let mut ax: Vec<usize> = axes.iter().map(|&a| arr::axis(a, s.len())).collect::<Result<_>>()?;
        if ax.is_empty() {
            ax = (0..s.len()).collect();
        }
        ax.sort_unstable();
        ax.dedup();
        let (lo, hi) = (ax[0], ax[ax.len() - 1]);
        // Unit axes between the reduced ones do not matter.
        if (lo..=hi).any(|d| !ax.contains(&d) && s[d] != 1) {
            refuse!(n, "a reduction over axes {axes:?} of {s:?} that are not adjacent");
        }
        let (outer, len, inner) = around_span(&s, lo, hi);
        let keep = attr_i(n, "keepdims", 1)? != 0;
        let to: Vec<usize> =
            (0..s.len()).filter_map(|d| if ax.contains(&d) { keep.then_some(1) } else { Some(s[d]) }).collect();
        let o = self.new_value(&to)?;
        self.g.push(Op::Reduce {
            out: o,
            x: v,
            outer: u32_of(outer)?,
            n: u32_of(len)?,
            inner: u32_of(inner)?,
            kind: f as u32,
        });
        self.define(n, o, to);
        Ok(())
    }

    /// Rows `start, start + step, …` (`count` of them) of axis `ax` of `v`.
    fn slice_rows(
        &mut self,
        v: u32,
        s: &[usize],
        ax: usize,
        start: usize,
        step: usize,
        count: usize,
    ) -> Result<(u32, Vec<usize>)> {
        let mut to = s.to_vec();
        to[ax] = count;
        if start == 0 && step == 1 && count == s[ax] {
            return Ok((v, to));
        }
        let (outer, len, inner) = around(s, ax);
        let o = self.new_value(&to)?;
        self.g.push(Op::Slice {
            out: o,
            x: v,
            outer: u32_of(outer)?,
            n: u32_of(len)?,
            inner: u32_of(inner)?,
            start: u32_of(start)?,
            step: u32_of(step)?,
            count: u32_of(count)?,
        });
        Ok((o, to))
    }

    pub(super) fn split(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let ax = arr::axis(attr_i(n, "axis", 0)?, s.len())?;
        let sizes = split_sizes(n, self.constant(n, 1)?, s[ax])?;
        let mut start = 0;
        for (name, &len) in n.outputs.iter().zip(&sizes) {
            let (o, to) = self.slice_rows(v, &s, ax, start, 1, len)?;
            if !name.is_empty() {
                self.syms.insert(name.clone(), Sym::Val { v: o, shape: to });
            }
            start += len;
        }
        Ok(())
    }

    /// `Slice` of a computed tensor with constant bounds and positive steps.
    pub(super) fn slice(&mut self, n: &Node) -> Result<()> {
        let (mut v, mut s) = self.val(n, 0)?;
        let get = |k: usize| -> Result<Option<Vec<i64>>> { Ok(self.constant(n, k)?.map(Arr::ints)) };
        let (Some(starts), Some(ends)) = (get(1)?, get(2)?) else { refuse!(n, "starts and ends must be constants") };
        let axes = get(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = get(4)?.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            refuse!(n, "starts, ends, axes and steps of different lengths");
        }
        for (((&st, &en), &a), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
            let ax = arr::axis(a, s.len())?;
            if step <= 0 {
                refuse!(n, "step {step} (only positive steps are supported on a computed tensor)");
            }
            let d = s[ax] as i64;
            let clamp = |x: i64| (if x < 0 { x + d } else { x }).clamp(0, d);
            let (b, e) = (clamp(st), clamp(en));
            let count = if e > b { ((e - b) + step - 1) / step } else { 0 };
            if count == 0 {
                refuse!(n, "a slice that leaves axis {ax} of {s:?} empty");
            }
            (v, s) = self.slice_rows(v, &s, ax, b as usize, step as usize, count as usize)?;
        }
        self.define(n, v, s);
        Ok(())
    }

    /// `Gather` of a computed tensor at constant indices in arithmetic progression (one index: a slice that
    /// drops the axis when the index is a scalar).
    pub(super) fn gather(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let Some(idx) = self.constant(n, 1)?.cloned() else { refuse!(n, "indices must be constants") };
        let ax = arr::axis(attr_i(n, "axis", 0)?, s.len())?;
        let d = s[ax] as i64;
        let ix: Vec<i64> = idx.ints().iter().map(|&i| if i < 0 { i + d } else { i }).collect();
        if ix.is_empty() || ix.iter().any(|&i| !(0..d).contains(&i)) || idx.shape.len() > 1 {
            refuse!(n, "indices {:?} of axis {ax} of {s:?} (in range, scalar or 1-D)", idx.ints());
        }
        let step = if ix.len() > 1 { ix[1] - ix[0] } else { 1 };
        if step <= 0 || ix.windows(2).any(|w| w[1] - w[0] != step) {
            refuse!(n, "indices {ix:?} (only an increasing arithmetic progression is supported on a computed tensor)");
        }
        let (o, mut to) = self.slice_rows(v, &s, ax, ix[0] as usize, step as usize, ix.len())?;
        if idx.shape.is_empty() {
            to.remove(ax);
        }
        self.define(n, o, to);
        Ok(())
    }

    /// A constant as a program value.
    fn materialise(&mut self, name: &str, a: &Arr) -> Result<(u32, Vec<usize>)> {
        let o = self.new_value(&a.shape)?;
        let t = self.g.tensor(&format!("{name}.constant"), vec![a.len()], a.floats());
        self.g.push(Op::Constant { out: o, t });
        Ok((o, a.shape.clone()))
    }

    pub(super) fn concat(&mut self, n: &Node) -> Result<()> {
        let mut parts = Vec::new();
        for (k, name) in n.inputs.iter().enumerate() {
            match self.sym(name)?.clone() {
                Sym::Const(a) if a.is_empty() => continue,
                Sym::Const(a) => parts.push(self.materialise(&format!("{}.{k}", n.name), &a)?),
                _ => parts.push(self.val(n, k)?),
            }
        }
        let Some((first_v, first_s)) = parts.first().cloned() else { refuse!(n, "no inputs") };
        let r = first_s.len();
        let ax = arr::axis(attr_i(n, "axis", 1)?, r)?;
        let (mut acc, mut shape) = (first_v, first_s);
        for (v, s) in parts.into_iter().skip(1) {
            if s.len() != r || (0..r).any(|d| d != ax && s[d] != shape[d]) {
                refuse!(n, "concatenation of {shape:?} and {s:?} along axis {ax}");
            }
            let mut next = shape.clone();
            next[ax] += s[ax];
            let o = self.new_value(&next)?;
            if r == 4 && ax == 1 && shape[0] == 1 {
                // The channel concatenation every backend has.
                self.g.push(Op::Concat { out: o, a: acc, b: v });
            } else {
                let (outer, na, inner) = around(&shape, ax);
                self.g.push(Op::ConcatAxis {
                    out: o,
                    a: acc,
                    b: v,
                    outer: u32_of(outer)?,
                    na: u32_of(na)?,
                    nb: u32_of(s[ax])?,
                    inner: u32_of(inner)?,
                });
            }
            (acc, shape) = (o, next);
        }
        self.define(n, acc, shape);
        Ok(())
    }

    /// `Expand` of a computed tensor: a broadcast copy (`x + 0` over the target shape).
    pub(super) fn expand(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let Some(spec) = self.constant(n, 1)? else { refuse!(n, "the target shape must be a constant") };
        let spec: Vec<usize> = spec.ints().iter().map(|&d| d.max(0) as usize).collect();
        let to = arr::broadcast_shape(&s, &spec)?;
        if to == s {
            self.define(n, v, s);
            return Ok(());
        }
        let (dims, bcast) = collapse(&to, &s, &[]).with_context(|| format!("node {} (Expand)", n.name))?;
        let t = self.g.tensor(&format!("{}.zero", n.name), vec![1], vec![0.0]);
        let o = self.new_value(&to)?;
        self.g.push(Op::BinaryConst { out: o, a: v, t, dims, bcast, kind: BinaryFn::Add as u32, swap: false });
        self.define(n, o, to);
        Ok(())
    }

    /// Per-channel `(scale, bias)` of length `c` from a norm's parameter inputs 1 and 2, or `groups` of them
    /// repeated over each group's channels.
    fn channel_params(&self, n: &Node, c: usize, groups: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let widen = |k: usize, d: f32| -> Result<Vec<f32>> {
            match self.constant(n, k)? {
                None => Ok(vec![d; c]),
                Some(a) if a.len() == c => Ok(a.floats()),
                Some(a) if a.len() == groups && groups > 0 => {
                    let f = a.floats();
                    Ok((0..c).map(|i| f[i / (c / groups)]).collect())
                }
                Some(a) => refuse!(n, "a scale or bias of {} values for {c} channels", a.len()),
            }
        };
        Ok((widen(1, 1.0)?, widen(2, 0.0)?))
    }

    /// `InstanceNormalization` (groups = channels) and `GroupNormalization` as the program's `GroupNorm`.
    pub(super) fn group_norm(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        if s.len() < 3 || s[0] != 1 {
            refuse!(n, "input {s:?} (expected [N, C, ...])");
        }
        let c = s[1];
        let groups = if n.op == "InstanceNormalization" { c } else { attr_i(n, "num_groups", 0)?.max(0) as usize };
        if groups == 0 || c % groups != 0 {
            refuse!(n, "attribute num_groups={groups} does not divide the {c} channels");
        }
        let (gamma, beta) = self.channel_params(n, c, groups)?;
        let eps = norm_eps(n)?;
        let gt = self.g.tensor(&format!("{}.scale", n.name), vec![c], gamma);
        let bt = self.g.tensor(&format!("{}.bias", n.name), vec![c], beta);
        let o = self.new_value(&s)?;
        self.g.push(Op::GroupNorm { out: o, x: v, gamma: gt, beta: bt, groups: u32_of(groups)?, eps, silu: false });
        self.define(n, o, s);
        Ok(())
    }

    /// Inference `BatchNormalization`: `x·a + b` per channel, `a = scale / sqrt(var + eps)`, `b = bias − mean·a`.
    pub(super) fn batch_norm(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        if s.len() < 2 || s[0] != 1 {
            refuse!(n, "input {s:?} (expected [N, C, ...])");
        }
        if attr_i(n, "training_mode", 0)? != 0 || n.outputs.iter().skip(1).any(|o| !o.is_empty()) {
            refuse!(n, "training mode (running statistics outputs) is not supported");
        }
        let c = s[1];
        let p = |k: usize| -> Result<Vec<f32>> {
            match self.constant(n, k)? {
                Some(a) if a.len() == c => Ok(a.floats()),
                _ => refuse!(n, "input {k} must be a constant of {c} values"),
            }
        };
        let (scale, bias, mean, var) = (p(1)?, p(2)?, p(3)?, p(4)?);
        let eps = norm_eps(n)?;
        let a: Vec<f32> = scale.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let b: Vec<f32> = bias.iter().zip(&mean).zip(&a).map(|((b, m), a)| b - m * a).collect();
        let per_c: Vec<usize> = (0..s.len()).map(|d| if d == 1 { c } else { 1 }).collect();
        let (dims, bcast) = collapse(&s, &s, &per_c)?;
        let (ta, tb) = (
            self.g.tensor(&format!("{}.mul", n.name), vec![c], a),
            self.g.tensor(&format!("{}.add", n.name), vec![c], b),
        );
        let m = self.new_value(&s)?;
        self.g.push(Op::BinaryConst { out: m, a: v, t: ta, dims, bcast, kind: BinaryFn::Mul as u32, swap: false });
        self.g.push(Op::BinaryConst { out: m, a: m, t: tb, dims, bcast, kind: BinaryFn::Add as u32, swap: false });
        self.define(n, m, s);
        Ok(())
    }

    /// `Resize`/`Upsample` of `[1, C, H, W]`: nearest ×2 as `Upsample2x` (which every backend has), anything
    /// else as `Resize`.
    pub(super) fn resize(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        if s.len() != 4 || s[0] != 1 {
            refuse!(n, "input {s:?} (a resize of [N, C, H, W] is supported)");
        }
        let upsample = n.op == "Upsample";
        let scales = if upsample { self.constant(n, 1)? } else { self.constant(n, 2)? };
        let sizes = if upsample { None } else { self.constant(n, 3)? };
        let target: Vec<usize> = match (scales.filter(|a| !a.is_empty()), sizes.filter(|a| !a.is_empty())) {
            (Some(sc), _) => sc
                .floats()
                .iter()
                .zip(&s)
                .map(|(f, &d)| if f.is_finite() && *f > 0.0 { (f * d as f32).floor() as usize } else { 0 })
                .collect(),
            (None, Some(sz)) => sz.ints().iter().map(|&d| d.max(0) as usize).collect(),
            _ => refuse!(n, "neither scales nor sizes"),
        };
        if target.len() != 4 || target[..2] != s[..2] || target[2] == 0 || target[3] == 0 {
            refuse!(n, "a resize of {s:?} to {target:?} (height and width only)");
        }
        let mode = attr_s(n, "mode", "nearest")?;
        let coord =
            match attr_s(n, "coordinate_transformation_mode", if upsample { "asymmetric" } else { "half_pixel" })?
                .as_str()
            {
                "half_pixel" => ResizeCoord::HalfPixel,
                "pytorch_half_pixel" => ResizeCoord::PytorchHalfPixel,
                "align_corners" => ResizeCoord::AlignCorners,
                "asymmetric" => ResizeCoord::Asymmetric,
                other => refuse!(n, "attribute coordinate_transformation_mode={other} is not supported"),
            };
        let sample = match mode.as_str() {
            "nearest" => {
                match attr_s(n, "nearest_mode", if upsample { "floor" } else { "round_prefer_floor" })?.as_str() {
                    "floor" => ResizeSample::Floor,
                    "round_prefer_floor" => ResizeSample::RoundPreferFloor,
                    "round_prefer_ceil" => ResizeSample::RoundPreferCeil,
                    "ceil" => ResizeSample::Ceil,
                    other => refuse!(n, "attribute nearest_mode={other} is not supported"),
                }
            }
            "linear" | "bilinear" => ResizeSample::Linear,
            other => refuse!(n, "attribute mode={other} is not supported (nearest, linear)"),
        };
        if attr_i(n, "antialias", 0)? != 0 && target[2] < s[2] {
            refuse!(n, "attribute antialias=1 on a downscale is not supported");
        }
        let doubles = target[2] == 2 * s[2] && target[3] == 2 * s[3];
        let o = self.new_value(&target)?;
        // Nearest ×2 repeats each pixel with floor or round-prefer-floor, whatever the half-pixel offset.
        let repeat = matches!(sample, ResizeSample::Floor | ResizeSample::RoundPreferFloor)
            && matches!(coord, ResizeCoord::Asymmetric | ResizeCoord::HalfPixel | ResizeCoord::PytorchHalfPixel);
        if doubles && repeat {
            self.g.push(Op::Upsample2x { out: o, x: v });
        } else {
            self.g.push(Op::Resize { out: o, x: v, mode: coord as u32 | (sample as u32) << 4 });
        }
        self.define(n, o, target);
        Ok(())
    }

    pub(super) fn pool(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        if s.len() != 4 || s[0] != 1 {
            refuse!(n, "input {s:?} (2-D pooling of [N, C, H, W] is supported)");
        }
        let two = |k: &str, d: i64| -> Result<[usize; 2]> {
            let v = attr_ints(n, k)?.unwrap_or(vec![d, d]);
            if v.len() != 2 || v.iter().any(|&x| !(1..=4096).contains(&x)) {
                refuse!(n, "attribute {k}={v:?} is not supported");
            }
            Ok([v[0] as usize, v[1] as usize])
        };
        let Some(_) = attr_ints(n, "kernel_shape")? else { refuse!(n, "no kernel_shape") };
        let (k, st) = (two("kernel_shape", 1)?, two("strides", 1)?);
        if two("dilations", 1)? != [1, 1] {
            refuse!(n, "attribute dilations other than 1 is not supported");
        }
        if attr_ints(n, "pads")?.is_some_and(|p| p.len() != 4 || p.iter().any(|&x| !(0..=4096).contains(&x))) {
            refuse!(n, "attribute pads={:?} is not supported", attr_ints(n, "pads")?);
        }
        let p: Vec<usize> = attr_ints(n, "pads")?.unwrap_or(vec![0; 4]).iter().map(|&x| x as usize).collect();
        let auto = attr_s(n, "auto_pad", "NOTSET")?;
        if auto != "NOTSET" && auto != "VALID" {
            refuse!(n, "attribute auto_pad={auto} is not supported");
        }
        let p = if auto == "VALID" { vec![0; 4] } else { p };
        let ceil = attr_i(n, "ceil_mode", 0)? != 0;
        let len = |i: usize, k: usize, s: usize, a: usize, b: usize| -> Option<usize> {
            let span = (i + a + b).checked_sub(k)?;
            let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
            // With ceil_mode a last window that would start in the end padding is dropped (as PyTorch does).
            if ceil && (o - 1) * s >= i + a {
                o -= 1;
            }
            Some(o)
        };
        let (Some(ho), Some(wo)) = (len(s[2], k[0], st[0], p[0], p[2]), len(s[3], k[1], st[1], p[1], p[3])) else {
            refuse!(n, "the {}x{} window is larger than the padded {}x{} input", k[0], k[1], s[2], s[3]);
        };
        if p[0] >= k[0] || p[1] >= k[1] || p[2] >= k[0] || p[3] >= k[1] {
            refuse!(n, "padding {p:?} as wide as the window is not supported");
        }
        let f = match (n.op.as_str(), attr_i(n, "count_include_pad", 0)? != 0) {
            ("MaxPool", _) => PoolFn::Max,
            (_, false) => PoolFn::Average,
            (_, true) => PoolFn::AverageWithPad,
        };
        if n.outputs.iter().skip(1).any(|o| !o.is_empty()) {
            refuse!(n, "the indices output is not supported");
        }
        let to = vec![1, s[1], ho, wo];
        let o = self.new_value(&to)?;
        let u = |x: usize| u32_of(x);
        self.g.push(Op::Pool2d {
            out: o,
            x: v,
            k: [u(k[0])?, u(k[1])?],
            stride: [u(st[0])?, u(st[1])?],
            pad: [u(p[0])?, u(p[1])?],
            kind: f as u32,
        });
        self.define(n, o, to);
        Ok(())
    }

    /// `GlobalAveragePool`/`GlobalMaxPool`: a reduction over H·W, kept as `[1, C, 1, 1]`.
    pub(super) fn global_pool(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        if s.len() < 3 || s[0] != 1 {
            refuse!(n, "input {s:?} (expected [N, C, ...])");
        }
        let f = if n.op == "GlobalMaxPool" { ReduceFn::Max } else { ReduceFn::Mean };
        let inner: usize = s[2..].iter().product();
        let to: Vec<usize> = s.iter().enumerate().map(|(d, &x)| if d >= 2 { 1 } else { x }).collect();
        let o = self.new_value(&to)?;
        self.g.push(Op::Reduce { out: o, x: v, outer: u32_of(s[1])?, n: u32_of(inner)?, inner: 1, kind: f as u32 });
        self.define(n, o, to);
        Ok(())
    }

    /// `Pad` of the height and width of `[1, C, H, W]` (constant, reflect or edge).
    pub(super) fn pad(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let pads = match (self.constant(n, 1)?, attr_ints(n, "pads")?) {
            (Some(a), _) => a.ints(),
            (None, Some(p)) => p,
            _ => refuse!(n, "the pads must be constants"),
        };
        let r = s.len();
        // Opset 18 may name the padded axes; expand to all axes.
        let full: Vec<i64> = match self.constant(n, 3)? {
            Some(axes) => {
                let ax: Vec<usize> = axes.ints().iter().map(|&a| arr::axis(a, r)).collect::<Result<_>>()?;
                if pads.len() != 2 * ax.len() {
                    refuse!(n, "{} pads for {} axes", pads.len(), ax.len());
                }
                let mut f = vec![0i64; 2 * r];
                for (i, &a) in ax.iter().enumerate() {
                    f[a] = pads[i];
                    f[r + a] = pads[ax.len() + i];
                }
                f
            }
            None => pads,
        };
        if r != 4 || s[0] != 1 || full.len() != 8 || [0, 1, 4, 5].iter().any(|&i| full[i] != 0) {
            refuse!(n, "pads {full:?} of {s:?} (padding of height and width of [N, C, H, W] is supported)");
        }
        if full.iter().any(|&p| !(0..=4096).contains(&p)) {
            refuse!(n, "pads {full:?} (negative pads, that is cropping, are not supported)");
        }
        let value = match self.constant(n, 2)? {
            Some(c) => c.floats().first().copied().unwrap_or(0.0),
            None => attr_f(n, "value", 0.0)?,
        };
        let mode = match attr_s(n, "mode", "constant")?.as_str() {
            "constant" => PadMode::Constant,
            "reflect" => PadMode::Reflect,
            "edge" => PadMode::Edge,
            other => refuse!(n, "attribute mode={other} is not supported (constant, reflect, edge)"),
        };
        let p = [full[2], full[3], full[6], full[7]].map(|x| x as usize);
        if mode == PadMode::Reflect && (p[0].max(p[2]) >= s[2] || p[1].max(p[3]) >= s[3]) {
            refuse!(n, "reflection pads {p:?} as large as the {}x{} input", s[2], s[3]);
        }
        if !value.is_finite() {
            refuse!(n, "a padding value of {value}");
        }
        let to = vec![1, s[1], s[2] + p[0] + p[2], s[3] + p[1] + p[3]];
        if to == s {
            self.define(n, v, s);
            return Ok(());
        }
        let o = self.new_value(&to)?;
        let pad = [u32_of(p[0])?, u32_of(p[1])?, u32_of(p[2])?, u32_of(p[3])?];
        self.g.push(Op::Pad { out: o, x: v, pad, value, mode: mode as u32 });
        self.define(n, o, to);
        Ok(())
    }

    /// `DepthToSpace` (DCR or CRD) and `SpaceToDepth` as reshapes around one permutation.
    pub(super) fn depth_space(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let b = usize::try_from(attr_i(n, "blocksize", 0)?).unwrap_or(0);
        if s.len() != 4 || s[0] != 1 || b == 0 {
            refuse!(n, "input {s:?} with blocksize {b} (expected [1, C, H, W], blocksize > 0)");
        }
        let (c, h, w) = (s[1], s[2], s[3]);
        let (view, perm, to) = if n.op == "SpaceToDepth" {
            if h % b != 0 || w % b != 0 {
                refuse!(n, "blocksize {b} does not divide {h}x{w}");
            }
            (vec![c, h / b, b, w / b, b], vec![2, 4, 0, 1, 3], vec![1, c * b * b, h / b, w / b])
        } else {
            if c % (b * b) != 0 {
                refuse!(n, "blocksize {b} squared does not divide {c} channels");
            }
            match attr_s(n, "mode", "DCR")?.as_str() {
                "DCR" => (vec![b, b, c / (b * b), h, w], vec![2, 3, 0, 4, 1], vec![1, c / (b * b), h * b, w * b]),
                "CRD" => (vec![c / (b * b), b, b, h, w], vec![0, 3, 1, 4, 2], vec![1, c / (b * b), h * b, w * b]),
                other => refuse!(n, "attribute mode={other}"),
            }
        };
        let (p, permuted) = self.permuted(v, &view, &perm)?;
        let (o, to) = self.reshaped(p, &permuted, to)?;
        self.define(n, o, to);
        Ok(())
    }
}
