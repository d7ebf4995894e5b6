//! The data-movement ops on quantized values, end to end through a blob: programs that quantize a sample, move
//! it (permute, slice, axis concatenation, padding, max pooling, nearest resizing, reshape) and dequantize the
//! results give bit for bit the f32 program's outputs on the same integer multiples of the scale, at i8 and
//! i16; average pooling of codes is within half a step of the f32 mean. Validation refuses a move whose values
//! differ in type, scale or zero point, and the quantized forms that need f32 (bilinear resizing, a padding
//! constant no code stands for, an affine map that is not a reshape).

use ddpm_convert::graph::{Graph, ModelHeader};
use ddpm_convert::AlignedBlob;
use ddpm_core::format::{DType, Schedule};
use ddpm_core::ops::{PadMode, PoolFn, ResizeCoord, ResizeSample};
use ddpm_core::program::Op;
use ddpm_core::Precision;

/// The activation scale of the quantized programs (not a power of two, so codes are not exact binary fractions).
const S: f32 = 0.037;
/// The sample: two channels of 4 × 6.
const C: usize = 2;
const H: usize = 4;
const W: usize = 6;

/// A program on a (C, H, W) sample, f32 or (with `q`) quantized at scale [`S`] after the input: `body` builds
/// the ops from the sample value with `mk(g, c, h, w)` making values of the program's type, and returns the
/// values to output; each is dequantized (quantized programs), flattened and concatenated into the output.
struct Program {
    g: Graph,
    input: u32,
    output: u32,
    out_len: usize,
}

type Make<'a> = &'a dyn Fn(&mut Graph, usize, usize, usize) -> u32;

fn program(q: Option<DType>, body: impl Fn(&mut Graph, u32, Make<'_>) -> Vec<u32>) -> Program {
    let mut g = Graph::default();
    let input = g.value(C * H * W, 1, 1);
    let x = g.value(C, H, W);
    g.push(Op::Affine { out: x, x: input, mul: 1.0, add: 0.0 });
    let mk = |g: &mut Graph, c: usize, h: usize, w: usize| match q {
        None => g.value(c, h, w),
        Some(dt) => g.typed_value(c, h, w, dt, S),
    };
    let x = match q {
        None => x,
        Some(_) => {
            let xq = mk(&mut g, C, H, W);
            g.push(Op::Quantize { out: xq, x });
            xq
        }
    };
    let parts = body(&mut g, x, &mk);
    let mut acc: Option<u32> = None;
    let mut out_len = 0;
    for p in parts {
        let s = g.shape(p);
        let p = if s.dtype == DType::F32 {
            p
        } else {
            let d = g.value(s.c, s.h, s.w);
            g.push(Op::Dequantize { out: d, x: p });
            d
        };
        let n = s.c * s.h * s.w;
        let flat = g.value(n, 1, 1);
        g.push(Op::Affine { out: flat, x: p, mul: 1.0, add: 0.0 });
        acc = Some(match acc {
            None => flat,
            Some(a) => {
                let out = g.value(out_len + n, 1, 1);
                g.push(Op::Concat { out, a, b: flat });
                out
            }
        });
        out_len += n;
    }
    Program { g, input, output: acc.expect("parts"), out_len }
}

fn blob(p: &Program, precision: Precision) -> AlignedBlob {
    let hdr = ModelHeader {
        precision,
        in_channels: C * H * W,
        out_channels: p.out_len,
        height: 1,
        width: 1,
        num_classes: 0,
        schedule: Schedule::DDPM_DEFAULT,
        config_json: "{}".into(),
    };
    AlignedBlob::from_bytes(&ddpm_convert::emit::blob(&p.g, &hdr, p.input, p.output).expect("emit"))
}

/// The program's output on the sample `k·S` for integer codes `k` (within ±100, so i8 holds them).
fn run(p: &Program, precision: Precision) -> Vec<f32> {
    let b = blob(p, precision);
    let m = b.model().unwrap_or_else(|e| panic!("{e}"));
    let x: Vec<f32> = (0..C * H * W).map(|i| ((i as i32 * 37) % 201 - 100) as f32 * S).collect();
    let mut out = vec![0f32; p.out_len];
    let mut arena = vec![0u8; m.arena_bytes() + 16];
    m.forward(&mut arena, &x, 10.0, None, &mut out).expect("forward");
    out
}

fn perm_word(p: [u32; 6]) -> u32 {
    p.iter().enumerate().map(|(i, &a)| a << (4 * i)).sum()
}

/// Every move, in each mode, as parts of one program.
fn moves(g: &mut Graph, x: u32, mk: Make<'_>) -> Vec<u32> {
    let mut parts = Vec::new();
    // Permute (c, h, w) → (w, c, h).
    let o = mk(g, W, C, H);
    g.push(Op::Permute { out: o, x, dims: [1, 1, 1, C, H, W].map(|d| d as u32), perm: perm_word([0, 1, 2, 5, 3, 4]) });
    parts.push(o);
    // Slice rows 1 and 3 of each channel.
    let rows = mk(g, C, 2, W);
    g.push(Op::Slice { out: rows, x, outer: C as u32, n: H as u32, inner: W as u32, start: 1, step: 2, count: 2 });
    parts.push(rows);
    // ConcatAxis: the slice and the sample along h, and the sample with itself along w.
    let hcat = mk(g, C, 2 + H, W);
    g.push(Op::ConcatAxis { out: hcat, a: rows, b: x, outer: C as u32, na: 2, nb: H as u32, inner: W as u32 });
    parts.push(hcat);
    let wcat = mk(g, C, H, 2 * W);
    g.push(Op::ConcatAxis { out: wcat, a: x, b: x, outer: (C * H) as u32, na: W as u32, nb: W as u32, inner: 1 });
    parts.push(wcat);
    // Pad in every mode; the constant is a code (3·S).
    for mode in PadMode::ALL {
        let o = mk(g, C, H + 3, W + 3);
        g.push(Op::Pad { out: o, x, pad: [1, 2, 2, 1], value: 3.0 * S, mode: mode as u32 });
        parts.push(o);
    }
    // Max pooling: overlapping 3 × 3 windows, stride 2, padding 1; and 2 × 2 tiles.
    let o = mk(g, C, 2, 3);
    g.push(Op::Pool2d { out: o, x, k: [3, 3], stride: [2, 2], pad: [1, 1], kind: PoolFn::Max as u32 });
    parts.push(o);
    let o = mk(g, C, 2, 3);
    g.push(Op::Pool2d { out: o, x, k: [2, 2], stride: [2, 2], pad: [0, 0], kind: PoolFn::Max as u32 });
    parts.push(o);
    // Nearest resizing, up and down, with two coordinate maps and roundings.
    for (coord, sample, ho, wo) in [
        (ResizeCoord::Asymmetric, ResizeSample::Floor, 8, 12),
        (ResizeCoord::HalfPixel, ResizeSample::RoundPreferFloor, 7, 4),
        (ResizeCoord::AlignCorners, ResizeSample::RoundPreferCeil, 3, 9),
    ] {
        let o = mk(g, C, ho, wo);
        g.push(Op::Resize { out: o, x, mode: coord as u32 | (sample as u32) << 4 });
        parts.push(o);
    }
    // A reshape, then a permutation of the reshaped value.
    let r = mk(g, H, C, W);
    g.push(Op::Affine { out: r, x, mul: 1.0, add: 0.0 });
    let o = mk(g, C, H, W);
    g.push(Op::Permute {
        out: o,
        x: r,
        dims: [1, 1, 1, H, C, W].map(|d| d as u32),
        perm: perm_word([0, 1, 2, 4, 3, 5]),
    });
    parts.push(o);
    parts
}

#[test]
fn quantized_moves_are_the_f32_moves_bit_for_bit() {
    let want = run(&program(None, moves), Precision::F32);
    for dt in [DType::I8, DType::I16] {
        let p = program(Some(dt), moves);
        // Every move runs on the codes: one Quantize (the input) and one Dequantize per part.
        let conversions = p.g.ops.iter().filter(|op| matches!(op, Op::Quantize { .. } | Op::Dequantize { .. })).count();
        assert_eq!(conversions, 1 + 13, "{dt:?}");
        let got = run(&p, Precision::Int8);
        assert_eq!(got.len(), want.len());
        let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{dt:?}: {differ} of {} elements differ from f32", want.len());
    }
}

#[test]
fn average_pooling_of_codes_is_within_half_a_step_of_the_f32_mean() {
    let pools = |g: &mut Graph, x: u32, mk: Make<'_>| -> Vec<u32> {
        [PoolFn::Average, PoolFn::AverageWithPad]
            .map(|f| {
                let o = mk(g, C, 2, 3);
                g.push(Op::Pool2d { out: o, x, k: [3, 3], stride: [2, 2], pad: [1, 1], kind: f as u32 });
                o
            })
            .to_vec()
    };
    let want = run(&program(None, pools), Precision::F32);
    for dt in [DType::I8, DType::I16] {
        let got = run(&program(Some(dt), pools), Precision::Int8);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 0.5 * S * (1.0 + 1e-4), "{dt:?}: {worst} > S/2");
        // Not all exact: the test would pass a kernel that did not average.
        assert!(got.iter().zip(&want).any(|(a, b)| a != b), "{dt:?}: no mean needed rounding");
    }
}

/// The validation error of an int8 program with one op `bad` from the i8 sample to a value `out` (made by
/// `make`), or `None` if it validates.
fn refusal(make: impl Fn(&mut Graph) -> u32, bad: impl Fn(u32, u32) -> Op) -> Option<String> {
    let p = program(Some(DType::I8), |g, x, _| {
        let o = make(g);
        g.push(bad(o, x));
        vec![o]
    });
    blob(&p, Precision::Int8).model().err().map(|e| e.to_string())
}

#[test]
fn validation_refuses_moves_between_unlike_values() {
    const UNLIKE: &str = "differ in type, scale or zero point";
    let i8_at = |scale: f32, zero: i32| {
        move |g: &mut Graph| {
            let o = g.typed_value(C, H, W, DType::I8, scale);
            g.values[o as usize].zero = zero;
            o
        }
    };
    let permute = |out, x| Op::Permute {
        out,
        x,
        dims: [1, 1, 1, C, H, W].map(|d| d as u32),
        perm: perm_word([0, 1, 2, 3, 5, 4]),
    };
    let copy = |out, x| Op::Affine { out, x, mul: 1.0, add: 0.0 };
    let pool = |out, x| Op::Pool2d { out, x, k: [1, 1], stride: [1, 1], pad: [0, 0], kind: PoolFn::Max as u32 };
    // The same op between values of one coding validates.
    assert_eq!(refusal(i8_at(S, 0), permute), None);
    assert_eq!(refusal(i8_at(S, 0), copy), None);
    assert_eq!(refusal(i8_at(S, 0), pool), None);
    for (what, out) in [("another scale", i8_at(2.0 * S, 0)), ("a zero point", i8_at(S, 3))] {
        for (name, op) in [("Permute", &permute as &dyn Fn(u32, u32) -> Op), ("Affine", &copy), ("Pool2d", &pool)] {
            let e = refusal(out, op).unwrap_or_else(|| panic!("{name} to {what} validated"));
            assert!(e.contains(UNLIKE), "{name} to {what}: {e}");
        }
    }
    // Another type.
    let e = refusal(|g| g.typed_value(C, H, W, DType::I16, S), permute).expect("i8 → i16 validated");
    assert!(e.contains(UNLIKE), "{e}");
    // ConcatAxis with its second input at another scale.
    let p = program(Some(DType::I8), |g, x, _| {
        let b = g.typed_value(C, H, W, DType::I8, 2.0 * S);
        g.push(Op::Affine { out: b, x, mul: 1.0, add: 0.0 });
        let o = g.typed_value(C, 2 * H, W, DType::I8, S);
        g.push(Op::ConcatAxis { out: o, a: x, b, outer: C as u32, na: H as u32, nb: H as u32, inner: W as u32 });
        vec![o]
    });
    let e = blob(&p, Precision::Int8).model().expect_err("ConcatAxis of unlike inputs validated").to_string();
    assert!(e.contains(UNLIKE), "{e}");
}

#[test]
fn validation_refuses_quantized_forms_that_need_f32() {
    let same = |g: &mut Graph| g.typed_value(C, H, W, DType::I8, S);
    let padded = |g: &mut Graph| g.typed_value(C, H + 2, W, DType::I8, S);
    let pad = |value: f32, mode: PadMode| move |out, x| Op::Pad { out, x, pad: [1, 0, 1, 0], value, mode: mode as u32 };
    assert_eq!(refusal(padded, pad(-2.0 * S, PadMode::Constant)), None);
    assert_eq!(refusal(padded, pad(0.0, PadMode::Constant)), None);
    // Half a step: no code stands for it (f32 programs pad with it).
    let e = refusal(padded, pad(0.5 * S, PadMode::Constant)).expect("a constant between codes validated");
    assert!(e.contains("pads with a constant"), "{e}");
    let e = refusal(padded, pad(200.0 * S, PadMode::Constant)).expect("a constant past the codes validated");
    assert!(e.contains("pads with a constant"), "{e}");
    // Reflection does not read the constant.
    assert_eq!(refusal(padded, pad(0.5 * S, PadMode::Reflect)), None);
    let resize = |sample: ResizeSample| move |out, x| Op::Resize { out, x, mode: (sample as u32) << 4 };
    assert_eq!(refusal(same, resize(ResizeSample::Floor)), None);
    let e = refusal(same, resize(ResizeSample::Linear)).expect("bilinear resize of codes validated");
    assert!(e.contains("nearest-neighbour"), "{e}");
    let e = refusal(same, |out, x| Op::Affine { out, x, mul: 2.0, add: 0.0 }).expect("affine map of codes validated");
    assert!(e.contains("reshape only"), "{e}");
    let e = refusal(same, |out, x| Op::Affine { out, x, mul: 1.0, add: S }).expect("affine map of codes validated");
    assert!(e.contains("reshape only"), "{e}");
}

#[test]
fn integer_values_belong_to_int8_blobs_only() {
    let p = program(Some(DType::I8), moves);
    assert!(blob(&p, Precision::Int8).model().is_ok());
    for precision in [Precision::F32, Precision::F16] {
        let e = blob(&p, precision).model().expect_err("integer values in a float blob validated").to_string();
        // Value 2 is the quantized sample, the first integer value.
        assert!(e.contains("activation #2 is malformed"), "{precision:?}: {e}");
    }
}

/// The converter's choice for an axis concatenation of two values that calibrate to very different ranges (two
/// 1×1 convolutions whose kernels differ 100-fold): the finer one is requantized to the coarser one's scale
/// (a `QAdd` with itself at weight 0) and the concatenation runs on codes, within 1.25 steps of the output's
/// scale of the f32 program's output.
#[test]
fn a_concatenation_of_two_scales_requantizes_one_and_moves_codes() {
    let mut g = Graph::default();
    let input = g.value(C * H * W, 1, 1);
    let x = g.value(C, H, W);
    g.push(Op::Affine { out: x, x: input, mul: 1.0, add: 0.0 });
    let half = |g: &mut Graph, gain: f32, start: u32| {
        let w = g.tensor("w", vec![C, C, 1, 1], vec![gain, -0.5 * gain, 0.25 * gain, gain]);
        let b = g.tensor("b", vec![C], vec![0.1 * gain, -0.2 * gain]);
        let y = g.value(C, H, W);
        g.push(Op::Conv2d { out: y, x, w, b, stride: 1, pad: [0; 4], scratch: ddpm_convert::graph::SCRATCH });
        let o = g.value(C, H, W / 2);
        let (outer, n, count) = ((C * H) as u32, W as u32, (W / 2) as u32);
        g.push(Op::Slice { out: o, x: y, outer, n, inner: 1, start, step: 1, count });
        o
    };
    let (a, b) = (half(&mut g, 0.1, 0), half(&mut g, 10.0, (W / 2) as u32));
    let cat = g.value(C, H, W);
    g.push(Op::ConcatAxis { out: cat, a, b, outer: (C * H) as u32, na: (W / 2) as u32, nb: (W / 2) as u32, inner: 1 });
    let output = g.value(C * H * W, 1, 1);
    g.push(Op::Affine { out: output, x: cat, mul: 1.0, add: 0.0 });
    let p = Program { g, input, output, out_len: C * H * W };
    let hdr = |precision| ModelHeader {
        precision,
        in_channels: C * H * W,
        out_channels: C * H * W,
        height: 1,
        width: 1,
        num_classes: 0,
        schedule: Schedule::DDPM_DEFAULT,
        config_json: "{}".into(),
    };
    let cal = ddpm_convert::Calibration { trajectories: 2, steps: 8, ..Default::default() };
    let (bytes, _) =
        ddpm_convert::precision::int8::to_int8(&p.g, &hdr(Precision::F32), p.input, p.output, &cal).expect("int8");
    let q = AlignedBlob::from_bytes(&bytes);
    let m = q.model().expect("valid");
    let ops: Vec<Op> = (0..m.num_ops()).map(|i| m.op(i).unwrap()).collect();
    let concat = ops.iter().find_map(|op| match *op {
        Op::ConcatAxis { out, a, b, .. } => Some([out, a, b].map(|v| m.value(v).unwrap())),
        _ => None,
    });
    let [o, a, b] = concat.expect("a ConcatAxis");
    assert!(o.dtype == DType::I8 && a.dtype == DType::I8 && b.dtype == DType::I8, "{o:?} {a:?} {b:?}");
    assert!(ops.iter().any(|op| matches!(op, Op::QAdd { a, b, mb: 0, .. } if a == b)), "no requantizing QAdd");
    // Against the f32 program, on an input inside the range calibration saw (x_t of unit variance).
    let x: Vec<f32> = (0..C * H * W).map(|i| ((i as i32 * 37) % 61 - 30) as f32 / 30.0).collect();
    let f = blob(&p, Precision::F32);
    let fm = f.model().unwrap();
    let mut want = vec![0f32; C * H * W];
    let mut arena = vec![0u8; fm.arena_bytes() + 16];
    fm.forward(&mut arena, &x, 10.0, None, &mut want).expect("forward");
    let mut got = vec![0f32; C * H * W];
    let mut arena = vec![0u8; m.arena_bytes() + 16];
    m.forward(&mut arena, &x, 10.0, None, &mut got).expect("forward");
    let big = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = got.iter().zip(&want).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
    eprintln!(
        "two-scale concatenation: int8 max abs err {err:.3e} = {:.4} x max|f32| = {:.2} steps of the output",
        err / big,
        err / o.scale
    );
    // Rounding to the output's step (half a step) on top of the convolutions' own rounding.
    assert!(err <= 1.25 * o.scale, "{err} > 1.25 steps of {}", o.scale);
    assert_eq!((a.scale, b.scale), (o.scale, o.scale), "the concatenated codes are not at the output's scale");
}
