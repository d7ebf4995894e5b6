//! Lowering an ONNX graph into the program: constant folding and static shapes at convert time, the timestep's
//! sub-graph folded into a table, fusion where it pays, and one program op (or none) per remaining node.
//!
//! Every tensor of the graph is one of three things:
//! - a **constant** (initializers, `Constant`, and everything computed from constants alone, shape arithmetic
//!   included, since shapes are static): folded here by the reference evaluator of [`super::arr`];
//! - **timestep-only**: computed from the timestep and constants without a weight-bearing op (the sinusoidal
//!   embedding's `Mul/Sin/Cos/Exp/Concat` chain, an `nn.Embedding` lookup). Where such a tensor meets the rest of
//!   the network it is evaluated for every training timestep into a `[T, n]` table that `TimestepTable` indexes;
//! - a **value** of the program, with its ONNX shape (batch 1) and an arena value `(c, h, w)` of as many elements.
//!
//! Patterns fused: `x·sigmoid(x)` → `Silu`. Reshapes that keep the `(c, h, w)` view cost nothing; others copy.

use std::collections::{HashMap, HashSet};

use ddpm_core::ops::{BinaryFn, UnaryFn};
use ddpm_core::program::Op;

use super::arr::{self, Arr};
use super::read::{Attr, Node, OnnxModel};
use crate::error::{Context, Result};
use crate::graph::{Graph, SCRATCH};
use crate::{bail, err};

/// The op types the lowering accepts (constant-only nodes of other kinds fold if the evaluator knows them).
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "DepthToSpace",
    "Div",
    "Dropout",
    "Einsum",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GroupNormalization",
    "HardSigmoid",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "Log",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mod",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Sin",
    "Slice",
    "Softmax",
    "Softplus",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Upsample",
    "Where",
];

/// Lowering options.
pub struct Options {
    /// Timesteps the tables cover (the schedule's `num_train_timesteps`).
    pub timesteps: usize,
    /// The timestep fed to the graph is `t · timestep_scale` (for graphs that expect e.g. `t / T`).
    pub timestep_scale: f32,
    /// `(height, width)` for graphs whose sample size is symbolic.
    pub sample_size: Option<(usize, usize)>,
    /// Classes of the class-label input, when no embedding table it indexes says.
    pub num_classes: Option<usize>,
}

/// Rows of the first constant table the input `name` indexes with `Gather` (through casts and reshapes).
fn embedding_rows(m: &OnnxModel, name: &str) -> Option<usize> {
    let mut derived: HashSet<&str> = HashSet::from([name]);
    for n in &m.nodes {
        let from = |k: usize| n.inputs.get(k).is_some_and(|x| derived.contains(x.as_str()));
        match n.op.as_str() {
            "Cast" | "Reshape" | "Squeeze" | "Unsqueeze" | "Identity" | "Flatten" if from(0) => {
                derived.extend(n.outputs.iter().map(String::as_str));
            }
            "Gather" if from(1) => {
                let data = m.initializers.get(n.inputs.first()?)?;
                let ax = arr::axis(attr_i(n, "axis", 0).ok()?, data.shape.len()).ok()?;
                return Some(data.shape[ax]);
            }
            _ => {}
        }
    }
    None
}

/// A lowered graph: the program, its input and output values and the sample geometry.
pub struct Lowered {
    /// The program.
    pub graph: Graph,
    /// The sample's value.
    pub input: u32,
    /// The network output's value.
    pub output: u32,
    /// `(channels, height, width)` of the sample.
    pub sample: (usize, usize, usize),
    /// Channels of the output.
    pub out_channels: usize,
    /// Classes of the class-label input (0: unconditional).
    pub num_classes: usize,
    /// What the lowering inferred or assumed.
    pub notes: Vec<String>,
}

/// The driving input of a table for row `r` (timestep or class `r`).
type RowInput = Box<dyn Fn(usize) -> Result<Arr>>;

/// [`Sym::Cond`]: depends on the timestep.
const TIME: u8 = 1;
/// [`Sym::Cond`]: depends on the class label.
const CLASS: u8 = 2;

#[derive(Debug, Clone)]
enum Sym {
    Const(Arr),
    /// Computed from constants and the timestep only ([`TIME`]) or the class label only ([`CLASS`]): evaluated by
    /// the node that produces it, for each timestep or class, where it meets the program.
    Cond(u8),
    Val {
        v: u32,
        shape: Vec<usize>,
    },
}

/// The arena view `(c, h, w)` of an ONNX shape with batch 1: `[1, C, H, W…]` → `(C, H, W·…)`, `[1, A, B]` →
/// `(A, B, 1)`, `[1, F]` and `[F]` → `(F, 1, 1)`.
fn chw(shape: &[usize]) -> Result<(usize, usize, usize)> {
    let s = if shape.len() >= 2 && shape[0] == 1 { &shape[1..] } else { shape };
    let d = |i: usize| s.get(i).copied().unwrap_or(1);
    let rest: usize = s.iter().skip(2).product();
    arr::numel(shape)?;
    Ok((d(0), d(1), rest))
}

struct Lower<'m> {
    m: &'m OnnxModel,
    opts: &'m Options,
    g: Graph,
    syms: HashMap<String, Sym>,
    /// Tensor name → index of the node that makes it.
    maker: HashMap<&'m str, usize>,
    /// Materialised timestep-only tensors: value and shape.
    tables: HashMap<String, (u32, Vec<usize>)>,
    /// The timestep input: name, whether it is a float, its shape.
    t_input: Option<(String, bool, Vec<usize>)>,
    /// The class-label input: name, shape, number of classes.
    class_input: Option<(String, Vec<usize>, usize)>,
    /// `Sigmoid` nodes folded into the `Mul` that follows.
    fused: HashSet<usize>,
    /// `Mul` nodes that are a SiLU of their input.
    silu: HashMap<usize, String>,
    /// Elements of all the constants folding has made so far, and how many it may make (see
    /// [`arr::FOLD_ALLOWANCE`]).
    folded: usize,
    fold_budget: usize,
}

fn attr_i(n: &Node, k: &str, d: i64) -> Result<i64> {
    match n.attrs.get(k) {
        None => Ok(d),
        Some(Attr::Int(v)) => Ok(*v),
        Some(_) => bail!(Model, "node {} ({}): attribute {k} is not an integer", n.name, n.op),
    }
}

fn attr_f(n: &Node, k: &str, d: f32) -> Result<f32> {
    match n.attrs.get(k) {
        None => Ok(d),
        Some(Attr::Float(v)) => Ok(*v),
        Some(Attr::Int(v)) => Ok(*v as f32),
        Some(_) => bail!(Model, "node {} ({}): attribute {k} is not a float", n.name, n.op),
    }
}

/// A norm's `epsilon` attribute (default 1e-5), finite and not negative.
fn norm_eps(n: &Node) -> Result<f32> {
    let eps = attr_f(n, "epsilon", 1e-5)?;
    if !eps.is_finite() || eps < 0.0 {
        bail!(Model, "node {} ({}): attribute epsilon={eps} (a finite number >= 0 is needed)", n.name, n.op);
    }
    Ok(eps)
}

fn attr_ints(n: &Node, k: &str) -> Result<Option<Vec<i64>>> {
    match n.attrs.get(k) {
        None => Ok(None),
        Some(Attr::Ints(v)) => Ok(Some(v.clone())),
        Some(Attr::Int(v)) => Ok(Some(vec![*v])),
        Some(_) => bail!(Model, "node {} ({}): attribute {k} is not a list of integers", n.name, n.op),
    }
}

fn attr_s(n: &Node, k: &str, d: &str) -> Result<String> {
    match n.attrs.get(k) {
        None => Ok(d.to_string()),
        Some(Attr::Str(v)) => Ok(v.clone()),
        Some(_) => bail!(Model, "node {} ({}): attribute {k} is not a string", n.name, n.op),
    }
}

/// A refusal naming the node, its op type and what is not supported.
macro_rules! refuse {
    ($n:expr, $($arg:tt)*) => {
        bail!(Model, "node {} ({}): {}", $n.name, $n.op, format!($($arg)*))
    };
}

mod tensor;

/// Ops whose weight operand keeps them in the program even when their input depends only on the timestep.
fn carries_weights(op: &str) -> bool {
    matches!(op, "Gemm" | "MatMul" | "Conv" | "ConvTranspose")
}

impl<'m> Lower<'m> {
    fn sym(&self, name: &str) -> Result<&Sym> {
        self.syms.get(name).ok_or_else(|| err!(Model, "tensor {name:?} is used before it is made"))
    }

    /// What input `k` of `n` is (an error naming the node where the node has no such input).
    fn input_sym(&self, n: &Node, k: usize) -> Result<&Sym> {
        let Some(name) = n.inputs.get(k).filter(|s| !s.is_empty()) else { refuse!(n, "input {k} is missing") };
        self.sym(name)
    }

    fn constant(&self, n: &Node, k: usize) -> Result<Option<&Arr>> {
        match n.inputs.get(k).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => match self.sym(name)? {
                Sym::Const(a) => Ok(Some(a)),
                _ => refuse!(n, "input {k} ({name}) must be a constant"),
            },
        }
    }

    fn new_value(&mut self, shape: &[usize]) -> Result<u32> {
        let (c, h, w) = chw(shape)?;
        Ok(self.g.value(c, h, w))
    }

    /// The program value of input `k` of `n` (materialising a timestep-only tensor as a table).
    fn val(&mut self, n: &Node, k: usize) -> Result<(u32, Vec<usize>)> {
        let Some(name) = n.inputs.get(k).filter(|s| !s.is_empty()) else { refuse!(n, "input {k} is missing") };
        self.val_of(name).with_context(|| format!("node {} ({})", n.name, n.op))
    }

    fn val_of(&mut self, name: &str) -> Result<(u32, Vec<usize>)> {
        match self.sym(name)?.clone() {
            Sym::Val { v, shape } => Ok((v, shape)),
            Sym::Cond(_) => self.table(name),
            Sym::Const(_) => bail!(Model, "constant {name} used where the program needs a computed value"),
        }
    }

    /// Evaluates the timestep-only (class-only) tensor `name` for every timestep (class) into a table, once.
    fn table(&mut self, name: &str) -> Result<(u32, Vec<usize>)> {
        if let Some(t) = self.tables.get(name) {
            return Ok(t.clone());
        }
        let Some(Sym::Cond(mask)) = self.syms.get(name).cloned() else {
            bail!(Model, "tensor {name} is not computed from the timestep or class alone");
        };
        let (driver, rows, make): (String, usize, RowInput) = if mask == CLASS {
            let Some((c_name, c_shape, k)) = self.class_input.clone() else {
                bail!(Model, "tensor {name} depends on a class label the graph does not take");
            };
            let n = arr::numel(&c_shape)?;
            (c_name, k, Box::new(move |c| Ok(Arr::i(c_shape.clone(), vec![c as i64; n]))))
        } else {
            let Some((t_name, t_float, t_shape)) = self.t_input.clone() else {
                bail!(Model, "tensor {name} depends on a timestep the graph does not take");
            };
            let n = arr::numel(&t_shape)?;
            let scale = self.opts.timestep_scale;
            (
                t_name,
                self.opts.timesteps,
                Box::new(move |t| {
                    Ok(if t_float {
                        Arr::f(t_shape.clone(), vec![t as f32 * scale; n])
                    } else {
                        Arr::i(t_shape.clone(), vec![t as i64; n])
                    })
                }),
            )
        };
        // The nodes `name` depends on, in file (topological) order.
        let mut cone = Vec::new();
        let mut stack = vec![name.to_string()];
        let mut seen = HashSet::new();
        while let Some(s) = stack.pop() {
            if s == driver || !seen.insert(s.clone()) || !matches!(self.syms.get(&s), Some(Sym::Cond(m)) if *m == mask)
            {
                continue;
            }
            let Some(&i) = self.maker.get(s.as_str()) else { bail!(Model, "no node makes {s}") };
            cone.push(i);
            stack.extend(self.m.nodes[i].inputs.iter().filter(|x| !x.is_empty()).cloned());
        }
        cone.sort_unstable();
        cone.dedup();
        let what = if mask == CLASS { "class" } else { "timestep" };
        let mut data: Vec<f32> = Vec::new();
        let mut shape = None;
        for r in 0..rows {
            let d_arr = make(r)?;
            let mut env: HashMap<&str, Arr> = HashMap::new();
            for &i in &cone {
                let node = &self.m.nodes[i];
                let outs = {
                    let ins: Vec<Option<&Arr>> = node
                        .inputs
                        .iter()
                        .map(|x| {
                            if x.is_empty() {
                                None
                            } else if *x == driver {
                                Some(&d_arr)
                            } else if let Some(a) = env.get(x.as_str()) {
                                Some(a)
                            } else if let Some(Sym::Const(a)) = self.syms.get(x) {
                                Some(a)
                            } else {
                                None
                            }
                        })
                        .collect();
                    fold(node, &ins).with_context(|| format!("{what} sub-graph, node {} ({})", node.name, node.op))?
                };
                for (o, a) in node.outputs.iter().zip(outs) {
                    env.insert(o.as_str(), a);
                }
            }
            let a = env.remove(name).ok_or_else(|| err!(Model, "the {what} sub-graph does not make {name}"))?;
            if shape.as_ref().is_some_and(|s| *s != a.shape) {
                bail!(Model, "{name} changes shape with the {what}");
            }
            if data.len() + a.len() > arr::MAX_ELEMENTS {
                bail!(Model, "the {what} table of {name} is too large");
            }
            data.extend(a.floats());
            shape = Some(a.shape);
        }
        let shape = shape.ok_or_else(|| err!(Model, "no {what}s to tabulate"))?;
        let n = arr::numel(&shape)?;
        let tensor = self.g.tensor(&format!("{name}.{what}_table"), vec![rows, n], data);
        let v = self.new_value(&shape)?;
        self.g.push(if mask == CLASS {
            Op::ClassTable { out: v, table: tensor }
        } else {
            Op::TimestepTable { out: v, table: tensor }
        });
        self.tables.insert(name.to_string(), (v, shape.clone()));
        Ok((v, shape))
    }

    fn define(&mut self, n: &Node, v: u32, shape: Vec<usize>) {
        if let Some(o) = n.outputs.first() {
            self.syms.insert(o.clone(), Sym::Val { v, shape });
        }
    }

    /// A value with `shape` holding `v`'s elements: `v` itself when the arena view agrees, else a copy.
    fn reshaped(&mut self, v: u32, from: &[usize], to: Vec<usize>) -> Result<(u32, Vec<usize>)> {
        if arr::numel(from)? != arr::numel(&to)? {
            bail!(Model, "reshape of {from:?} to {to:?}");
        }
        if chw(from)? == chw(&to)? {
            return Ok((v, to));
        }
        let o = self.new_value(&to)?;
        self.g.push(Op::Affine { out: o, x: v, mul: 1.0, add: 0.0 });
        Ok((o, to))
    }

    fn lower(&mut self, i: usize, n: &'m Node) -> Result<()> {
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            refuse!(n, "op domain {} is not supported", n.domain);
        }
        if n.op == "Constant" {
            let a = match (n.attrs.get("value"), n.attrs.get("value_float"), n.attrs.get("value_int")) {
                (Some(Attr::Tensor(a)), _, _) => a.clone(),
                (_, Some(Attr::Float(f)), _) => Arr::f(vec![], vec![*f]),
                (_, _, Some(Attr::Int(v))) => Arr::i(vec![], vec![*v]),
                _ => match (n.attrs.get("value_floats"), n.attrs.get("value_ints")) {
                    (Some(Attr::Floats(f)), _) => Arr::f(vec![f.len()], f.clone()),
                    (_, Some(Attr::Ints(v))) => Arr::i(vec![v.len()], v.clone()),
                    _ => refuse!(n, "a Constant without a supported value attribute"),
                },
            };
            self.out_const(n, vec![a])?;
            return Ok(());
        }
        let ins: Vec<Option<&Sym>> = n
            .inputs
            .iter()
            .map(|x| if x.is_empty() { Ok(None) } else { self.sym(x).map(Some) })
            .collect::<Result<_>>()?;
        let all_const = ins.iter().all(|s| matches!(s, None | Some(Sym::Const(_))));
        let cond = ins.iter().fold(0u8, |m, s| if let Some(Sym::Cond(b)) = s { m | b } else { m });
        let any_val = ins.iter().any(|s| matches!(s, Some(Sym::Val { .. })));
        if all_const {
            let consts: Vec<Option<&Arr>> =
                ins.iter().map(|s| if let Some(Sym::Const(a)) = s { Some(a) } else { None }).collect();
            let outs = fold(n, &consts).with_context(|| format!("node {} ({}), folding constants", n.name, n.op))?;
            self.out_const(n, outs)?;
            return Ok(());
        }
        // Shapes are static: `Shape` of a value is a constant.
        if n.op == "Shape" && any_val {
            let (_, shape) = self.val(n, 0)?;
            // `fold` computes `Shape` (with its start/end) of a tensor of this shape; no element is read.
            let probe = Arr { shape, data: arr::Data::F(Vec::new()) };
            let dims = fold(n, &[Some(&probe)])?;
            self.out_const(n, dims)?;
            return Ok(());
        }
        if n.op == "Size" && any_val {
            let (_, shape) = self.val(n, 0)?;
            self.out_const(n, vec![Arr::i(vec![], vec![arr::numel(&shape)? as i64])])?;
            return Ok(());
        }
        // A node of the timestep alone or the class alone is tabulated later; one that mixes them runs in the
        // program on both tables.
        if (cond == TIME || cond == CLASS) && !any_val && !carries_weights(&n.op) {
            for o in &n.outputs {
                self.syms.insert(o.clone(), Sym::Cond(cond));
            }
            return Ok(());
        }
        self.lower_op(i, n)
    }

    fn out_const(&mut self, n: &Node, outs: Vec<Arr>) -> Result<()> {
        for (o, a) in n.outputs.iter().zip(outs) {
            // One huge folded array is refused by `arr::numel`; many large ones would still take long.
            self.folded = self.folded.saturating_add(a.len());
            if self.folded > self.fold_budget {
                refuse!(n, "constant folding makes more than {} elements in all", self.fold_budget);
            }
            self.syms.insert(o.clone(), Sym::Const(a));
        }
        Ok(())
    }

    fn lower_op(&mut self, i: usize, n: &'m Node) -> Result<()> {
        let op = n.op.as_str();
        match op {
            "Identity" | "Dropout" => {
                let (v, s) = self.val(n, 0)?;
                self.define(n, v, s);
            }
            "Cast" => {
                if attr_i(n, "to", 1)? != 1 {
                    refuse!(n, "a computed value cast to type {} (only float32 runs)", attr_i(n, "to", 1)?);
                }
                let (v, s) = self.val(n, 0)?;
                self.define(n, v, s);
            }
            "Reshape" => {
                let (v, s) = self.val(n, 0)?;
                let Some(spec) = self.constant(n, 1)? else { refuse!(n, "no target shape") };
                let to = arr::reshape_target(&s, &spec.ints(), attr_i(n, "allowzero", 0)? != 0)?;
                let (o, to) = self.reshaped(v, &s, to)?;
                self.define(n, o, to);
            }
            "Flatten" => {
                let (v, s) = self.val(n, 0)?;
                let ax = arr::axis(attr_i(n, "axis", 1)?, s.len() + 1)?;
                let to = vec![s[..ax].iter().product(), s[ax..].iter().product()];
                let (o, to) = self.reshaped(v, &s, to)?;
                self.define(n, o, to);
            }
            "Squeeze" | "Unsqueeze" => {
                let (v, s) = self.val(n, 0)?;
                let axes = match self.constant(n, 1)? {
                    Some(a) => Some(a.ints()),
                    None => attr_ints(n, "axes")?,
                };
                let to = squeeze_shape(&s, axes.as_deref(), op == "Unsqueeze")
                    .with_context(|| format!("node {}", n.name))?;
                let (o, to) = self.reshaped(v, &s, to)?;
                self.define(n, o, to);
            }
            "Transpose" => self.transpose(n)?,
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Min" | "Max" => {
                if op == "Mul" {
                    if let Some(x) = self.silu.get(&i).cloned() {
                        let (v, s) = self.val_of(&x)?;
                        let o = self.new_value(&s)?;
                        self.g.push(Op::Silu { out: o, x: v });
                        self.define(n, o, s);
                        return Ok(());
                    }
                }
                if n.inputs.len() != 2 {
                    refuse!(n, "{} inputs (only two are supported)", n.inputs.len());
                }
                let f = match op {
                    "Add" => BinaryFn::Add,
                    "Sub" => BinaryFn::Sub,
                    "Mul" => BinaryFn::Mul,
                    "Div" => BinaryFn::Div,
                    "Pow" => BinaryFn::Pow,
                    "Min" => BinaryFn::Min,
                    _ => BinaryFn::Max,
                };
                self.binary(n, f)?;
            }
            // Its only consumer, a Mul, computes the SiLU; the placeholder stands for the input until then.
            "Sigmoid" if self.fused.contains(&i) => {
                let (v, s) = self.val(n, 0)?;
                self.define(n, v, s);
            }
            "Relu" | "LeakyRelu" | "Sigmoid" | "Tanh" | "Exp" | "Log" | "Sqrt" | "Abs" | "Neg" | "Sin" | "Cos"
            | "Erf" | "HardSigmoid" | "Reciprocal" | "Softplus" | "Gelu" | "Clip" => {
                let (f, a, b) = match op {
                    "Relu" => (UnaryFn::Relu, 0.0, 0.0),
                    "LeakyRelu" => (UnaryFn::LeakyRelu, attr_f(n, "alpha", 0.01)?, 0.0),
                    "Sigmoid" => (UnaryFn::Sigmoid, 0.0, 0.0),
                    "Tanh" => (UnaryFn::Tanh, 0.0, 0.0),
                    "Exp" => (UnaryFn::Exp, 0.0, 0.0),
                    "Log" => (UnaryFn::Log, 0.0, 0.0),
                    "Sqrt" => (UnaryFn::Sqrt, 0.0, 0.0),
                    "Abs" => (UnaryFn::Abs, 0.0, 0.0),
                    "Neg" => (UnaryFn::Neg, 0.0, 0.0),
                    "Sin" => (UnaryFn::Sin, 0.0, 0.0),
                    "Cos" => (UnaryFn::Cos, 0.0, 0.0),
                    "Erf" => (UnaryFn::Erf, 0.0, 0.0),
                    "HardSigmoid" => (UnaryFn::HardSigmoid, attr_f(n, "alpha", 0.2)?, attr_f(n, "beta", 0.5)?),
                    "Reciprocal" => (UnaryFn::Reciprocal, 0.0, 0.0),
                    "Softplus" => (UnaryFn::Softplus, 0.0, 0.0),
                    "Gelu" => match attr_s(n, "approximate", "none")?.as_str() {
                        "none" => (UnaryFn::Gelu, 0.0, 0.0),
                        "tanh" => (UnaryFn::GeluTanh, 0.0, 0.0),
                        other => refuse!(n, "attribute approximate={other:?} is not supported"),
                    },
                    _ => {
                        let bound = |k: usize, attr: &str, d: f32| -> Result<f32> {
                            Ok(match self.constant(n, k)? {
                                Some(a) => a.floats().first().copied().unwrap_or(d),
                                None => attr_f(n, attr, d)?,
                            })
                        };
                        let (lo, hi) = (bound(1, "min", f32::MIN)?, bound(2, "max", f32::MAX)?);
                        (UnaryFn::Clip, lo.max(f32::MIN), hi.min(f32::MAX))
                    }
                };
                let (v, s) = self.val(n, 0)?;
                let o = self.new_value(&s)?;
                self.g.push(Op::Unary { out: o, x: v, kind: f as u32, a, b });
                self.define(n, o, s);
            }
            "Conv" => self.conv(n)?,
            "ConvTranspose" => self.conv_transpose(n)?,
            "MatMul" if !matches!(self.input_sym(n, 1)?, Sym::Const(_)) => self.matmul(n)?,
            "Gemm" | "MatMul" => self.linear(n)?,
            "Einsum" => self.einsum(n)?,
            "Softmax" => self.softmax(n)?,
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceL2" | "ReduceSumSquare" => {
                self.reduce(n)?
            }
            "Split" => self.split(n)?,
            "Slice" => self.slice(n)?,
            "Gather" => self.gather(n)?,
            "Expand" => self.expand(n)?,
            "InstanceNormalization" | "GroupNormalization" => self.group_norm(n)?,
            "BatchNormalization" => self.batch_norm(n)?,
            "LayerNormalization" => {
                let (v, s) = self.val(n, 0)?;
                let ax = arr::axis(attr_i(n, "axis", -1)?, s.len())?;
                let inner = &s[ax..];
                let count = arr::numel(inner)?;
                let Some(scale) = self.constant(n, 1)? else { refuse!(n, "no scale") };
                let gamma = broadcast_to(scale, inner).with_context(|| format!("node {} scale", n.name))?;
                let beta = match self.constant(n, 2)? {
                    Some(b) => broadcast_to(b, inner).with_context(|| format!("node {} bias", n.name))?,
                    None => vec![0.0; count],
                };
                if n.outputs.iter().skip(1).any(|o| !o.is_empty()) {
                    refuse!(n, "the mean and inverse standard deviation outputs are not supported");
                }
                let eps = norm_eps(n)?;
                let gt = self.g.tensor(&format!("{}.scale", n.name), vec![count], gamma);
                let bt = self.g.tensor(&format!("{}.bias", n.name), vec![count], beta);
                let o = self.new_value(&s)?;
                self.g.push(Op::LayerNorm { out: o, x: v, gamma: gt, beta: bt, eps });
                self.define(n, o, s);
            }
            "Concat" => self.concat(n)?,
            "Resize" | "Upsample" => self.resize(n)?,
            "MaxPool" | "AveragePool" => self.pool(n)?,
            "GlobalAveragePool" | "GlobalMaxPool" => self.global_pool(n)?,
            "Pad" => self.pad(n)?,
            "DepthToSpace" | "SpaceToDepth" => self.depth_space(n)?,
            _ if SUPPORTED.contains(&op) => {
                refuse!(n, "this op is supported on constants and timestep-only inputs, not on a computed value")
            }
            _ => refuse!(n, "op type {op} is not supported (supported: {})", SUPPORTED.join(", ")),
        }
        Ok(())
    }

    fn binary(&mut self, n: &Node, f: BinaryFn) -> Result<()> {
        let (ka, kb) = (self.input_sym(n, 0)?.clone(), self.input_sym(n, 1)?.clone());
        match (ka, kb) {
            (Sym::Const(c), _) => self.binary_const(n, 1, c, f, true),
            (_, Sym::Const(c)) => self.binary_const(n, 0, c, f, false),
            _ => {
                let ((va, sa), (vb, sb)) = (self.val(n, 0)?, self.val(n, 1)?);
                let out = arr::broadcast_shape(&sa, &sb)?;
                let (dims, bcast) = collapse(&out, &sa, &sb).with_context(|| format!("node {} ({})", n.name, n.op))?;
                let o = self.new_value(&out)?;
                self.g.push(Op::Binary { out: o, a: va, b: vb, dims, bcast, kind: f as u32 });
                self.define(n, o, out);
                Ok(())
            }
        }
    }

    /// `x ∘ c` (or `c ∘ x` when `swap`), with the value at input `k`.
    fn binary_const(&mut self, n: &Node, k: usize, c: Arr, f: BinaryFn, swap: bool) -> Result<()> {
        let (v, s) = self.val(n, k)?;
        let out = arr::broadcast_shape(&s, &c.shape)?;
        let cf = c.floats();
        if cf.len() == 1 && out == s {
            let x = cf[0];
            let affine = match (f, swap) {
                (BinaryFn::Add, _) => Some((1.0, x)),
                (BinaryFn::Sub, false) => Some((1.0, -x)),
                (BinaryFn::Sub, true) => Some((-1.0, x)),
                (BinaryFn::Mul, _) => Some((x, 0.0)),
                _ => None,
            };
            if let Some((mul, add)) = affine.filter(|(m, a)| m.is_finite() && a.is_finite()) {
                let o = self.new_value(&s)?;
                self.g.push(Op::Affine { out: o, x: v, mul, add });
                self.define(n, o, s);
                return Ok(());
            }
        }
        let (dims, bcast) = collapse(&out, &s, &c.shape).with_context(|| format!("node {} ({})", n.name, n.op))?;
        let t = self.g.tensor(&format!("{}.constant", n.name), vec![cf.len()], cf);
        let o = self.new_value(&out)?;
        self.g.push(Op::BinaryConst { out: o, a: v, t, dims, bcast, kind: f as u32, swap });
        self.define(n, o, out);
        Ok(())
    }

    /// Stride, `[top, left, bottom, right]` padding and kernel size of a Conv/ConvTranspose, with the checks the
    /// program's convolutions need.
    /// `stored`: the kernel's stored size when the caller has expanded groups and dilation into a dense kernel
    /// of `kh × kw` (Conv); `None` refuses both (ConvTranspose).
    fn conv_attrs(
        &self,
        n: &Node,
        (kh, kw): (usize, usize),
        (h, w): (usize, usize),
        stored: Option<(usize, usize)>,
    ) -> Result<(usize, [usize; 4])> {
        if stored.is_none() && attr_i(n, "group", 1)? != 1 {
            refuse!(n, "attribute group={} is not supported (only 1)", attr_i(n, "group", 1)?);
        }
        if let Some(d) = attr_ints(n, "dilations")? {
            if stored.is_none() && d.iter().any(|&x| x != 1) {
                refuse!(n, "attribute dilations={d:?} is not supported (only 1)");
            }
        }
        if let Some(k) = attr_ints(n, "kernel_shape")? {
            let (sh, sw) = stored.unwrap_or((kh, kw));
            if k != [sh as i64, sw as i64] {
                refuse!(n, "attribute kernel_shape={k:?} does not match the weights ({sh}x{sw})");
            }
        }
        let st = attr_ints(n, "strides")?.unwrap_or(vec![1, 1]);
        if st.len() != 2 || st[0] != st[1] || st[0] < 1 || st[0] > 64 {
            refuse!(n, "attribute strides={st:?} is not supported (equal strides 1..64)");
        }
        let s = st[0] as usize;
        let auto = attr_s(n, "auto_pad", "NOTSET")?;
        let pads = match auto.as_str() {
            "NOTSET" => {
                let p = attr_ints(n, "pads")?.unwrap_or(vec![0; 4]);
                if p.len() != 4 || p.iter().any(|&x| !(0..=4096).contains(&x)) {
                    refuse!(n, "attribute pads={p:?} is not supported");
                }
                [p[0], p[1], p[2], p[3]].map(|x| x as usize)
            }
            "VALID" => [0; 4],
            "SAME_UPPER" | "SAME_LOWER" if n.op == "Conv" => {
                let total = |i: usize, k: usize| (i.div_ceil(s) - 1) * s + k - i.min((i.div_ceil(s) - 1) * s + k);
                let (th, tw) = (total(h, kh), total(w, kw));
                if auto == "SAME_UPPER" {
                    [th / 2, tw / 2, th - th / 2, tw - tw / 2]
                } else {
                    [th - th / 2, tw - tw / 2, th / 2, tw / 2]
                }
            }
            other => refuse!(n, "attribute auto_pad={other} is not supported"),
        };
        Ok((s, pads))
    }

    /// The weight tensor of a Conv/ConvTranspose and its bias (input 2, or zeros), for `co` output channels.
    fn kernel_tensors(&mut self, n: &Node, w: &Arr, co: usize) -> Result<(u32, u32)> {
        let bias = match self.constant(n, 2)? {
            Some(b) if b.len() == co => b.floats(),
            Some(b) => refuse!(n, "bias of {} values for {co} channels", b.len()),
            None => vec![0.0; co],
        };
        let wt = self.g.tensor(&format!("{}.weight", n.name), w.shape.clone(), w.floats());
        let bt = self.g.tensor(&format!("{}.bias", n.name), vec![co], bias);
        Ok((wt, bt))
    }

    fn conv(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let Some(w) = self.constant(n, 1)? else { refuse!(n, "no weights") };
        let w = w.clone();
        if s.len() != 4 || w.shape.len() != 4 || s[0] != 1 {
            refuse!(n, "input {s:?} and weights {:?} are not a 2-D convolution of [1, C, H, W]", w.shape);
        }
        let groups = usize::try_from(attr_i(n, "group", 1)?).unwrap_or(0);
        let dil = attr_ints(n, "dilations")?.unwrap_or(vec![1, 1]);
        if groups == 0 || s[1] % groups != 0 || w.shape[0] % groups != 0 || w.shape[1] * groups != s[1] {
            refuse!(n, "attribute group={groups} does not fit input {s:?} and weights {:?}", w.shape);
        }
        if dil.len() != 2 || dil.iter().any(|&d| !(1..=64).contains(&d)) {
            refuse!(n, "attribute dilations={dil:?} is not supported (1..64 per axis)");
        }
        let stored = (w.shape[2], w.shape[3]);
        // Groups and dilation run as one dense convolution: a block-diagonal kernel with zero taps between the
        // dilated ones (the same sums; the zero products cost time, not accuracy).
        let w =
            if groups > 1 || dil != [1, 1] { dense_kernel(&w, groups, [dil[0] as usize, dil[1] as usize])? } else { w };
        let [co, _, kh, kw] = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
        let (st, pad) = self.conv_attrs(n, (kh, kw), (s[2], s[3]), Some(stored))?;
        if pad[0] >= kh || pad[2] >= kh || pad[1] >= kw || pad[3] >= kw {
            refuse!(n, "padding {pad:?} as wide as the {kh}x{kw} kernel is not supported");
        }
        let out_len = |i: usize, k: usize, a: usize, b: usize| (i + a + b).checked_sub(k).map(|x| x / st + 1);
        let (Some(ho), Some(wo)) = (out_len(s[2], kh, pad[0], pad[2]), out_len(s[3], kw, pad[1], pad[3])) else {
            refuse!(n, "the {kh}x{kw} kernel is larger than the padded {}x{} input", s[2], s[3]);
        };
        let (wt, bt) = self.kernel_tensors(n, &w, co)?;
        let shape = vec![1, co, ho, wo];
        let o = self.new_value(&shape)?;
        let pad = [pad[0], pad[1], pad[2], pad[3]].map(|p| p as u32);
        self.g.push(Op::Conv2d { out: o, x: v, w: wt, b: bt, stride: st as u32, pad, scratch: SCRATCH });
        self.define(n, o, shape);
        Ok(())
    }

    fn conv_transpose(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let Some(w) = self.constant(n, 1)? else { refuse!(n, "no weights") };
        let w = w.clone();
        if s.len() != 4 || w.shape.len() != 4 || s[0] != 1 || w.shape[0] != s[1] {
            refuse!(n, "input {s:?} and weights {:?} are not a 2-D transposed convolution of [1, C, H, W]", w.shape);
        }
        if attr_ints(n, "output_shape")?.is_some() {
            refuse!(n, "attribute output_shape is not supported (give pads and output_padding)");
        }
        let [co, kh, kw] = [w.shape[1], w.shape[2], w.shape[3]];
        let (st, pad) = self.conv_attrs(n, (kh, kw), (s[2], s[3]), None)?;
        let op = attr_ints(n, "output_padding")?.unwrap_or(vec![0, 0]);
        if op.len() != 2 || op.iter().any(|&x| x < 0 || x as usize >= st) {
            refuse!(n, "attribute output_padding={op:?} (each must be below the stride {st})");
        }
        if pad[0] >= kh || pad[1] >= kw {
            refuse!(n, "padding {pad:?} as wide as the {kh}x{kw} kernel is not supported");
        }
        let len = |i: usize, k: usize, o: i64, a: usize, b: usize| {
            i.checked_sub(1).and_then(|i| (i * st + k + o as usize).checked_sub(a + b)).filter(|&x| x > 0)
        };
        let (Some(ho), Some(wo)) = (len(s[2], kh, op[0], pad[0], pad[2]), len(s[3], kw, op[1], pad[1], pad[3])) else {
            refuse!(n, "padding {pad:?} leaves no output");
        };
        let (wt, bt) = self.kernel_tensors(n, &w, co)?;
        let shape = vec![1, co, ho, wo];
        let o = self.new_value(&shape)?;
        let pad = [pad[0] as u32, pad[1] as u32];
        self.g.push(Op::ConvTranspose2d { out: o, x: v, w: wt, b: bt, stride: st as u32, pad });
        self.define(n, o, shape);
        Ok(())
    }

    /// `Gemm` / `MatMul` of a row vector by constant weights: a `Linear` op.
    fn linear(&mut self, n: &Node) -> Result<()> {
        let (v, s) = self.val(n, 0)?;
        let Some(b) = self.constant(n, 1)? else { refuse!(n, "the second operand must be constant weights") };
        let b = b.clone();
        let gemm = n.op == "Gemm";
        if gemm && attr_i(n, "transA", 0)? != 0 {
            refuse!(n, "attribute transA=1 is not supported");
        }
        let trans_b = gemm && attr_i(n, "transB", 0)? != 0;
        let (alpha, beta) = if gemm { (attr_f(n, "alpha", 1.0)?, attr_f(n, "beta", 1.0)?) } else { (1.0, 1.0) };
        if b.shape.len() != 2 {
            refuse!(n, "weights of shape {:?} (a matrix is supported)", b.shape);
        }
        let (k, o) = if trans_b { (b.shape[1], b.shape[0]) } else { (b.shape[0], b.shape[1]) };
        let rows: usize = s[..s.len().saturating_sub(1)].iter().product();
        if s.last() != Some(&k) {
            refuse!(n, "input {s:?} by weights {:?}: the inner dimensions differ", b.shape);
        }
        let bf = b.floats();
        // The program's Linear takes w as [out, in].
        let w: Vec<f32> = if trans_b {
            bf.iter().map(|x| x * alpha).collect()
        } else {
            (0..o).flat_map(|j| (0..k).map(move |i| (i, j))).map(|(i, j)| bf[i * o + j] * alpha).collect()
        };
        let bias = match if gemm { self.constant(n, 2)? } else { None } {
            Some(c) => broadcast_to(c, &[o])
                .with_context(|| format!("node {} bias", n.name))?
                .iter()
                .map(|x| x * beta)
                .collect(),
            None => vec![0.0; o],
        };
        if rows != 1 {
            return self.linear_rows(n, v, &s, w, bias, k);
        }
        let wt = self.g.tensor(&format!("{}.weight", n.name), vec![o, k], w);
        let bt = self.g.tensor(&format!("{}.bias", n.name), vec![o], bias);
        let mut shape = s.clone();
        *shape.last_mut().unwrap_or(&mut 0) = o;
        let out = self.new_value(&shape)?;
        // Linear reads its input as a (k, 1, 1) vector; a vector of another view is copied to that view first.
        let x = if chw(&s)? == (k, 1, 1) { v } else { self.reshaped(v, &s, vec![k])?.0 };
        let out_vec = if chw(&shape)? == (o, 1, 1) { out } else { self.new_value(&[o])? };
        self.g.push(Op::Linear { out: out_vec, x, w: wt, b: bt });
        if out_vec != out {
            self.g.push(Op::Affine { out, x: out_vec, mul: 1.0, add: 0.0 });
        }
        self.define(n, out, shape);
        Ok(())
    }
}

/// A grouped and/or dilated kernel `[co, ci/groups, kh, kw]` as the dense `[co, ci, (kh−1)·dy + 1, (kw−1)·dx + 1]`
/// one that computes the same sums.
fn dense_kernel(w: &Arr, groups: usize, [dy, dx]: [usize; 2]) -> Result<Arr> {
    let [co, cg, kh, kw] = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
    let (eh, ew) = ((kh - 1) * dy + 1, (kw - 1) * dx + 1);
    let ci = cg * groups;
    let mut out = vec![0.0f32; arr::numel(&[co, ci, eh, ew])?];
    let f = w.floats();
    let per_group = co / groups;
    for o in 0..co {
        let g = o / per_group;
        for c in 0..cg {
            for y in 0..kh {
                for x in 0..kw {
                    out[((o * ci + g * cg + c) * eh + y * dy) * ew + x * dx] = f[((o * cg + c) * kh + y) * kw + x];
                }
            }
        }
    }
    Ok(Arr::f(vec![co, ci, eh, ew], out))
}

/// `c` numpy-broadcast to `shape`, as floats.
fn broadcast_to(c: &Arr, shape: &[usize]) -> Result<Vec<f32>> {
    let full = arr::broadcast_shape(&c.shape, shape)?;
    if full != shape {
        bail!(Model, "a parameter of shape {:?} does not broadcast to {shape:?}", c.shape);
    }
    Ok(arr::expand(c, &shape.iter().map(|&d| d as i64).collect::<Vec<_>>())?.floats())
}

/// `Squeeze`/`Unsqueeze` of `s` at `axes`.
fn squeeze_shape(s: &[usize], axes: Option<&[i64]>, unsqueeze: bool) -> Result<Vec<usize>> {
    if unsqueeze {
        let Some(axes) = axes else { bail!(Model, "Unsqueeze without axes") };
        let r = s.len() + axes.len();
        let mut ax: Vec<usize> = axes.iter().map(|&a| arr::axis(a, r)).collect::<Result<_>>()?;
        ax.sort_unstable();
        let mut out = Vec::with_capacity(r);
        let mut it = s.iter();
        for i in 0..r {
            if ax.binary_search(&i).is_ok() {
                out.push(1);
            } else {
                out.push(*it.next().ok_or_else(|| err!(Model, "Unsqueeze axes {axes:?} of {s:?}"))?);
            }
        }
        return Ok(out);
    }
    let ax: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&x| arr::axis(x, s.len())).collect::<Result<_>>()?,
        None => (0..s.len()).filter(|&i| s[i] == 1).collect(),
    };
    if ax.iter().any(|&a| s[a] != 1) {
        bail!(Model, "Squeeze of a dimension larger than 1 ({s:?}, axes {ax:?})");
    }
    Ok((0..s.len()).filter(|i| !ax.contains(i)).map(|i| s[i]).collect())
}

/// Collapses the broadcast of `a` and `b` to `out` into at most three dimensions, each spanned or broadcast by
/// each operand: `(dims, bits)` as `Binary` takes them.
fn collapse(out: &[usize], a: &[usize], b: &[usize]) -> Result<([u32; 3], u32)> {
    let r = out.len();
    let pad = |s: &[usize], i: usize| if i + s.len() >= r { s[i + s.len() - r] } else { 1 };
    let mut groups: Vec<(usize, bool, bool)> = Vec::new();
    for (i, &d) in out.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let (ab, bb) = (pad(a, i) == 1, pad(b, i) == 1);
        match groups.last_mut() {
            Some(g) if (g.1, g.2) == (ab, bb) => g.0 *= d,
            _ => groups.push((d, ab, bb)),
        }
    }
    if groups.len() > 3 {
        bail!(Model, "a broadcast of {a:?} and {b:?} to {out:?} is too irregular (more than 3 alternations)");
    }
    while groups.len() < 3 {
        groups.insert(0, (1, false, false));
    }
    let mut dims = [0u32; 3];
    let mut bits = 0u32;
    for (i, &(d, ab, bb)) in groups.iter().enumerate() {
        dims[i] = u32::try_from(d).map_err(|_| err!(Model, "dimension {d} too large"))?;
        bits |= (ab as u32) << i | (bb as u32) << (3 + i);
    }
    Ok((dims, bits))
}

/// Evaluates one node on constant (or per-timestep) inputs.
pub fn fold(n: &Node, ins: &[Option<&Arr>]) -> Result<Vec<Arr>> {
    let get =
        |k: usize| -> Result<&Arr> { ins.get(k).copied().flatten().ok_or_else(|| err!(Model, "input {k} is missing")) };
    let opt = |k: usize| ins.get(k).copied().flatten();
    let op = n.op.as_str();
    let one = |a: Arr| Ok(vec![a]);
    match op {
        "Identity" | "Dropout" => one(get(0)?.clone()),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Min" | "Max" | "Mod" | "Equal" | "Less" | "Greater"
        | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" => {
            if ins.len() != 2 {
                bail!(Model, "{op} of {} inputs", ins.len());
            }
            one(arr::binary(op, get(0)?, get(1)?)?)
        }
        "Neg" | "Abs" | "Sin" | "Cos" | "Exp" | "Log" | "Sqrt" | "Reciprocal" | "Floor" | "Ceil" | "Round"
        | "Sigmoid" | "Tanh" | "Relu" | "Erf" | "Not" => one(arr::unary(op, get(0)?)?),
        "Cast" => {
            let a = get(0)?;
            match attr_i(n, "to", 1)? {
                1 | 10 | 11 | 16 => one(Arr::f(a.shape.clone(), a.floats())),
                9 => one(Arr::i(a.shape.clone(), a.floats().iter().map(|&x| (x != 0.0) as i64).collect())),
                2..=7 | 12 | 13 => one(Arr::i(a.shape.clone(), a.ints())),
                t => bail!(Model, "Cast to type {t}"),
            }
        }
        "Shape" => {
            let s = &get(0)?.shape;
            let r = s.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clampi(attr_i(n, "start", 0)?);
            let end = clampi(attr_i(n, "end", r)?);
            let dims: Vec<i64> = s[start..end.max(start)].iter().map(|&d| d as i64).collect();
            one(Arr::i(vec![dims.len()], dims))
        }
        "Size" => one(Arr::i(vec![], vec![get(0)?.len() as i64])),
        "Gather" => {
            let a = get(0)?;
            let ax = arr::axis(attr_i(n, "axis", 0)?, a.shape.len())?;
            one(arr::gather(a, get(1)?, ax)?)
        }
        "Concat" => {
            let parts: Vec<&Arr> = (0..ins.len()).map(get).collect::<Result<_>>()?;
            one(arr::concat(&parts, attr_i(n, "axis", 0)?)?)
        }
        "Reshape" => {
            let a = get(0)?;
            let to = arr::reshape_target(&a.shape, &get(1)?.ints(), attr_i(n, "allowzero", 0)? != 0)?;
            one(Arr { shape: to, data: a.data.clone() })
        }
        "Flatten" => {
            let a = get(0)?;
            let ax = arr::axis(attr_i(n, "axis", 1)?, a.shape.len() + 1)?;
            one(Arr {
                shape: vec![a.shape[..ax].iter().product(), a.shape[ax..].iter().product()],
                data: a.data.clone(),
            })
        }
        "Squeeze" | "Unsqueeze" => {
            let a = get(0)?;
            let axes = match opt(1) {
                Some(x) => Some(x.ints()),
                None => attr_ints(n, "axes")?,
            };
            one(Arr { shape: squeeze_shape(&a.shape, axes.as_deref(), op == "Unsqueeze")?, data: a.data.clone() })
        }
        "Transpose" => {
            let a = get(0)?;
            let perm: Vec<usize> = match attr_ints(n, "perm")? {
                Some(p) => p.iter().map(|&x| usize::try_from(x).unwrap_or(usize::MAX)).collect(),
                None => (0..a.shape.len()).rev().collect(),
            };
            one(arr::transpose(a, &perm)?)
        }
        "Slice" => {
            let a = get(0)?;
            let (starts, ends) = (get(1)?.ints(), get(2)?.ints());
            let axes = opt(3).map(|x| x.ints());
            let steps = opt(4).map(|x| x.ints());
            one(arr::slice(a, &starts, &ends, axes.as_deref(), steps.as_deref())?)
        }
        "Expand" => one(arr::expand(get(0)?, &get(1)?.ints())?),
        "Split" => {
            let a = get(0)?;
            let ax = arr::axis(attr_i(n, "axis", 0)?, a.shape.len())?;
            let sizes = tensor::split_sizes(n, opt(1), a.shape[ax])?;
            let mut start = 0i64;
            let mut outs = Vec::with_capacity(sizes.len());
            for len in sizes {
                let end = start + len as i64;
                outs.push(arr::slice(a, &[start], &[end], Some(&[ax as i64]), None)?);
                start = end;
            }
            Ok(outs)
        }
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" => {
            // Axes are an attribute before opset 18 (13 for ReduceSum), an input after.
            let axes = match opt(1) {
                Some(a) => a.ints(),
                None => attr_ints(n, "axes")?.unwrap_or_default(),
            };
            if axes.is_empty() && attr_i(n, "noop_with_empty_axes", 0)? != 0 {
                return one(get(0)?.clone());
            }
            one(arr::reduce(op, get(0)?, &axes, attr_i(n, "keepdims", 1)? != 0)?)
        }
        "Where" => one(arr::where_(get(0)?, get(1)?, get(2)?)?),
        "Range" => one(arr::range(get(0)?, get(1)?, get(2)?)?),
        "ConstantOfShape" => {
            let shape: Vec<usize> = get(0)?
                .ints()
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| err!(Model, "ConstantOfShape {d}")))
                .collect::<Result<_>>()?;
            let len = arr::numel(&shape)?;
            match n.attrs.get("value") {
                Some(Attr::Tensor(v)) if v.len() == 1 => match &v.data {
                    arr::Data::F(x) => one(Arr::f(shape, vec![x[0]; len])),
                    arr::Data::I(x) => one(Arr::i(shape, vec![x[0]; len])),
                },
                None => one(Arr::f(shape, vec![0.0; len])),
                _ => bail!(Model, "ConstantOfShape value is not one element"),
            }
        }
        "Gemm" | "MatMul" => {
            let (a, b) = (get(0)?, get(1)?);
            let (ta, tb) = if op == "Gemm" {
                (attr_i(n, "transA", 0)? != 0, attr_i(n, "transB", 0)? != 0)
            } else {
                (false, false)
            };
            let a2 = if ta { arr::transpose(a, &[1, 0])? } else { a.clone() };
            let b2 = if tb { arr::transpose(b, &[1, 0])? } else { b.clone() };
            if a2.shape.len() != 2 || b2.shape.len() != 2 || a2.shape[1] != b2.shape[0] {
                bail!(Model, "{op} of {:?} and {:?} (matrices only when folding)", a.shape, b.shape);
            }
            let (m, k, nn) = (a2.shape[0], a2.shape[1], b2.shape[1]);
            arr::numel(&[m, nn])?;
            let (x, y) = (a2.floats(), b2.floats());
            let mut out = vec![0.0f32; m * nn];
            for i in 0..m {
                for j in 0..nn {
                    out[i * nn + j] = (0..k).map(|p| x[i * k + p] * y[p * nn + j]).sum();
                }
            }
            let mut r = Arr::f(vec![m, nn], out);
            if op == "Gemm" {
                let (alpha, beta) = (attr_f(n, "alpha", 1.0)?, attr_f(n, "beta", 1.0)?);
                r = arr::binary("Mul", &r, &Arr::f(vec![], vec![alpha]))?;
                if let Some(c) = opt(2) {
                    r = arr::binary("Add", &r, &arr::binary("Mul", c, &Arr::f(vec![], vec![beta]))?)?;
                }
            }
            one(r)
        }
        _ => bail!(Model, "{op} cannot be folded at convert time"),
    }
}

/// Lowers the whole graph.
pub fn lower(m: &OnnxModel, opts: &Options) -> Result<Lowered> {
    let mut notes = Vec::new();
    if m.opset < 13 {
        bail!(Model, "opset {} is too old: export with opset_version 13 or later (torch's default is fine)", m.opset);
    }
    let Some(x_io) = m.inputs.first() else { bail!(Model, "the graph has no inputs") };
    if m.inputs.len() > 3 {
        bail!(
            Model,
            "the graph takes {} inputs ({}); expected the sample, the timestep and optionally class labels",
            m.inputs.len(),
            m.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    // The timestep is input 1 and class labels input 2, unless their names say the other way round.
    let class_like = |n: &str| {
        let n = n.to_ascii_lowercase();
        n.contains("class") || n.contains("label") || n == "y" || n == "c"
    };
    let (t_idx, c_idx) = match m.inputs.len() {
        3 if class_like(&m.inputs[1].name) && !class_like(&m.inputs[2].name) => (Some(2), Some(1)),
        3 => (Some(1), Some(2)),
        2 => (Some(1), None),
        _ => (None, None),
    };
    if x_io.elem != 1 {
        bail!(Model, "the sample input {} is not float32", x_io.name);
    }
    if x_io.dims.len() != 4 {
        bail!(Model, "the sample input {} has rank {} (expected [N, C, H, W])", x_io.name, x_io.dims.len());
    }
    if x_io.dims[0].is_some_and(|n| n != 1) {
        bail!(
            Model,
            "the sample input has a fixed batch of {}: export with batch 1 or a dynamic batch axis",
            x_io.dims[0].unwrap_or(0)
        );
    }
    let Some(c) = x_io.dims[1] else { bail!(Model, "the sample input's channel count is symbolic") };
    let (h, w) = match (x_io.dims[2], x_io.dims[3], opts.sample_size) {
        (_, _, Some(hw)) => hw,
        (Some(h), Some(w), None) => (h, w),
        _ => bail!(Model, "the sample's height and width are symbolic: give them with --set sample_size=N"),
    };
    if !(1..=4096).contains(&c) || !(1..=16384).contains(&h) || !(1..=16384).contains(&w) {
        bail!(Model, "the sample input is {c} x {h} x {w}: channels must be 1..4096, height and width 1..16384");
    }
    let mut t_input = None;
    if let Some(t) = t_idx.and_then(|i| m.inputs.get(i)) {
        let float = match t.elem {
            1 => true,
            6 | 7 => false,
            e => bail!(Model, "the timestep input {} has element type {e} (int64, int32 or float32 expected)", t.name),
        };
        if t.dims.len() > 2 || t.dims.iter().skip(1).any(|d| *d != Some(1)) {
            bail!(Model, "the timestep input {} has shape {:?} ([], [N] or [N, 1] expected)", t.name, t.dims);
        }
        if !float && opts.timestep_scale != 1.0 {
            bail!(Config, "timestep_scale applies to a float timestep; {} is an integer", t.name);
        }
        let shape = vec![1; t.dims.len()];
        notes.push(format!(
            "timestep input {} ({}{})",
            t.name,
            if float { "float32" } else { "integer" },
            if opts.timestep_scale != 1.0 { format!(", fed t x {}", opts.timestep_scale) } else { String::new() }
        ));
        t_input = Some((t.name.clone(), float, shape));
    } else {
        notes.push("the graph has no timestep input: the network does not depend on t".into());
    }
    let mut class_input = None;
    if let Some(ci) = c_idx.and_then(|i| m.inputs.get(i)) {
        if !matches!(ci.elem, 6 | 7) {
            bail!(Model, "the class-label input {} has element type {} (int64 or int32 expected)", ci.name, ci.elem);
        }
        if ci.dims.len() > 2 || ci.dims.iter().skip(1).any(|d| *d != Some(1)) {
            bail!(Model, "the class-label input {} has shape {:?} ([], [N] or [N, 1] expected)", ci.name, ci.dims);
        }
        let k = match opts.num_classes {
            Some(k) => k,
            None => embedding_rows(m, &ci.name).ok_or_else(|| {
                err!(
                    Model,
                    "the class-label input {} indexes no embedding table: give the number of classes with --set num_classes=K",
                    ci.name
                )
            })?,
        };
        if !(1..=65536).contains(&k) {
            bail!(Model, "{k} classes (1..65536 supported)");
        }
        notes.push(format!("class-label input {} ({k} classes)", ci.name));
        class_input = Some((ci.name.clone(), vec![1; ci.dims.len()], k));
    }
    if class_input.is_none() && opts.num_classes.is_some() {
        bail!(Config, "num_classes is set, but the graph takes no class-label input");
    }
    let mut l = Lower {
        m,
        opts,
        g: Graph::default(),
        syms: HashMap::new(),
        maker: HashMap::new(),
        tables: HashMap::new(),
        t_input: t_input.clone(),
        class_input: class_input.clone(),
        fused: HashSet::new(),
        silu: HashMap::new(),
        folded: 0,
        fold_budget: m.initializers.values().fold(arr::FOLD_ALLOWANCE, |b, a| b.saturating_add(4 * a.len())),
    };
    for (name, a) in &m.initializers {
        l.syms.insert(name.clone(), Sym::Const(a.clone()));
    }
    let x_shape = vec![1, c, h, w];
    let input = l.new_value(&x_shape)?;
    l.syms.insert(x_io.name.clone(), Sym::Val { v: input, shape: x_shape });
    if let Some((t, _, _)) = &t_input {
        l.syms.insert(t.clone(), Sym::Cond(TIME));
    }
    if let Some((c, _, _)) = &class_input {
        l.syms.insert(c.clone(), Sym::Cond(CLASS));
    }
    // Consumers per tensor, for fusion.
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &m.nodes {
        for x in &n.inputs {
            *uses.entry(x.as_str()).or_default() += 1;
        }
    }
    for o in &m.outputs {
        *uses.entry(o.name.as_str()).or_default() += 1;
    }
    for (i, n) in m.nodes.iter().enumerate() {
        for o in &n.outputs {
            l.maker.insert(o.as_str(), i);
        }
    }
    // x·sigmoid(x): the Sigmoid's only consumer is a Mul of it with its input.
    for (i, n) in m.nodes.iter().enumerate() {
        if n.op != "Mul" || n.inputs.len() != 2 {
            continue;
        }
        for (a, b) in [(0, 1), (1, 0)] {
            let Some(&s) = l.maker.get(n.inputs[b].as_str()) else { continue };
            let sn = &m.nodes[s];
            if sn.op == "Sigmoid"
                && sn.inputs.first() == Some(&n.inputs[a])
                && uses.get(n.inputs[b].as_str()) == Some(&1)
            {
                l.fused.insert(s);
                l.silu.insert(i, n.inputs[a].clone());
            }
        }
    }
    for (i, n) in m.nodes.iter().enumerate() {
        // A fused SiLU whose input turns out not to be a program value is computed unfused.
        if l.fused.contains(&i) {
            let x = n.inputs.first().map(String::as_str).unwrap_or("");
            if !matches!(l.syms.get(x), Some(Sym::Val { .. })) {
                l.fused.remove(&i);
                l.silu.retain(|_, v| v != x);
            }
        }
        l.lower(i, n)?;
    }
    let Some(out_io) = m.outputs.first() else { bail!(Model, "the graph has no outputs") };
    if m.outputs.len() > 1 {
        notes.push(format!("the graph has {} outputs: using the first, {}", m.outputs.len(), out_io.name));
    }
    let (output, out_shape) = l.val_of(&out_io.name).context("the graph's output")?;
    if out_shape.len() != 4 || out_shape[0] != 1 || out_shape[2] != h || out_shape[3] != w {
        bail!(Model, "the output has shape {out_shape:?}, not [N, C, {h}, {w}] like the sample");
    }
    let per_row = |mask: u8| -> usize {
        l.tables
            .iter()
            .filter(|(name, _)| matches!(l.syms.get(*name), Some(Sym::Cond(m)) if *m == mask))
            .map(|(_, (_, s))| s.iter().product::<usize>())
            .sum()
    };
    let (nt, nc) = (per_row(TIME), per_row(CLASS));
    if nt > 0 {
        notes.push(format!(
            "the timestep sub-graph is tabulated for t = 0..{} ({nt} values per timestep)",
            opts.timesteps
        ));
    }
    let num_classes = class_input.map_or(0, |(_, _, k)| k);
    if nc > 0 {
        notes.push(format!("the class sub-graph is tabulated for {num_classes} classes ({nc} values per class)"));
    }
    Ok(Lowered { graph: l.g, input, output, sample: (c, h, w), out_channels: out_shape[1], num_classes, notes })
}
