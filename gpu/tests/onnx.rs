//! ONNX-imported programs on the GPU against the CPU's exact executor (`Kernels::Exact`): every fixture network of
//! `tests/fixtures/onnx` (made by `tests/fixtures/make_onnx_fixtures.py`) through both of torch's exporters, in f32
//! and f16, converted in process as `convert/tests/onnx.rs` converts them; short same-seed sampling runs; and one
//! synthetic program holding every imported-graph op in each of its modes.
//!
//! Bounds, relative to the largest reference magnitude (measured by `cargo test -p ddpm-gpu --test onnx --
//! --nocapture`, which prints each error):
//! - forward, f32 and f16 blobs alike: 1e-4 × max|ref|. The GPU runs the same program on the same weights (f16
//!   weights are widened exactly on both sides) in f32, so only the order of the sums (per-invocation loops and
//!   workgroup reductions against the CPU's blocked ones, fused multiply-adds) and the device's exp/log/sqrt/sin/cos
//!   differ: a few ulps per op, ~1e-6 over these networks, well inside the bound PyTorch parity uses for the same
//!   fixtures (`convert/tests/onnx.rs`);
//! - pure data movement (permutations, slices, concatenation, padding, nearest resizing, max pooling, tables,
//!   constants) is exact: the same elements land in the same places;
//! - same-seed sampling: 1e-3 max abs over images in [-1, 1], as for the native fixtures (`parity.rs`): the
//!   forward differences above are amplified by the first DDIM steps (1/√ᾱ_t ≈ 156 at t = 999 for linear betas)
//!   and the noise stream's last bits.
//!
//! Without a Vulkan device the tests print a loud SKIPPED line and pass, unless `DDPM_REQUIRE_GPU=1`.

mod common;

use std::path::{Path, PathBuf};

use ddpm_convert::graph::{Graph, ModelHeader};
use ddpm_convert::onnx::{convert_onnx, read_onnx, OnnxRequest};
use ddpm_convert::{AlignedBlob, Calibration};
use ddpm_core::ops::{BinaryFn, PadMode, PoolFn, ReduceFn, ResizeCoord, ResizeSample, UnaryFn};
use ddpm_core::program::Op;
use ddpm_core::sampler::{Method, SampleSpec, Sampler};
use ddpm_core::{Kernels, Model, Precision, RunError, Schedule};
use ddpm_gpu::{Error, GpuModel};

use common::{cpu_forward, gpu_device, inputs, max_abs, max_diff, workspace};

/// Forward error bound, relative to max |CPU output| (see the module docs).
const FORWARD_TOL: f32 = 1e-4;
/// Same-seed sampling bound, max abs (see the module docs).
const SAMPLE_TOL: f32 = 1e-3;

fn fixtures(model: &str) -> PathBuf {
    workspace().join("tests/fixtures/onnx").join(model)
}

fn npy(p: &Path) -> Vec<f32> {
    ddpm_convert::load::read_npy(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).1
}

/// `model/file` converted to a blob of `precision`, with nothing set (as `host-cli convert model.onnx`).
fn convert(model: &str, file: &str, precision: Precision) -> AlignedBlob {
    let path = fixtures(model).join(file);
    let onnx = read_onnx(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let out = convert_onnx(OnnxRequest {
        model: onnx,
        options: Default::default(),
        scheduler: None,
        scheduler_overrides: Default::default(),
        precision,
        calibration: Calibration::default(),
    })
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    AlignedBlob::from_bytes(&out.blob)
}

fn exact<'a>(b: &'a AlignedBlob) -> Model<'a> {
    b.model().expect("valid blob").with_kernels(Kernels::Exact)
}

// ---------------------------------------------------------------------------------------------------------------
// The fixture networks

/// One forward at t = 0, T/2, T − 1 of a batch of two (the fixture's sample and a pseudo-random one) for each
/// exporter and precision, on the GPU and on the CPU's exact executor; class-conditional networks with two labels.
fn check_fixture(model: &str) {
    let Some(d) = gpu_device() else { return };
    let x0 = npy(&fixtures(model).join("x.npy"));
    let x = [x0.clone(), inputs(x0.len(), 11)].concat();
    for file in ["dynamo.onnx", "legacy.onnx"] {
        for precision in [Precision::F32, Precision::F16] {
            let blob = convert(model, file, precision);
            let m = exact(&blob);
            let classes: &[Option<u32>] = if m.num_classes() > 0 { &[Some(3), Some(7)] } else { &[None] };
            let steps = m.schedule().num_train_timesteps;
            let mut g = GpuModel::new(&d, &m, 2).unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
            let mut worst = 0f32;
            for t in [0, steps / 2, steps - 1] {
                for &class in classes {
                    let want = cpu_forward(&m, &x, 2, t as f32, class);
                    let got = g.forward(&x, t as f32, class).unwrap();
                    assert!(want.iter().all(|v| v.is_finite()), "{model}/{file}: the reference is not finite");
                    worst = worst.max(max_diff(&got, &want) / max_abs(&want));
                }
            }
            eprintln!(
                "{model}/{file} {}: {} dispatches, max |gpu - cpu| {worst:.3e} x max|cpu|",
                precision.name(),
                g.dispatches_per_forward()
            );
            assert!(worst <= FORWARD_TOL, "{model}/{file} {}: {worst:e} > {FORWARD_TOL:e}", precision.name());
            // The imported timestep tables take the integer timesteps they hold, as on the CPU.
            for t in [2.5, steps as f32, -1.0] {
                let e = g.forward(&x, t, classes[0]).unwrap_err();
                assert_eq!(e, Error::Run(RunError::TimestepNotInTable { rows: steps }), "{model}/{file} t = {t}");
            }
        }
    }
}

#[test]
fn tutorial_unet() {
    check_fixture("tutorial");
}

#[test]
fn class_conditional_tutorial_unet() {
    check_fixture("tutorial_class");
}

#[test]
fn lucidrains_unet() {
    check_fixture("lucidrains");
}

#[test]
fn lucidrains_unet_with_learned_sinusoidal_features() {
    check_fixture("lucidrains_learned");
}

#[test]
fn groupnorm_attention_unet() {
    check_fixture("attention");
}

#[test]
fn pooling_bilinear_unet() {
    check_fixture("pooling");
}

#[test]
fn diffusers_unet_through_onnx() {
    check_fixture("diffusers");
}

/// A few same-seed sampling steps on the GPU and on the CPU: the sampler's timestep reaches the program's
/// timestep table on the device.
fn check_sample(model: &str, file: &str, spec: SampleSpec) {
    let Some(d) = gpu_device() else { return };
    let blob = convert(model, file, Precision::F32);
    let m = exact(&blob);
    let s = Sampler::new(&m, spec).unwrap();
    let mut arena = vec![0u8; s.arena_bytes() + 16];
    let mut st = s.start(&mut arena, None).unwrap();
    while st.done < s.num_steps() {
        s.step(&mut arena, &mut st, None).unwrap();
    }
    let want = s.samples(&arena).to_vec();
    let got = GpuModel::new(&d, &m, spec.batch).unwrap().sample(spec, None, &mut |_, _| {}).unwrap();
    let err = max_diff(&got, &want);
    eprintln!(
        "{model}/{file} {:?} {} steps: max |gpu - cpu| {err:.3e} (max |x| {:.3})",
        spec.method,
        spec.steps,
        max_abs(&want)
    );
    assert!(err <= SAMPLE_TOL, "{model}/{file}: {err:e} > {SAMPLE_TOL:e}");
}

#[test]
fn diffusers_through_onnx_samples_like_the_cpu() {
    let spec =
        SampleSpec { method: Method::Ddim { eta: 0.0 }, steps: 4, batch: 2, seed: 3, class: None, first_image: 0 };
    check_sample("diffusers", "legacy.onnx", spec);
}

#[test]
fn class_conditional_tutorial_samples_like_the_cpu() {
    let spec =
        SampleSpec { method: Method::Ddim { eta: 0.5 }, steps: 4, batch: 2, seed: 9, class: Some(5), first_image: 2 };
    check_sample("tutorial_class", "dynamo.onnx", spec);
}

// ---------------------------------------------------------------------------------------------------------------
// Every op kind and mode: one synthetic program

/// A named part of the synthetic program's output: its offset and length, and whether it must be exact.
struct Part {
    name: String,
    at: usize,
    len: usize,
    exact: bool,
}

/// A program under construction for [`every_op_in_every_mode`]: the model input `(N, 1, 1)` is reshaped to the
/// feature map `x`, each case's ops read `x` (or slices of the input), and each case's result is a named part of
/// the output (all parts reshaped to vectors and concatenated).
struct Synth {
    g: Graph,
    input: u32,
    n_in: usize,
    x: u32,
    parts: Vec<(String, u32, bool)>,
    seed: u32,
}

impl Synth {
    fn new(c: usize, h: usize, w: usize) -> Synth {
        let mut g = Graph::default();
        let n_in = c * h * w;
        let input = g.value(n_in, 1, 1);
        let x = g.value(c, h, w);
        g.push(Op::Affine { out: x, x: input, mul: 1.0, add: 0.0 });
        Synth { g, input, n_in, x, parts: Vec::new(), seed: 100 }
    }

    fn dims(&self, v: u32) -> (usize, usize, usize) {
        let s = self.g.shape(v);
        (s.c, s.h, s.w)
    }

    fn value(&mut self, (c, h, w): (usize, usize, usize)) -> u32 {
        self.g.value(c, h, w)
    }

    /// `out = x·mul + add` into a new value of `x`'s shape.
    fn affine(&mut self, x: u32, mul: f32, add: f32) -> u32 {
        let out = self.value(self.dims(x));
        self.g.push(Op::Affine { out, x, mul, add });
        out
    }

    /// A stored tensor of pseudo-random values in [lo, hi).
    fn tensor(&mut self, dims: Vec<usize>, lo: f32, hi: f32) -> u32 {
        self.seed += 1;
        let n = dims.iter().product();
        let data = inputs(n, self.seed).into_iter().map(|v| lo + (v + 1.0) / 2.0 * (hi - lo)).collect();
        self.g.tensor("t", dims, data)
    }

    /// `n` consecutive elements of the input from `start` (wrapping), as a vector value (a `Slice`).
    fn slice_of_input(&mut self, n: usize, start: usize) -> u32 {
        let out = self.g.value(n, 1, 1);
        let start = start % (self.n_in - n + 1);
        let [n_in, start, n] = [self.n_in, start, n].map(|d| d as u32);
        self.g.push(Op::Slice { out, x: self.input, outer: 1, n: n_in, inner: 1, start, step: 1, count: n });
        out
    }

    /// `v`'s elements made positive: |v| + lo.
    fn positive(&mut self, v: u32, lo: f32) -> u32 {
        let a = self.value(self.dims(v));
        self.g.push(Op::Unary { out: a, x: v, kind: UnaryFn::Abs as u32, a: 0.0, b: 0.0 });
        self.affine(a, 1.0, lo)
    }

    /// Records `v` as a part of the output; `exact`: the GPU must give the CPU's values exactly.
    fn part(&mut self, name: impl Into<String>, v: u32, exact: bool) {
        self.parts.push((name.into(), v, exact));
    }

    /// Runs `op` into a new value of shape `out`, recorded as a part.
    fn case(&mut self, name: impl Into<String>, out: (usize, usize, usize), exact: bool, op: impl FnOnce(u32) -> Op) {
        let o = self.value(out);
        self.g.push(op(o));
        self.part(name, o, exact);
    }

    /// The blobs (f32, f16) and where the parts lie in the output.
    fn finish(mut self, classes: usize) -> ([AlignedBlob; 2], Vec<Part>) {
        let mut layout = Vec::new();
        let mut acc: Option<u32> = None;
        let mut at = 0;
        for (name, v, exact) in std::mem::take(&mut self.parts) {
            let (c, h, w) = self.dims(v);
            let n = c * h * w;
            let flat = self.g.value(n, 1, 1);
            self.g.push(Op::Affine { out: flat, x: v, mul: 1.0, add: 0.0 });
            acc = Some(match acc {
                None => flat,
                Some(a) => {
                    let out = self.g.value(at + n, 1, 1);
                    self.g.push(Op::Concat { out, a, b: flat });
                    out
                }
            });
            layout.push(Part { name, at, len: n, exact });
            at += n;
        }
        let output = acc.expect("parts");
        let blobs = [Precision::F32, Precision::F16].map(|precision| {
            let hdr = ModelHeader {
                precision,
                in_channels: self.n_in,
                out_channels: at,
                height: 1,
                width: 1,
                num_classes: classes,
                schedule: Schedule::DDPM_DEFAULT,
                config_json: "{}".into(),
            };
            let bytes = ddpm_convert::emit::blob(&self.g, &hdr, self.input, output).expect("emit");
            AlignedBlob::from_bytes(&bytes)
        });
        (blobs, layout)
    }
}

/// Every op an imported graph adds, in each of its functions and modes, with in-place and broadcast variants, in one
/// program (f32 and f16 blobs), on a batch of two at three timesteps and two classes: each part of the output
/// within [`FORWARD_TOL`] × its max |CPU| of the CPU, and exactly equal where the op moves or selects elements (or
/// is one correctly rounded add, subtract, multiply, min or max).
#[test]
fn every_op_in_every_mode() {
    let Some(d) = gpu_device() else { return };
    let (c, h, w) = (4, 6, 5);
    let mut s = Synth::new(c, h, w);
    let x = s.x;
    let chw = (c, h, w);
    let n = c * h * w;

    // LayerNorm: runs of 30 in place, and the whole map.
    let y = s.affine(x, 1.0, 0.0);
    let (g30, b30) = (s.tensor(vec![30], 0.5, 1.5), s.tensor(vec![30], -0.5, 0.5));
    s.g.push(Op::LayerNorm { out: y, x: y, gamma: g30, beta: b30, eps: 1e-5 });
    s.part("LayerNorm n=30 in place", y, false);
    let (g, b) = (s.tensor(vec![n], 0.5, 1.5), s.tensor(vec![n], -0.5, 0.5));
    s.case("LayerNorm n=120", chw, false, |out| Op::LayerNorm { out, x, gamma: g, beta: b, eps: 1e-3 });

    // ConvTranspose2d: stride 2 with padding and output padding, stride 1, a stride wider than the kernel.
    for (co, k, stride, pad, ho, wo) in [(3, 3, 2, [1, 1], 12, 9), (2, 2, 1, [0, 0], 7, 6), (3, 2, 3, [0, 1], 17, 13)] {
        let wt = s.tensor(vec![c, co, k, k], -0.5, 0.5);
        let bias = s.tensor(vec![co], -0.5, 0.5);
        let name = format!("ConvTranspose2d k{k} s{stride} pad {pad:?}");
        s.case(name, (co, ho, wo), false, |out| Op::ConvTranspose2d { out, x, w: wt, b: bias, stride, pad });
    }

    // Tables and constants.
    let table = s.tensor(vec![1000, 24], -1.0, 1.0);
    s.case("TimestepTable", (24, 1, 1), true, |out| Op::TimestepTable { out, table });
    let table = s.tensor(vec![3, 16], -1.0, 1.0);
    s.case("ClassTable", (2, 2, 4), true, |out| Op::ClassTable { out, table });
    let t = s.tensor(vec![10], -1.0, 1.0);
    s.case("Constant", (10, 1, 1), true, |out| Op::Constant { out, t });

    // Unary: every function, over ranges that reach its branches.
    let x3 = s.affine(x, 3.0, 0.0);
    let x6 = s.affine(x, 6.0, 0.0);
    let x25 = s.affine(x, 25.0, 0.0);
    let pos = s.positive(x3, 0.05);
    for f in UnaryFn::ALL {
        let src = match f {
            UnaryFn::Log | UnaryFn::Sqrt | UnaryFn::Reciprocal => pos,
            UnaryFn::Softplus => x25,
            UnaryFn::Tanh | UnaryFn::GeluTanh | UnaryFn::Sigmoid | UnaryFn::Erf | UnaryFn::Gelu => x6,
            UnaryFn::Sin | UnaryFn::Cos => x6,
            _ => x3,
        };
        let (a, b) = match f {
            UnaryFn::LeakyRelu => (0.1, 0.0),
            UnaryFn::HardSigmoid => (0.2, 0.5),
            UnaryFn::Clip => (-0.5, 0.7),
            _ => (0.0, 0.0),
        };
        let exact = matches!(f, UnaryFn::Relu | UnaryFn::LeakyRelu | UnaryFn::Abs | UnaryFn::Neg | UnaryFn::Clip);
        s.case(format!("Unary {f:?}"), chw, exact, |out| Op::Unary { out, x: src, kind: f as u32, a, b });
    }
    let v = s.affine(x6, 1.0, 0.0);
    s.g.push(Op::Unary { out: v, x: v, kind: UnaryFn::Tanh as u32, a: 0.0, b: 0.0 });
    s.part("Unary Tanh in place", v, false);

    // Binary: every function under broadcasts of either operand (bits 0-2: a, 3-5: b), over [4, 6, 5].
    let dims = [c as u32, h as u32, w as u32];
    let dz = [c, h, w];
    for f in BinaryFn::ALL {
        for (k, (ba, bb)) in
            [(0, 0), (0, 0b110), (0, 0b011), (0b101, 0), (0b010, 0b001), (0, 0b111)].into_iter().enumerate()
        {
            let na = ddpm_core::ops::Broadcast(ba).numel(dz);
            let nb = ddpm_core::ops::Broadcast(bb).numel(dz);
            let mut a = s.slice_of_input(na, 7 * k);
            let mut b = s.slice_of_input(nb, 13 * k + 5);
            match f {
                BinaryFn::Div => b = s.positive(b, 0.5),
                BinaryFn::Pow => a = s.positive(a, 0.1),
                _ => {}
            }
            let exact = !matches!(f, BinaryFn::Div | BinaryFn::Pow);
            let bcast = ba | bb << 3;
            let name = format!("Binary {f:?} bcast a {ba:03b} b {bb:03b}");
            s.case(name, chw, exact, |out| Op::Binary { out, a, b, dims, bcast, kind: f as u32 });
        }
    }
    // In place: out = a (unbroadcast) with b per channel; out = b with a along the last dimension.
    let a = s.affine(x, 1.0, 0.0);
    let bv = s.slice_of_input(c, 3);
    s.g.push(Op::Binary { out: a, a, b: bv, dims, bcast: 0b110 << 3, kind: BinaryFn::Mul as u32 });
    s.part("Binary Mul in place (out = a)", a, true);
    let b = s.affine(x, 1.0, 0.0);
    let av = s.slice_of_input(w, 9);
    s.g.push(Op::Binary { out: b, a: av, b, dims, bcast: 0b011, kind: BinaryFn::Sub as u32 });
    s.part("Binary Sub in place (out = b)", b, true);
    // One operand twice.
    s.case("Binary Add a = b", chw, true, |out| Op::Binary { out, a: x, b: x, dims, bcast: 0, kind: 0 });

    // BinaryConst: the tensor broadcast, the value broadcast, both orders; a negative base to integer powers.
    for f in [BinaryFn::Add, BinaryFn::Sub, BinaryFn::Mul, BinaryFn::Div, BinaryFn::Max, BinaryFn::Pow] {
        for (ba, bt) in [(0, 0b110), (0, 0b011), (0b100, 0b001), (0, 0)] {
            for swap in [false, true] {
                let na = ddpm_core::ops::Broadcast(ba).numel(dz);
                let nt = ddpm_core::ops::Broadcast(bt).numel(dz);
                let src = if na == n { x } else { s.slice_of_input(na, 11) };
                // Positive bases for fractional powers and denominators.
                let src = if f == BinaryFn::Pow || (f == BinaryFn::Div && swap) { s.positive(src, 0.25) } else { src };
                let t = s.tensor(vec![nt], 0.5, 1.5);
                let exact = !matches!(f, BinaryFn::Div | BinaryFn::Pow);
                let bcast = ba | bt << 3;
                let name = format!("BinaryConst {f:?} bcast a {ba:03b} t {bt:03b} swap {swap}");
                s.case(name, chw, exact, |out| Op::BinaryConst { out, a: src, t, dims, bcast, kind: f as u32, swap });
            }
        }
    }
    let exps = s.g.tensor("exponents", vec![5], vec![2.0, 3.0, -1.0, -2.0, 1.0]);
    s.case("BinaryConst Pow of negative bases, integer exponents", chw, false, |out| Op::BinaryConst {
        out,
        a: x,
        t: exps,
        dims,
        bcast: 0b011 << 3,
        kind: BinaryFn::Pow as u32,
        swap: false,
    });
    let v = s.affine(x, 1.0, 0.0);
    let t = s.tensor(vec![c], -1.0, 1.0);
    s.g.push(Op::BinaryConst { out: v, a: v, t, dims, bcast: 0b110 << 3, kind: 0, swap: true });
    s.part("BinaryConst Add in place", v, true);

    // Permute: three axes of a map, a six-dimensional shuffle, the identity.
    let word = |p: [u32; 6]| p.iter().enumerate().fold(0u32, |acc, (i, &a)| acc | a << (4 * i));
    for (dims6, perm) in [
        ([1, 1, 1, 4, 6, 5], [0, 1, 2, 5, 3, 4]),
        ([2, 3, 2, 1, 5, 2], [3, 0, 5, 1, 4, 2]),
        ([1, 1, 1, 1, 1, 120], [0, 1, 2, 3, 4, 5]),
    ] {
        let perm = word(perm);
        s.case(format!("Permute {dims6:?} {perm:#x}"), (n, 1, 1), true, |out| Op::Permute {
            out,
            x,
            dims: dims6,
            perm,
        });
    }

    // MatMul: each sharing of the operands, both layouts of b, one operand twice.
    let (bt, m, k, nn) = (2u32, 3u32, 4u32, 5u32);
    for shared in 0..4u32 {
        for trans_b in [false, true] {
            let na = if shared & 1 != 0 { m * k } else { bt * m * k };
            let nb = if shared & 2 != 0 { k * nn } else { bt * k * nn };
            let a = s.slice_of_input(na as usize, 3);
            let b = s.slice_of_input(nb as usize, 50);
            let name = format!("MatMul shared {shared} trans_b {trans_b}");
            s.case(name, ((bt * m * nn) as usize, 1, 1), false, |out| Op::MatMul {
                out,
                a,
                b,
                batch: bt,
                m,
                k,
                n: nn,
                shared,
                trans_b,
            });
        }
    }
    let a = s.slice_of_input(12, 20);
    s.case("MatMul a·aᵀ", (16, 1, 1), false, |out| Op::MatMul {
        out,
        a,
        b: a,
        batch: 1,
        m: 4,
        k: 3,
        n: 4,
        shared: 0,
        trans_b: true,
    });

    // Softmax: the middle axis in place, one long axis, axes of length 1.
    let v = s.affine(x, 10.0, 0.0);
    s.g.push(Op::Softmax { out: v, x: v, outer: 4, n: 6, inner: 5 });
    s.part("Softmax [4, 6, 5] in place", v, false);
    s.case("Softmax [1, 120, 1]", chw, false, |out| Op::Softmax { out, x: x3, outer: 1, n: 120, inner: 1 });
    s.case("Softmax [120, 1, 1]", chw, true, |out| Op::Softmax { out, x, outer: 120, n: 1, inner: 1 });

    // Reduce: every reduction over the middle axis; a whole vector; an axis of length 1.
    for f in ReduceFn::ALL {
        let exact = matches!(f, ReduceFn::Sum | ReduceFn::Max | ReduceFn::Min);
        s.case(format!("Reduce {f:?} [4, 6, 5]"), (20, 1, 1), exact, |out| Op::Reduce {
            out,
            x,
            outer: 4,
            n: 6,
            inner: 5,
            kind: f as u32,
        });
    }
    s.case("Reduce Mean [1, 120, 1]", (1, 1, 1), false, |out| Op::Reduce {
        out,
        x,
        outer: 1,
        n: 120,
        inner: 1,
        kind: 1,
    });
    s.case("Reduce L2 [24, 1, 5]", (120, 1, 1), false, |out| Op::Reduce { out, x, outer: 24, n: 1, inner: 5, kind: 4 });

    // Slice and ConcatAxis.
    for (outer, nn, inner, start, step, count) in [(4, 6, 5, 1, 2, 3), (1, 120, 1, 7, 5, 20), (24, 5, 1, 4, 1, 1)] {
        let name = format!("Slice [{outer}, {nn}, {inner}] from {start} step {step} count {count}");
        s.case(name, ((outer * count * inner) as usize, 1, 1), true, |out| Op::Slice {
            out,
            x,
            outer,
            n: nn,
            inner,
            start,
            step,
            count,
        });
    }
    let a = s.slice_of_input(40, 0);
    let b = s.slice_of_input(60, 30);
    s.case("ConcatAxis [4, 2 + 3, 5]", (100, 1, 1), true, |out| Op::ConcatAxis {
        out,
        a,
        b,
        outer: 4,
        na: 2,
        nb: 3,
        inner: 5,
    });
    s.case("ConcatAxis a = b", (2 * n, 1, 1), true, |out| Op::ConcatAxis {
        out,
        a: x,
        b: x,
        outer: 2,
        na: 6,
        nb: 6,
        inner: 10,
    });

    // LinearRows: rows of 5 and of 30.
    for (n_in, n_out) in [(5, 7), (30, 3)] {
        let wt = s.tensor(vec![n_out, n_in], -0.5, 0.5);
        let bias = s.tensor(vec![n_out], -0.5, 0.5);
        let rows = n / n_in;
        s.case(format!("LinearRows {n_in} -> {n_out}"), (rows * n_out, 1, 1), false, |out| Op::LinearRows {
            out,
            x,
            w: wt,
            b: bias,
        });
    }

    // Pool2d: every pool with padding and a window past the end (ceil mode), and an uneven window and stride.
    for f in PoolFn::ALL {
        for (kk, stride, pad, ho, wo) in [([3, 3], [2, 2], [1, 1], 4, 3), ([2, 1], [1, 2], [0, 0], 5, 3)] {
            let name = format!("Pool2d {f:?} k {kk:?} s {stride:?} pad {pad:?}");
            s.case(name, (c, ho, wo), f == PoolFn::Max, |out| Op::Pool2d {
                out,
                x,
                k: kk,
                stride,
                pad,
                kind: f as u32,
            });
        }
    }

    // Resize: every coordinate mode with every sampling, up, down and to a single row.
    for coord in ResizeCoord::ALL {
        for sample in ResizeSample::ALL {
            for (ho, wo) in [(9, 11), (4, 3), (1, 2)] {
                let mode = coord as u32 | (sample as u32) << 4;
                let exact = sample != ResizeSample::Linear;
                let name = format!("Resize {coord:?} {sample:?} to {ho}x{wo}");
                s.case(name, (c, ho, wo), exact, |out| Op::Resize { out, x, mode });
            }
        }
    }

    // Pad: every mode.
    for mode in PadMode::ALL {
        let pads = [[2, 1, 0, 3], if mode == PadMode::Edge { [5, 6, 7, 8] } else { [0, 4, 5, 0] }];
        for pad in pads {
            let out = (c, h + (pad[0] + pad[2]) as usize, w + (pad[1] + pad[3]) as usize);
            s.case(format!("Pad {mode:?} {pad:?}"), out, true, |out| Op::Pad {
                out,
                x,
                pad,
                value: -0.5,
                mode: mode as u32,
            });
        }
    }

    let (blobs, layout) = s.finish(3);
    let mut kinds: Vec<&str> = Vec::new();
    let m = exact(&blobs[0]);
    for op in m.ops() {
        if !kinds.contains(&op.name()) {
            kinds.push(op.name());
        }
    }
    eprintln!("synthetic program: {} ops, {} parts, kinds {kinds:?}", m.num_ops(), layout.len());
    let il = m.in_channels();
    let x = [inputs(il, 1), inputs(il, 2)].concat();
    for blob in &blobs {
        let m = exact(blob);
        let precision = m.precision().name();
        let mut g = GpuModel::new(&d, &m, 2).unwrap();
        let mut failures = Vec::new();
        let mut worst = 0f32;
        for t in [0.0, 500.0, 999.0] {
            for class in [Some(0), Some(2)] {
                let want = cpu_forward(&m, &x, 2, t, class);
                let got = g.forward(&x, t, class).unwrap();
                let ol = want.len() / 2;
                for Part { name, at, len, exact } in &layout {
                    for sample in 0..2 {
                        let r = sample * ol + at..sample * ol + at + len;
                        let (want, got) = (&want[r.clone()], &got[r]);
                        assert!(want.iter().all(|v| v.is_finite()), "{name}: the reference is not finite");
                        let err = max_diff(got, want) / max_abs(want).max(f32::MIN_POSITIVE);
                        worst = worst.max(err);
                        let bad = if *exact { got != want } else { err.is_nan() || err > FORWARD_TOL };
                        if bad {
                            failures.push(format!("{name} (t {t}, class {class:?}, sample {sample}): {err:e}"));
                        }
                    }
                }
            }
        }
        eprintln!("synthetic program {precision}: max |gpu - cpu| {worst:.3e} x max|cpu| of a part");
        assert!(failures.is_empty(), "{precision}: {} parts differ:\n{}", failures.len(), failures.join("\n"));
    }
}
