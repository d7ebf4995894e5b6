//! ONNX import parity: PyTorch UNets exported with both of torch's exporters convert and run like PyTorch.
//!
//! Fixtures: `tests/fixtures/onnx/<model>/` made by `python3 tests/fixtures/make_onnx_fixtures.py` (PyTorch eager
//! outputs at t = 0, T/2, T−1 for a fixed sample). Bounds, relative to the largest reference magnitude: f32
//! 1e-4 (the ops run in f32 like PyTorch's; sums in another order differ by a few ulps per op, measured below
//! 1e-6), f16 5e-3 (weights rounded to half: relative error 2^-11 per weight, accumulated over a few layers).

use std::path::{Path, PathBuf};

use ddpm_convert::onnx::{convert_onnx, read_onnx, OnnxRequest};
use ddpm_convert::{AlignedBlob, Calibration};
use ddpm_core::Precision;

fn fixtures(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx").join(model)
}

/// `host-cli convert INPUT --precision P` with nothing else set, for the native conversion of a folder.
fn native_args(input: &Path, precision: Precision) -> ddpm_convert::ConvertArgs {
    ddpm_convert::ConvertArgs::new(input, precision)
}

fn npy(p: &Path) -> Vec<f32> {
    ddpm_convert::load::read_npy(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).1
}

fn convert(path: &Path, precision: Precision) -> (AlignedBlob, Vec<String>) {
    let model = read_onnx(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let out = convert_onnx(OnnxRequest {
        model,
        options: Default::default(),
        scheduler: None,
        scheduler_overrides: Default::default(),
        precision,
        calibration: Calibration::default(),
    })
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (AlignedBlob::from_bytes(&out.blob), out.notes)
}

/// Largest |ours − ref| over the fixture's timesteps, and the largest |ref|.
fn worst(model: &str, file: &str, precision: Precision) -> (f32, f32) {
    let dir = fixtures(model);
    let (blob, _) = convert(&dir.join(file), precision);
    forward_error(&blob, &dir)
}

/// Largest |blob's forward − ref| over the timesteps of fixture folder `dir`, and the largest |ref|.
fn forward_error(blob: &AlignedBlob, dir: &Path) -> (f32, f32) {
    let m = blob.model().expect("valid blob");
    let x = npy(&dir.join("x.npy"));
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).expect("case.json")).expect("json");
    let label = case.get("label").and_then(|l| l.as_u64()).map(|l| l as u32);
    let mut arena = vec![0u8; m.arena_bytes() + 16];
    let (mut err, mut big) = (0.0f32, 0.0f32);
    for t in [0u32, 500, 999] {
        let want = npy(&dir.join(format!("out_{t}.npy")));
        let mut got = vec![0.0; want.len()];
        m.forward(&mut arena, &x, t as f32, label, &mut got).expect("forward");
        for (a, b) in got.iter().zip(&want) {
            err = err.max((a - b).abs());
            big = big.max(b.abs());
        }
    }
    (err, big)
}

/// f32 within 1e-4 and f16 within 5e-3 of max |ref| through both exporters.
fn matches_pytorch(model: &str) {
    for file in ["dynamo.onnx", "legacy.onnx"] {
        let (e32, big) = worst(model, file, Precision::F32);
        eprintln!("{model}/{file} f32: max abs err {e32:.3e}, max |ref| {big:.3}");
        assert!(e32 <= 1e-4 * big, "{model}/{file} f32: {e32} > 1e-4 x {big}");
        let (e16, _) = worst(model, file, Precision::F16);
        eprintln!("{model}/{file} f16: max abs err {e16:.3e}");
        assert!(e16 <= 5e-3 * big, "{model}/{file} f16: {e16} > 5e-3 x {big}");
    }
}

#[test]
fn tutorial_unet_matches_pytorch_through_both_exporters() {
    matches_pytorch("tutorial");
}

/// The class-conditional tutorial UNet: the label's embedding table and the timestep's are tabulated apart and
/// added in the program; the blob is class-conditional (10 classes, found from the table), and the label matters.
#[test]
fn class_conditional_tutorial_unet_matches_pytorch() {
    matches_pytorch("tutorial_class");
    let dir = fixtures("tutorial_class");
    let (blob, notes) = convert(&dir.join("legacy.onnx"), Precision::F32);
    assert!(notes.iter().any(|n| n.contains("class-label input y (10 classes)")), "{notes:?}");
    let m = blob.model().unwrap();
    assert_eq!(m.num_classes(), 10);
    let x = npy(&dir.join("x.npy"));
    let mut arena = vec![0u8; m.arena_bytes() + 16];
    let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    m.forward(&mut arena, &x, 500.0, Some(3), &mut a).unwrap();
    m.forward(&mut arena, &x, 500.0, Some(4), &mut b).unwrap();
    assert_ne!(a, b, "the class label changes nothing");
    assert!(m.forward(&mut arena, &x, 500.0, None, &mut b).is_err(), "a missing label ran");
    assert!(m.forward(&mut arena, &x, 500.0, Some(10), &mut b).is_err(), "label 10 of 10 classes ran");
    // A class count for a graph without labels is a mistake, not something to ignore.
    let mut options = serde_json::Map::new();
    options.insert("num_classes".into(), 10.into());
    let e = convert_onnx(OnnxRequest {
        model: read_onnx(&fixtures("tutorial").join("legacy.onnx")).unwrap(),
        options,
        scheduler: None,
        scheduler_overrides: Default::default(),
        precision: Precision::F32,
        calibration: Calibration::default(),
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("no class-label input"), "{e}");
}

/// lucidrains' `Unet`: RMSNorm as `ReduceL2`/`Clip`/`Div`, attention as `Einsum`/`Softmax`, memory key/values
/// concatenated on the token axis, pixel-unshuffle as a six-dimensional `Transpose`, `Split` chunks.
#[test]
fn lucidrains_unet_matches_pytorch_through_both_exporters() {
    matches_pytorch("lucidrains");
}

#[test]
fn lucidrains_unet_with_learned_sinusoidal_features_matches_pytorch() {
    matches_pytorch("lucidrains_learned");
}

/// GroupNorm (exported as `InstanceNormalization` on a reshaped tensor, or `GroupNormalization`), `bmm`
/// attention and `nn.MultiheadAttention` on tokens (`MatMul` by weights on every token row), BatchNorm.
#[test]
fn groupnorm_attention_unet_matches_pytorch_through_both_exporters() {
    matches_pytorch("attention");
}

/// MaxPool and bilinear (align_corners) resampling as the other tutorial family writes them, with depthwise and
/// dilated convolutions, reflection padding, average pooling and pixel (un)shuffle.
#[test]
fn pooling_bilinear_unet_matches_pytorch_through_both_exporters() {
    matches_pytorch("pooling");
}

/// A diffusers `UNet2DModel` through ONNX samples like its native conversion: the same schedule, the same noise,
/// DDIM over 10 steps. Both blobs' forwards are within a few 1e-6 of PyTorch; the first DDIM step divides the
/// noise prediction's error by sqrt(ᾱ_999) = 0.0064 (linear betas), so the images (in [-1, 1]) may differ by
/// up to ~160 × 1e-5 × max|ε| (3.7 here): the bound is 5e-3, and the measured difference is printed.
#[test]
fn diffusers_unet_through_onnx_samples_like_the_native_conversion() {
    use ddpm_core::sampler::{Method, SampleSpec, Sampler};
    matches_pytorch("diffusers");
    let dir = fixtures("diffusers");
    let native =
        ddpm_convert::convert_path(&native_args(&dir.join("unet"), Precision::F32)).expect("native conversion");
    let native = AlignedBlob::from_bytes(&native.blob);
    let spec =
        SampleSpec { method: Method::Ddim { eta: 0.0 }, steps: 10, batch: 1, seed: 3, class: None, first_image: 0 };
    let run = |blob: &AlignedBlob| -> Vec<f32> {
        let m = blob.model().expect("valid blob");
        let s = Sampler::new(&m, spec).expect("sampler");
        let mut arena = vec![0u8; s.arena_bytes() + 16];
        let mut st = s.start(&mut arena, None).expect("start");
        while st.done < s.num_steps() {
            s.step(&mut arena, &mut st, None).expect("step");
        }
        s.samples(&arena).to_vec()
    };
    let want = run(&native);
    for file in ["dynamo.onnx", "legacy.onnx"] {
        let (onnx, _) = convert(&dir.join(file), Precision::F32);
        let got = run(&onnx);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let big = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("diffusers/{file}: DDIM-10 sample vs native max abs diff {err:.3e}, max |native| {big:.3}");
        assert!(big > 0.5 && err <= 5e-3, "diffusers/{file}: {err} > 5e-3 (max |native| {big})");
    }
}

#[test]
fn a_float_timestep_chain_is_tabulated_and_matches_pytorch() {
    for file in ["dynamo.onnx", "legacy.onnx"] {
        let (e32, big) = worst("sinusoidal", file, Precision::F32);
        eprintln!("sinusoidal/{file} f32: max abs err {e32:.3e}, max |ref| {big:.3}");
        assert!(e32 <= 1e-4 * big, "sinusoidal/{file} f32: {e32} > 1e-4 x {big}");
    }
}

#[test]
fn a_timestep_outside_the_table_is_an_error() {
    let (blob, notes) = convert(&fixtures("tutorial").join("dynamo.onnx"), Precision::F32);
    assert!(notes.iter().any(|n| n.contains("tabulated")), "{notes:?}");
    let m = blob.model().unwrap();
    let x = vec![0.0; 28 * 28];
    let mut out = vec![0.0; 28 * 28];
    let mut arena = vec![0u8; m.arena_bytes() + 16];
    for t in [1000.0, 2.5, -1.0] {
        let e = m.forward(&mut arena, &x, t, None, &mut out).unwrap_err();
        assert!(matches!(e, ddpm_core::RunError::TimestepNotInTable { rows: 1000 }), "t = {t}: {e}");
    }
}

/// int8 on imported programs: convolutions and linear layers become integer ops, calibrated along sampling
/// trajectories as for UNet2DModel programs; ops without an integer kernel run in f32 between them. Bound: 0.15 ×
/// max|ref| (these random-weight fixtures measure 8-11 %, the natively converted diffusers model 7.5 %), and the
/// diffusers model through ONNX within 1.25× the error of its native int8 conversion with the same calibration.
#[test]
fn int8_calibrates_imported_programs_as_native_ones() {
    let int8 = |model: &str, cal: Calibration| -> (f32, f32) {
        let dir = fixtures(model);
        let req = OnnxRequest {
            model: read_onnx(&dir.join("legacy.onnx")).unwrap(),
            options: Default::default(),
            scheduler: None,
            scheduler_overrides: Default::default(),
            precision: Precision::Int8,
            calibration: cal,
        };
        let out = convert_onnx(req).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert!(out.notes.iter().any(|n| n.contains("run in f32")), "{model}: {:?}", out.notes);
        forward_error(&AlignedBlob::from_bytes(&out.blob), &dir)
    };
    for model in ["tutorial", "tutorial_class", "attention", "pooling"] {
        let (err, big) = int8(model, Calibration::default());
        eprintln!("{model} int8: max abs err {err:.3e} = {:.3} x max|ref|", err / big);
        assert!(err <= 0.15 * big, "{model} int8: {err} > 0.15 x {big}");
    }
    let (onnx, big) = int8("diffusers", Calibration::default());
    let native = ddpm_convert::convert_path(&native_args(&fixtures("diffusers").join("unet"), Precision::Int8))
        .expect("native int8 conversion");
    let (native, _) = forward_error(&AlignedBlob::from_bytes(&native.blob), &fixtures("diffusers"));
    eprintln!("diffusers int8: through ONNX {:.3} x max|ref|, native {:.3} x", onnx / big, native / big);
    assert!(
        onnx <= 0.15 * big && onnx <= 1.25 * native,
        "diffusers int8: ONNX {onnx}, native {native}, max|ref| {big}"
    );
}

/// int8 programs keep values quantized through the data-movement ops: none of those that run in f32 reads a
/// dequantized value unless its quantized form does not apply (an axis concatenation of values of different
/// types or with zero points, a bilinear resize, a padding constant no code stands for), on every fixture whose
/// program has them.
#[test]
fn int8_data_movement_runs_on_quantized_values() {
    use ddpm_core::program::{Op, Role};
    for model in ["lucidrains", "attention", "pooling", "diffusers"] {
        // The program's structure, not its accuracy: a short calibration does.
        let out = convert_onnx(OnnxRequest {
            model: read_onnx(&fixtures(model).join("legacy.onnx")).unwrap(),
            options: Default::default(),
            scheduler: None,
            scheduler_overrides: Default::default(),
            precision: Precision::Int8,
            calibration: Calibration { trajectories: 1, steps: 4, ..Calibration::default() },
        })
        .unwrap_or_else(|e| panic!("{model}: {e}"));
        let blob = AlignedBlob::from_bytes(&out.blob);
        let m = blob.model().unwrap();
        let ops: Vec<Op> = (0..m.num_ops()).map(|i| m.op(i).unwrap()).collect();
        // The source of each dequantized value.
        let dequantized: std::collections::HashMap<u32, u32> = ops
            .iter()
            .filter_map(|op| match *op {
                Op::Dequantize { out, x } => Some((out, x)),
                _ => None,
            })
            .collect();
        let coding = |v: u32| m.value(v).map(|v| (v.dtype, v.scale.to_bits(), v.zero));
        let (mut quantized, mut float) = (0, 0);
        for (i, op) in ops.iter().enumerate() {
            let moves = match *op {
                Op::Permute { .. } | Op::Slice { .. } | Op::ConcatAxis { .. } | Op::Pool2d { .. } | Op::Pad { .. } => {
                    true
                }
                Op::Resize { mode, .. } => mode >> 4 != 0,
                Op::Affine { mul, add, .. } => mul == 1.0 && add == 0.0,
                _ => false,
            };
            if !moves {
                continue;
            }
            let mut inputs = Vec::new();
            op.for_each_value(|v, role| {
                if role == Role::In {
                    inputs.push(v)
                }
            });
            if m.value(inputs[0]).unwrap().dtype.is_quantized() {
                quantized += 1;
                continue;
            }
            float += 1;
            let sources: Option<Vec<u32>> = inputs.iter().map(|v| dequantized.get(v).copied()).collect();
            let Some(sources) = sources else { continue };
            let x = m.value(sources[0]).unwrap();
            // Values of one coding concatenate on codes; so do values of one type without zero points at two
            // scales (one is requantized).
            let alike = sources.iter().all(|&s| coding(s) == coding(sources[0]))
                || sources.iter().all(|&s| coding(s).map(|c| (c.0, c.2)) == Some((x.dtype, 0)));
            let code = |value: f32| ddpm_core::ops::pad_code(value, x.scale, x.zero, x.dtype.qmax()).is_some();
            let needs_f32 = match *op {
                Op::Pad { value, mode, .. } => mode == 0 && !code(value),
                Op::ConcatAxis { .. } => !alike,
                _ => false,
            };
            assert!(needs_f32, "{model}: op {i} ({}) runs in f32 on dequantized values", op.name());
        }
        eprintln!("{model} int8: {quantized} data-movement ops on quantized values, {float} on f32 ones");
        assert!(quantized > 0, "{model}: no data-movement op runs on quantized values");
    }
}

#[test]
fn hostile_or_unsupported_files_are_errors() {
    let e = ddpm_convert::onnx::parse(b"\x08\x07garbage\xff\xff", None).unwrap_err().to_string();
    assert!(e.contains("not an ONNX model"), "{e}");
    let lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n";
    assert!(ddpm_convert::onnx::parse(lfs, None).unwrap_err().to_string().contains("git lfs pull"));
    // Found by the onnx fuzz target, each an error naming what is wrong (they were a blob the validator refused,
    // an index past a node's inputs, and a 4 KB file whose folded constants took half a minute).
    for (file, needles) in [
        ("negative-layernorm-epsilon.onnx", &["LayerNormalization", "epsilon"][..]),
        ("matmul-with-one-input.onnx", &["MatMul", "input 1 is missing"][..]),
        ("large-folded-constants.onnx", &["ConstantOfShape", "constant folding makes more than"][..]),
    ] {
        let regression = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/onnx").join(file);
        let mut sched = serde_json::Map::new();
        sched.insert("num_train_timesteps".into(), 8.into());
        let e = convert_onnx(OnnxRequest {
            model: read_onnx(&regression).unwrap(),
            options: Default::default(),
            scheduler: Some(sched),
            scheduler_overrides: Default::default(),
            precision: Precision::F32,
            calibration: Calibration::default(),
        })
        .unwrap_err()
        .to_string();
        assert!(needles.iter().all(|n| e.contains(n)), "{file}: {e}");
    }
    let bytes = std::fs::read(fixtures("tutorial").join("legacy.onnx")).unwrap();
    for cut in [10, bytes.len() / 3, bytes.len() - 7] {
        assert!(ddpm_convert::onnx::parse(&bytes[..cut], None).is_err(), "a file cut at {cut} bytes parsed");
    }
}
