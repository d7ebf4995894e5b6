//! Host-side N-d arrays and the reference evaluation of the ONNX ops that fold at convert time: shape
//! arithmetic, constants, and the timestep's own sub-graph (evaluated once per timestep into a table).
//!
//! Floats are f32 (as ONNX Runtime computes float32 graphs), integers and booleans i64. Everything is checked:
//! a hostile graph gives an error, never a panic or an unbounded allocation.

use crate::bail;
use crate::error::Result;

/// The most elements one folded array may hold.
pub const MAX_ELEMENTS: usize = 1 << 26;
/// The elements all the arrays folding makes for one graph may hold together, beyond four times the graph's own
/// weights: shape arithmetic and weight rearrangements stay far below it, while a small hostile file that keeps
/// making large constants (ConstantOfShape, Expand, Concat of itself...) is an error in a second, not minutes.
pub const FOLD_ALLOWANCE: usize = 1 << 24;

/// Array data: floats or integers (booleans are 0/1 integers).
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// float16/float32/float64 data, as f32.
    F(Vec<f32>),
    /// Integer and boolean data, as i64.
    I(Vec<i64>),
}

/// A dense row-major array.
#[derive(Debug, Clone, PartialEq)]
pub struct Arr {
    /// Dimensions (empty: a scalar).
    pub shape: Vec<usize>,
    /// Elements, `shape.iter().product()` of them.
    pub data: Data,
}

/// The number of elements of `shape`, if it is not absurd.
pub fn numel(shape: &[usize]) -> Result<usize> {
    let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match n {
        Some(n) if n <= MAX_ELEMENTS => Ok(n),
        _ => bail!(Model, "an array of shape {shape:?} is too large"),
    }
}

impl Arr {
    /// A float array.
    pub fn f(shape: Vec<usize>, v: Vec<f32>) -> Arr {
        Arr { shape, data: Data::F(v) }
    }
    /// An integer array.
    pub fn i(shape: Vec<usize>, v: Vec<i64>) -> Arr {
        Arr { shape, data: Data::I(v) }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }
    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The elements as f32.
    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// The elements as i64 (floats truncated toward zero, as a cast does).
    pub fn ints(&self) -> Vec<i64> {
        match &self.data {
            Data::F(v) => v.iter().map(|&x| if x.is_finite() { x as i64 } else { 0 }).collect(),
            Data::I(v) => v.clone(),
        }
    }
    fn is_float(&self) -> bool {
        matches!(self.data, Data::F(_))
    }
    /// Picks elements by index, keeping the type.
    fn pick(&self, idx: &[usize], shape: Vec<usize>) -> Arr {
        match &self.data {
            Data::F(v) => Arr::f(shape, idx.iter().map(|&i| v[i]).collect()),
            Data::I(v) => Arr::i(shape, idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The numpy broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let pad = |s: &[usize], i: usize| if i + s.len() >= r { s[i + s.len() - r] } else { 1 };
    (0..r)
        .map(|i| match (pad(a, i), pad(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => bail!(Model, "shapes {a:?} and {b:?} do not broadcast"),
        })
        .collect()
}

/// For every element of `out` (row-major), the index of the element of an operand of shape `s` it reads.
fn broadcast_index(s: &[usize], out: &[usize]) -> Result<Vec<usize>> {
    let n = numel(out)?;
    let r = out.len();
    let padded: Vec<usize> = (0..r).map(|i| if i + s.len() >= r { s[i + s.len() - r] } else { 1 }).collect();
    let st = strides(&padded);
    let ost = strides(out);
    Ok((0..n).map(|k| (0..r).map(|d| if padded[d] == 1 { 0 } else { (k / ost[d]) % out[d] * st[d] }).sum()).collect())
}

/// Elementwise binary op of the folding evaluator, numpy-broadcast.
pub fn binary(op: &str, a: &Arr, b: &Arr) -> Result<Arr> {
    let shape = broadcast_shape(&a.shape, &b.shape)?;
    let (ia, ib) = (broadcast_index(&a.shape, &shape)?, broadcast_index(&b.shape, &shape)?);
    let cmp = matches!(op, "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or");
    if a.is_float() || b.is_float() {
        let (x, y) = (a.floats(), b.floats());
        let f = |p: f32, q: f32| -> Result<f32> {
            Ok(match op {
                "Add" => p + q,
                "Sub" => p - q,
                "Mul" => p * q,
                "Div" => p / q,
                "Pow" => p.powf(q),
                "Min" => p.min(q),
                "Max" => p.max(q),
                "Mod" => p % q,
                "Equal" => (p == q) as i64 as f32,
                "Less" => (p < q) as i64 as f32,
                "Greater" => (p > q) as i64 as f32,
                "LessOrEqual" => (p <= q) as i64 as f32,
                "GreaterOrEqual" => (p >= q) as i64 as f32,
                _ => bail!(Model, "cannot fold {op}"),
            })
        };
        let v = ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect::<Result<Vec<f32>>>()?;
        return Ok(if cmp { Arr::i(shape, v.iter().map(|&z| z as i64).collect()) } else { Arr::f(shape, v) });
    }
    let (x, y) = (a.ints(), b.ints());
    let f = |p: i64, q: i64| -> Result<i64> {
        Ok(match op {
            "Add" => p.wrapping_add(q),
            "Sub" => p.wrapping_sub(q),
            "Mul" => p.wrapping_mul(q),
            // Integer division truncates (ONNX Runtime, C); by zero is an error, not a crash.
            "Div" if q == 0 => bail!(Model, "integer division by zero while folding"),
            "Div" => p.wrapping_div(q),
            "Mod" if q == 0 => bail!(Model, "integer modulo by zero while folding"),
            "Mod" => p.wrapping_rem(q),
            "Pow" => (p as f64).powf(q as f64) as i64,
            "Min" => p.min(q),
            "Max" => p.max(q),
            "Equal" => (p == q) as i64,
            "Less" => (p < q) as i64,
            "Greater" => (p > q) as i64,
            "LessOrEqual" => (p <= q) as i64,
            "GreaterOrEqual" => (p >= q) as i64,
            "And" => (p != 0 && q != 0) as i64,
            "Or" => (p != 0 || q != 0) as i64,
            _ => bail!(Model, "cannot fold {op}"),
        })
    };
    let v = ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect::<Result<Vec<i64>>>()?;
    Ok(Arr::i(shape, v))
}

/// Elementwise unary op of the folding evaluator.
pub fn unary(op: &str, a: &Arr) -> Result<Arr> {
    if let Data::I(v) = &a.data {
        let r = match op {
            "Neg" => v.iter().map(|x| x.wrapping_neg()).collect(),
            "Abs" => v.iter().map(|x| x.wrapping_abs()).collect(),
            "Not" => v.iter().map(|&x| (x == 0) as i64).collect(),
            "Identity" | "Floor" | "Ceil" | "Round" => v.clone(),
            _ => return unary(op, &Arr::f(a.shape.clone(), a.floats())),
        };
        return Ok(Arr::i(a.shape.clone(), r));
    }
    let x = a.floats();
    let f: fn(f32) -> f32 = match op {
        "Neg" => |x| -x,
        "Abs" => f32::abs,
        "Sin" => f32::sin,
        "Cos" => f32::cos,
        "Exp" => f32::exp,
        "Log" => f32::ln,
        "Sqrt" => f32::sqrt,
        "Reciprocal" => |x| 1.0 / x,
        "Floor" => f32::floor,
        "Ceil" => f32::ceil,
        "Round" => f32::round_ties_even,
        "Sigmoid" => |x| 1.0 / (1.0 + (-x).exp()),
        "Tanh" => f32::tanh,
        "Relu" => |x| x.max(0.0),
        "Erf" => |x| ddpm_core::ops::UnaryFn::Erf.apply(x, 0.0, 0.0),
        "Identity" => |x| x,
        _ => bail!(Model, "cannot fold {op}"),
    };
    Ok(Arr::f(a.shape.clone(), x.into_iter().map(f).collect()))
}

/// `axis` of a rank-`r` array, negative counting from the end.
pub fn axis(a: i64, r: usize) -> Result<usize> {
    let ax = if a < 0 { a + r as i64 } else { a };
    if ax < 0 || ax >= r as i64 {
        bail!(Model, "axis {a} is out of range for rank {r}");
    }
    Ok(ax as usize)
}

/// ONNX `Gather` along `ax`.
pub fn gather(data: &Arr, idx: &Arr, ax: usize) -> Result<Arr> {
    let r = data.shape.len();
    if ax >= r {
        bail!(Model, "Gather axis {ax} on rank {r}");
    }
    let n = data.shape[ax];
    let ids = idx
        .ints()
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + n as i64 } else { i };
            if j < 0 || j >= n as i64 {
                bail!(Model, "Gather index {i} is out of range for a dimension of {n}");
            }
            Ok(j as usize)
        })
        .collect::<Result<Vec<_>>>()?;
    let outer: usize = data.shape[..ax].iter().product();
    let inner: usize = data.shape[ax + 1..].iter().product();
    let mut shape = data.shape[..ax].to_vec();
    shape.extend(&idx.shape);
    shape.extend(&data.shape[ax + 1..]);
    numel(&shape)?;
    let mut pick = Vec::with_capacity(outer * ids.len() * inner);
    for o in 0..outer {
        for &j in &ids {
            pick.extend((0..inner).map(|k| (o * n + j) * inner + k));
        }
    }
    Ok(data.pick(&pick, shape))
}

/// ONNX `Concat` along `ax`.
pub fn concat(parts: &[&Arr], ax: i64) -> Result<Arr> {
    let Some(first) = parts.first() else { bail!(Model, "Concat of nothing") };
    let r = first.shape.len();
    let ax = axis(ax, r)?;
    for p in parts {
        if p.shape.len() != r || (0..r).any(|d| d != ax && p.shape[d] != first.shape[d]) {
            bail!(Model, "Concat of shapes {:?} and {:?} along axis {ax}", first.shape, p.shape);
        }
    }
    let mut shape = first.shape.clone();
    shape[ax] = parts.iter().map(|p| p.shape[ax]).sum();
    numel(&shape)?;
    let outer: usize = shape[..ax].iter().product();
    let float = parts.iter().any(|p| p.is_float());
    let (mut fv, mut iv) = (Vec::new(), Vec::new());
    let fl: Vec<Vec<f32>> = if float { parts.iter().map(|p| p.floats()).collect() } else { vec![] };
    let il: Vec<Vec<i64>> = if float { vec![] } else { parts.iter().map(|p| p.ints()).collect() };
    for o in 0..outer {
        for (k, p) in parts.iter().enumerate() {
            let chunk: usize = p.shape[ax..].iter().product();
            if float {
                fv.extend_from_slice(&fl[k][o * chunk..][..chunk]);
            } else {
                iv.extend_from_slice(&il[k][o * chunk..][..chunk]);
            }
        }
    }
    Ok(if float { Arr::f(shape, fv) } else { Arr::i(shape, iv) })
}

/// The target shape of ONNX `Reshape` (0 copies the input's dimension unless `allowzero`, −1 is inferred).
pub fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let n = numel(input)?;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => {
                out.push(*input.get(i).ok_or_else(|| {
                    crate::err!(Model, "Reshape copies dimension {i} of a rank-{} input", input.len())
                })?)
            }
            d if d >= 0 => out.push(d as usize),
            _ => bail!(Model, "Reshape to {spec:?}: bad dimension {d}"),
        }
    }
    let known = numel(&out)?;
    if let Some(i) = infer {
        if known == 0 || n % known != 0 {
            bail!(Model, "Reshape of {input:?} to {spec:?}: the sizes do not divide");
        }
        out[i] = n / known;
    }
    if numel(&out)? != n {
        bail!(Model, "Reshape of {input:?} ({n} elements) to {spec:?}");
    }
    Ok(out)
}

/// ONNX `Transpose` with permutation `perm`.
pub fn transpose(a: &Arr, perm: &[usize]) -> Result<Arr> {
    let r = a.shape.len();
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
        bail!(Model, "Transpose permutation {perm:?} for rank {r}");
    }
    let shape: Vec<usize> = perm.iter().map(|&p| a.shape[p]).collect();
    let (ist, ost) = (strides(&a.shape), strides(&shape));
    let n = numel(&shape)?;
    let idx: Vec<usize> = (0..n).map(|k| (0..r).map(|d| (k / ost[d]) % shape[d] * ist[perm[d]]).sum()).collect();
    Ok(a.pick(&idx, shape))
}

/// ONNX `Slice` (starts, ends, axes, steps as given; clamped as the spec says).
pub fn slice(a: &Arr, starts: &[i64], ends: &[i64], axes: Option<&[i64]>, steps: Option<&[i64]>) -> Result<Arr> {
    let r = a.shape.len();
    if starts.len() != ends.len() {
        bail!(Model, "Slice starts and ends differ in length");
    }
    let mut ranges: Vec<(i64, i64, i64)> = a.shape.iter().map(|&d| (0, d as i64, 1)).collect();
    for k in 0..starts.len() {
        let ax = axis(axes.map_or(k as i64, |x| x.get(k).copied().unwrap_or(k as i64)), r)?;
        let step = steps.and_then(|s| s.get(k).copied()).unwrap_or(1);
        if step == 0 {
            bail!(Model, "Slice step 0");
        }
        let d = a.shape[ax] as i64;
        let fix = |v: i64, lo: i64, hi: i64| {
            let v = if v < 0 { v.saturating_add(d) } else { v };
            v.clamp(lo, hi)
        };
        let (s, e) = if step > 0 {
            (fix(starts[k], 0, d), fix(ends[k], 0, d))
        } else {
            (fix(starts[k], 0, d - 1), fix(ends[k], -1, d - 1))
        };
        ranges[ax] = (s, e, step);
    }
    let picks: Vec<Vec<usize>> = ranges
        .iter()
        .map(|&(s, e, st)| {
            let mut v = Vec::new();
            let mut i = s;
            while (st > 0 && i < e) || (st < 0 && i > e) {
                v.push(i as usize);
                i += st;
            }
            v
        })
        .collect();
    let shape: Vec<usize> = picks.iter().map(Vec::len).collect();
    let n = numel(&shape)?;
    let (ist, ost) = (strides(&a.shape), strides(&shape));
    let idx: Vec<usize> = (0..n).map(|k| (0..r).map(|d| picks[d][(k / ost[d]) % shape[d]] * ist[d]).sum()).collect();
    Ok(a.pick(&idx, shape))
}

/// ONNX `Expand` to `shape` (numpy broadcast of both).
pub fn expand(a: &Arr, shape: &[i64]) -> Result<Arr> {
    let target = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| crate::err!(Model, "Expand to {shape:?}")))
        .collect::<Result<Vec<_>>>()?;
    let out = broadcast_shape(&a.shape, &target)?;
    let idx = broadcast_index(&a.shape, &out)?;
    Ok(a.pick(&idx, out))
}

/// ONNX `Where`.
pub fn where_(c: &Arr, x: &Arr, y: &Arr) -> Result<Arr> {
    let shape = broadcast_shape(&broadcast_shape(&c.shape, &x.shape)?, &y.shape)?;
    let (ic, ix, iy) =
        (broadcast_index(&c.shape, &shape)?, broadcast_index(&x.shape, &shape)?, broadcast_index(&y.shape, &shape)?);
    let cv = c.ints();
    if x.is_float() || y.is_float() {
        let (xv, yv) = (x.floats(), y.floats());
        Ok(Arr::f(shape, (0..ic.len()).map(|k| if cv[ic[k]] != 0 { xv[ix[k]] } else { yv[iy[k]] }).collect()))
    } else {
        let (xv, yv) = (x.ints(), y.ints());
        Ok(Arr::i(shape, (0..ic.len()).map(|k| if cv[ic[k]] != 0 { xv[ix[k]] } else { yv[iy[k]] }).collect()))
    }
}

/// ONNX `Range`.
pub fn range(start: &Arr, limit: &Arr, delta: &Arr) -> Result<Arr> {
    if start.is_float() || limit.is_float() || delta.is_float() {
        let (s, l, d) = (start.floats()[0], limit.floats()[0], delta.floats()[0]);
        let n = ((l - s) / d).ceil();
        if !(n.is_finite()) || d == 0.0 {
            bail!(Model, "Range({s}, {l}, {d})");
        }
        let n = (n.max(0.0) as usize).min(MAX_ELEMENTS + 1);
        numel(&[n])?;
        return Ok(Arr::f(vec![n], (0..n).map(|k| s + k as f32 * d).collect()));
    }
    let (s, l, d) = (start.ints()[0], limit.ints()[0], delta.ints()[0]);
    if d == 0 {
        bail!(Model, "Range with delta 0");
    }
    let span = (l as i128 - s as i128 + d as i128 - d.signum() as i128) / d as i128;
    let n = usize::try_from(span.max(0)).unwrap_or(usize::MAX).min(MAX_ELEMENTS + 1);
    numel(&[n])?;
    Ok(Arr::i(vec![n], (0..n as i64).map(|k| s + k * d).collect()))
}

/// ONNX `ReduceSum`/`ReduceMean`/`ReduceMax`/`ReduceMin` over `axes` (all when empty), in f32.
pub fn reduce(op: &str, a: &Arr, axes: &[i64], keepdims: bool) -> Result<Arr> {
    let r = a.shape.len();
    let mut ax: Vec<usize> = axes.iter().map(|&x| axis(x, r)).collect::<Result<_>>()?;
    if ax.is_empty() {
        ax = (0..r).collect();
    }
    let kept: Vec<usize> = (0..r).map(|d| if ax.contains(&d) { 1 } else { a.shape[d] }).collect();
    let n = numel(&kept)?;
    let (ist, kst) = (strides(&a.shape), strides(&kept));
    let x = a.floats();
    let init = match op {
        "ReduceMax" => f32::NEG_INFINITY,
        "ReduceMin" => f32::INFINITY,
        _ => 0.0,
    };
    let mut out = vec![init; n];
    for (k, v) in x.iter().enumerate() {
        let o: usize = (0..r).map(|d| if ax.contains(&d) { 0 } else { (k / ist[d]) % a.shape[d] * kst[d] }).sum();
        out[o] = match op {
            "ReduceMax" => out[o].max(*v),
            "ReduceMin" => out[o].min(*v),
            _ => out[o] + v,
        };
    }
    if op == "ReduceMean" {
        let count = (x.len() / n.max(1)).max(1) as f32;
        out.iter_mut().for_each(|v| *v /= count);
    }
    let shape = if keepdims { kept } else { (0..r).filter(|d| !ax.contains(d)).map(|d| a.shape[d]).collect() };
    Ok(Arr::f(shape, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_gather_concat_reshape_slice() {
        let a = Arr::f(vec![2, 1], vec![1.0, 2.0]);
        let b = Arr::f(vec![3], vec![10.0, 20.0, 30.0]);
        let s = binary("Add", &a, &b).unwrap();
        assert_eq!(s, Arr::f(vec![2, 3], vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0]));
        assert!(binary("Add", &Arr::f(vec![2], vec![0.0; 2]), &b).is_err());
        let t = Arr::f(vec![3, 2], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(gather(&t, &Arr::i(vec![1], vec![-1]), 0).unwrap(), Arr::f(vec![1, 2], vec![4.0, 5.0]));
        assert!(gather(&t, &Arr::i(vec![1], vec![3]), 0).is_err());
        let c = concat(&[&Arr::i(vec![1], vec![1]), &Arr::i(vec![2], vec![-1, 4])], 0).unwrap();
        assert_eq!(c, Arr::i(vec![3], vec![1, -1, 4]));
        assert_eq!(reshape_target(&[1, 8, 2, 2], &[0, -1, 1, 1], false).unwrap(), vec![1, 32, 1, 1]);
        assert!(reshape_target(&[3], &[2, -1], false).is_err());
        assert_eq!(slice(&t, &[1], &[i64::MAX], Some(&[1]), None).unwrap(), Arr::f(vec![3, 1], vec![1.0, 3.0, 5.0]));
        assert_eq!(transpose(&t, &[1, 0]).unwrap().floats(), vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
        assert_eq!(
            range(&Arr::i(vec![], vec![0]), &Arr::i(vec![], vec![5]), &Arr::i(vec![], vec![2])).unwrap().ints(),
            vec![0, 2, 4]
        );
        assert!(binary("Div", &Arr::i(vec![], vec![1]), &Arr::i(vec![], vec![0])).is_err());
        assert_eq!(reduce("ReduceSum", &t, &[-1], false).unwrap(), Arr::f(vec![3], vec![1.0, 5.0, 9.0]));
        assert_eq!(reduce("ReduceMean", &t, &[0], true).unwrap(), Arr::f(vec![1, 2], vec![2.0, 3.0]));
    }
}
