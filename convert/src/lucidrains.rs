//! lucidrains' `denoising-diffusion-pytorch` (2.x) → program, by name mapping: the `Unet` of
//! `denoising_diffusion_pytorch/denoising_diffusion_pytorch.py`, read from a `Trainer.save` file
//! (`results/model-N.pt`: `step`, `model`, `opt`, `ema`, `scaler`, `version`) or from a bare
//! `Unet.state_dict()`.
//!
//! The container: the loader picks the `ema` entry, an `ema_pytorch.EMA` state dict (`ema_model.model.*`: the
//! EMA copy of `GaussianDiffusion`, `online_model.*`: the online one, dropped here). Older files name the
//! network `denoise_fn` instead of `model`. `GaussianDiffusion`'s buffers give the schedule (`betas`, checked
//! against `alphas_cumprod`); the objective is not stored and defaults to `GaussianDiffusion`'s `pred_v`.
//!
//! The architecture comes from the tensors' shapes, module by module (widths, attention heads and head size,
//! full or linear attention, learned or fixed sinusoidal features, learned variance). `Unet.forward` lowers to
//! the ops the ONNX importer emits for the same graph: `RMSNorm` as an L2 `Reduce`, a clamp and two broadcast
//! products; attention as `MatMul`/`Softmax` with the memory key/values concatenated on the token axis; the
//! pixel-unshuffle downsample folded into a 2×2 stride-2 convolution. Variants the mapping does not know
//! (self-conditioning, another `out_dim`, the 1.x blocks) are errors that point to the ONNX route.

use std::collections::BTreeMap;

use ddpm_core::ops::{BinaryFn, ReduceFn, UnaryFn};
use ddpm_core::program::Op;
use ddpm_core::Precision;
use serde_json::{json, Map, Value};

use crate::diffusers::scheduler;
use crate::error::Result;
use crate::graph::{Graph, ModelHeader, SCRATCH};
use crate::load::{StateDict, Tensor};
use crate::precision::int8::Calibration;
use crate::{bail, err, Converted};

/// Where an unsupported variant converts instead.
const ONNX_HINT: &str = "any variant converts through ONNX: torch.onnx.export(unet, (x, t), \"model.onnx\") \
                         where it was trained, then `host-cli convert model.onnx`";

/// Most resolution levels a Unet may have (each halves the sample size).
const MAX_LEVELS: usize = 16;

/// Most entries of a tabulated timestep embedding (timesteps × features): 256 MiB of f32.
const MAX_TABLE: usize = 1 << 26;

/// The `--set` options of this family.
const OPTIONS: &str = "objective (pred_v, pred_noise, pred_x0), sample_size (N or [H, W]), sinusoidal_pos_emb_theta";

/// Whether a state dict (after the loader picked an entry) holds lucidrains' `Unet`, bare or inside a
/// `GaussianDiffusion` / EMA container.
pub fn recognise(sd: &StateDict) -> bool {
    let has = |suffix: &str| sd.tensors.keys().any(|n| n == suffix || n.ends_with(&format!(".{suffix}")));
    has("init_conv.weight") && has("final_conv.weight") && sd.tensors.keys().any(|n| n.contains("mid_block1."))
}

/// What to convert, in memory.
pub struct LucidrainsRequest {
    /// The checkpoint's tensors (a Trainer's `ema` entry, a `GaussianDiffusion` or a bare `Unet` state dict).
    pub state_dict: StateDict,
    /// `--set` options: see [`OPTIONS`].
    pub options: Map<String, Value>,
    /// A scheduler config; for a bare `Unet` the schedule comes from it (diffusers' `DDPMScheduler()`
    /// defaults without one).
    pub scheduler: Option<Map<String, Value>>,
    /// Scheduler entries that override it, and the schedule read from the file (`--scheduler-set`).
    pub scheduler_overrides: Map<String, Value>,
    /// Precision of the blob.
    pub precision: Precision,
    /// Activation calibration of an int8 conversion.
    pub calibration: Calibration,
}

/// `GaussianDiffusion`'s `objective`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Objective {
    PredNoise,
    PredX0,
    PredV,
}

impl Objective {
    fn name(self) -> &'static str {
        match self {
            Objective::PredNoise => "pred_noise",
            Objective::PredX0 => "pred_x0",
            Objective::PredV => "pred_v",
        }
    }
    /// The diffusers `prediction_type` of the same output.
    fn prediction_type(self) -> &'static str {
        match self {
            Objective::PredNoise => "epsilon",
            Objective::PredX0 => "sample",
            Objective::PredV => "v_prediction",
        }
    }
}

struct Options {
    objective: Option<Objective>,
    size: Option<(usize, usize)>,
    theta: f32,
}

fn options(m: &Map<String, Value>) -> Result<Options> {
    let mut o = Options { objective: None, size: None, theta: 10000.0 };
    for (k, v) in m {
        match k.as_str() {
            "objective" => {
                o.objective = Some(match v.as_str() {
                    Some("pred_v") => Objective::PredV,
                    Some("pred_noise") => Objective::PredNoise,
                    Some("pred_x0") => Objective::PredX0,
                    _ => bail!(Config, "objective must be pred_v, pred_noise or pred_x0, not {v}"),
                })
            }
            "sample_size" | "image_size" => {
                let dim = |x: &Value| x.as_u64().filter(|&d| (1..=65536).contains(&d)).map(|d| d as usize);
                o.size = match v {
                    Value::Array(a) if a.len() == 2 => dim(&a[0]).zip(dim(&a[1])),
                    x => dim(x).map(|d| (d, d)),
                };
                if o.size.is_none() {
                    bail!(Config, "{k} must be N or [H, W] with sizes 1..65536, not {v}");
                }
            }
            "sinusoidal_pos_emb_theta" => match v.as_f64() {
                Some(t) if t.is_finite() && t > 1.0 => o.theta = t as f32,
                _ => bail!(Config, "sinusoidal_pos_emb_theta must be a number above 1, not {v}"),
            },
            "self_condition" if v.as_bool() == Some(true) => bail!(
                Config,
                "lucidrains Unet with self_condition=True: the network takes its own previous x_start estimate as \
                 input, which the samplers here do not feed; {ONNX_HINT} (with x_self_cond zeros, if that is wanted)"
            ),
            "self_condition" => {}
            other => bail!(Config, "unknown option {other:?} for a lucidrains Unet (known: {OPTIONS})"),
        }
    }
    Ok(o)
}

/// `GaussianDiffusion`'s buffers that are not the network's.
const BUFFERS: [&str; 13] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "loss_weight",
];

/// Splits the container: the Unet's tensors (prefix removed) and `GaussianDiffusion`'s buffers.
fn split(sd: StateDict, notes: &mut Vec<String>) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, Tensor>)> {
    let mut t = sd.tensors;
    let online = t.keys().filter(|k| k.starts_with("online_model.")).count();
    if t.keys().any(|k| k.starts_with("ema_model.")) {
        t = t.into_iter().filter_map(|(k, v)| k.strip_prefix("ema_model.").map(|s| (s.to_string(), v))).collect();
        notes.push(format!(
            "lucidrains EMA state dict: using the EMA weights (ema_model.*){}",
            if online > 0 {
                format!("; the online model's {online} tensors (online_model.*) are dropped")
            } else {
                String::new()
            }
        ));
    } else if online > 0 {
        bail!(Checkpoint, "an EMA state dict with online_model.* tensors but no ema_model.* ones");
    }
    let prefix = ["model.", "denoise_fn."].into_iter().find(|p| t.keys().any(|k| k.starts_with(p)));
    let mut unet = BTreeMap::new();
    let mut buffers = BTreeMap::new();
    for (k, v) in t {
        if BUFFERS.contains(&k.as_str()) {
            buffers.insert(k, v);
        } else if let Some(p) = prefix {
            match k.strip_prefix(p) {
                Some(s) => {
                    unet.insert(s.to_string(), v);
                }
                None => bail!(Model, "tensor '{k}' is neither the network's ({p}*) nor a GaussianDiffusion buffer"),
            }
        } else {
            unet.insert(k, v);
        }
    }
    if let Some(p) = prefix {
        notes.push(format!("lucidrains GaussianDiffusion: the Unet is {p}*, {} buffers beside it", buffers.len()));
    }
    Ok((unet, buffers))
}

/// The schedule the file stores: `betas` as trained betas, checked against `alphas_cumprod` = Π(1 − β).
fn stored_schedule(buffers: &BTreeMap<String, Tensor>, notes: &mut Vec<String>) -> Result<Option<Vec<f32>>> {
    let Some(betas) = buffers.get("betas") else {
        return Ok(None);
    };
    if betas.shape.len() != 1 || betas.data.is_empty() {
        bail!(Checkpoint, "GaussianDiffusion buffer 'betas': expected [T], found {:?}", betas.shape);
    }
    if let Some(ac) = buffers.get("alphas_cumprod") {
        if ac.shape != betas.shape {
            bail!(Checkpoint, "buffers 'betas' {:?} and 'alphas_cumprod' {:?} differ in length", betas.shape, ac.shape);
        }
        // Both buffers were computed in f64 and stored as f32: the product of the rounded betas stays within a
        // few f32 ulps per step of the stored one.
        let mut prod = 1.0f64;
        for (i, (&b, &a)) in betas.data.iter().zip(&ac.data).enumerate() {
            prod *= 1.0 - b as f64;
            let diff = (prod - a as f64).abs();
            if diff.is_nan() || diff > 1e-6 + 1e-4 * (a as f64).abs() {
                bail!(
                    Checkpoint,
                    "GaussianDiffusion buffers disagree: alphas_cumprod[{i}] = {a} but the product of (1 - betas) up \
                     to it is {prod}"
                );
            }
        }
    }
    notes.push(format!("schedule: the file's {} trained betas (checked against its alphas_cumprod)", betas.data.len()));
    Ok(Some(betas.data.clone()))
}

/// Converts a lucidrains `Unet` (bare or in its containers) into a blob.
pub fn convert(r: LucidrainsRequest) -> Result<Converted> {
    let mut notes = Vec::new();
    let opts = options(&r.options)?;
    let (mut sd, buffers) = split(r.state_dict, &mut notes)?;
    let arch = Arch::infer(&sd)?;
    let Some((height, width)) = opts.size else {
        bail!(Config, "a lucidrains Unet works at any size its file does not store: give --set sample_size=N (GaussianDiffusion's image_size)");
    };
    let factor = 1usize << (arch.levels - 1);
    if !height.is_multiple_of(factor) || !width.is_multiple_of(factor) {
        bail!(
            Config,
            "sample_size {height}x{width}: this Unet halves the size {} times, so both sides must divide by {factor}",
            arch.levels - 1
        );
    }

    // The objective: GaussianDiffusion's default unless given; LearnedGaussianDiffusion always predicts noise.
    let objective = if arch.learned_variance {
        if opts.objective.is_some_and(|o| o != Objective::PredNoise) {
            bail!(
                Config,
                "a learned-variance Unet (LearnedGaussianDiffusion) predicts noise: objective must be pred_noise"
            );
        }
        notes.push("learned variance (out_dim = 2 x channels): LearnedGaussianDiffusion, noise prediction with variance_type learned_range".into());
        Objective::PredNoise
    } else if let Some(o) = opts.objective {
        o
    } else {
        notes.push("objective not stored in the file: assuming GaussianDiffusion's default pred_v (v_prediction); pass --set objective=pred_noise or pred_x0 if it was trained otherwise".into());
        Objective::PredV
    };

    let mut sched = Map::new();
    sched.insert("prediction_type".into(), json!(objective.prediction_type()));
    // p_mean_variance clamps x_start to [-1, 1] (clip_denoised) when sampling.
    sched.insert("clip_sample".into(), json!(true));
    sched.insert("clip_sample_range".into(), json!(1.0));
    if arch.learned_variance {
        sched.insert("variance_type".into(), json!("learned_range"));
    }
    match stored_schedule(&buffers, &mut notes)? {
        Some(betas) => {
            sched.insert("num_train_timesteps".into(), json!(betas.len()));
            sched.insert("trained_betas".into(), json!(betas));
            if let Some(user) = r.scheduler {
                sched.extend(user);
            }
        }
        None => match r.scheduler {
            Some(user) => sched.extend(user),
            None => notes.push(
                "bare Unet state dict, no schedule in the file: using DDPMScheduler defaults (1000 linear betas \
                     1e-4..0.02, lucidrains' linear_beta_schedule(1000)); give --scheduler or --scheduler-set \
                     (e.g. trained_betas=[...]) for another"
                    .into(),
            ),
        },
    }
    let mut probe_json = sched.clone();
    probe_json.extend(r.scheduler_overrides.clone());
    let (probe, _) = scheduler::from_json(&probe_json, &mut Graph::default())?;

    let mut b = Builder { g: Graph::default(), sd: &mut sd, timesteps: probe.num_train_timesteps as usize };
    let (mut graph, input, output) = b.unet(&arch, opts.theta, height, width)?;
    if !sd.is_empty() {
        let names: Vec<&str> = sd.keys().take(5).map(String::as_str).collect();
        bail!(
            Model,
            "{} tensors are not used by the lucidrains Unet mapping (e.g. {}): an unrecognised variant; {ONNX_HINT}",
            sd.len(),
            names.join(", ")
        );
    }
    let schedule =
        crate::schedule(Some(sched), r.scheduler_overrides, &mut graph, arch.channels, arch.out_dim, &mut notes)?;
    notes.push(format!(
        "lucidrains Unet: dim {}, init_dim {}, dim_mults {:?}, channels {}, out_dim {}, full_attn {:?}, {} time features",
        arch.dim,
        arch.init_dim,
        arch.dim_mults,
        arch.channels,
        arch.out_dim,
        arch.full_attn,
        if arch.learned_time { "learned sinusoidal" } else { "sinusoidal" }
    ));
    let config = json!({
        "_class_name": "lucidrains.Unet",
        "dim": arch.dim,
        "init_dim": arch.init_dim,
        "dim_mults": arch.dim_mults,
        "channels": arch.channels,
        "out_dim": arch.out_dim,
        "learned_variance": arch.learned_variance,
        "learned_sinusoidal_cond": arch.learned_time,
        "full_attn": arch.full_attn,
        "objective": objective.name(),
        "sample_size": [height, width],
    });
    let hdr = ModelHeader {
        precision: r.precision,
        in_channels: arch.channels,
        out_channels: arch.out_dim,
        height,
        width,
        num_classes: 0,
        schedule,
        config_json: config.to_string(),
    };
    let blob = crate::emit_checked(&graph, &hdr, input, output, &r.calibration, &mut notes)?;
    Ok(Converted { blob, notes })
}

/// What the shapes tell of the `Unet`'s constructor arguments (for checks, notes and `inspect`; the builder
/// reads every module's own shapes again).
struct Arch {
    dim: usize,
    init_dim: usize,
    dim_mults: Vec<usize>,
    channels: usize,
    out_dim: usize,
    levels: usize,
    learned_variance: bool,
    learned_time: bool,
    full_attn: Vec<bool>,
}

impl Arch {
    fn infer(sd: &BTreeMap<String, Tensor>) -> Result<Arch> {
        let shape = |n: &str| {
            sd.get(n).map(|t| t.shape.clone()).ok_or_else(|| {
                err!(Model, "lucidrains Unet: missing tensor '{n}' (not the 2.x Unet layout); {ONNX_HINT}")
            })
        };
        if sd.contains_key("downs.0.0.block1.norm.weight") || sd.keys().any(|k| k.contains(".fn.fn.")) {
            bail!(
                Model,
                "lucidrains Unet of the 1.x layout (GroupNorm blocks, PreNorm/Residual wrappers): not mapped natively; \
                 {ONNX_HINT}"
            );
        }
        let init = shape("init_conv.weight")?;
        let fin = shape("final_conv.weight")?;
        let (Some(&init_dim), Some(&in_ch), Some(&out_dim)) = (init.first(), init.get(1), fin.first()) else {
            bail!(Model, "lucidrains Unet: init_conv.weight {init:?} / final_conv.weight {fin:?} are not kernels");
        };
        let channels = if in_ch == 2 * out_dim {
            bail!(
                Model,
                "lucidrains Unet with self_condition=True (init_conv takes {in_ch} channels for {out_dim}-channel \
                 images: the sample and the previous x_start estimate): the samplers here do not feed it; {ONNX_HINT}"
            );
        } else if out_dim == in_ch || out_dim == 2 * in_ch {
            in_ch
        } else {
            bail!(
                Model,
                "lucidrains Unet with out_dim {out_dim} for {in_ch} input channels: only out_dim = channels or \
                 2 x channels (learned_variance) samples as a DDPM; {ONNX_HINT}"
            );
        };
        let learned_time = sd.contains_key("time_mlp.0.weights");
        let t1 = shape("time_mlp.1.weight")?;
        let time_dim = t1.first().copied().unwrap_or(0);
        let dim = if learned_time { time_dim / 4 } else { t1.get(1).copied().unwrap_or(0) };
        let mut dims = Vec::new();
        let mut full_attn = Vec::new();
        while let Ok(s) = shape(&format!("downs.{}.0.block1.proj.weight", dims.len())) {
            let i = dims.len();
            if i == MAX_LEVELS {
                bail!(Model, "lucidrains Unet with more than {MAX_LEVELS} levels (downs.{i}.*)");
            }
            dims.push(s.first().copied().unwrap_or(0));
            full_attn.push(sd.contains_key(&format!("downs.{i}.2.to_out.weight")));
        }
        if dims.is_empty() {
            bail!(Model, "lucidrains Unet without down levels (no downs.0.0.block1.proj.weight); {ONNX_HINT}");
        }
        let levels = dims.len();
        let last = shape(&format!("downs.{}.3.weight", levels - 1))?;
        // dims = [init_dim, dim * m for m in dim_mults]: level i maps dims[i] -> dims[i + 1]
        let mut widths: Vec<usize> = dims[1..].to_vec();
        widths.push(last.first().copied().unwrap_or(0));
        let dim_mults = widths.iter().map(|w| if dim > 0 && w % dim == 0 { w / dim } else { 0 }).collect();
        Ok(Arch {
            dim,
            init_dim,
            dim_mults,
            channels,
            out_dim,
            levels,
            learned_variance: out_dim == 2 * in_ch,
            learned_time,
            full_attn,
        })
    }
}

struct Builder<'s> {
    g: Graph,
    sd: &'s mut BTreeMap<String, Tensor>,
    /// Rows of a tabulated timestep embedding.
    timesteps: usize,
}

impl Builder<'_> {
    /// `Unet.forward(x, time)`: one line per module, as in the PyTorch source.
    fn unet(&mut self, arch: &Arch, theta: f32, h: usize, w: usize) -> Result<(Graph, u32, u32)> {
        let input = self.g.value(arch.channels, h, w);
        // x = self.init_conv(x); r = x.clone()
        let mut x = self.conv("init_conv", input, 1, 3)?;
        let r = x;
        // t = self.time_mlp(time): sinusoidal features, Linear, GELU, Linear
        let t = self.time_mlp(arch.learned_time, theta)?;
        // every ResnetBlock's mlp starts with SiLU: once for all of them
        let temb = self.g.value(self.g.shape(t).c, 1, 1);
        self.g.push(Op::Silu { out: temb, x: t });

        let mut skips = Vec::new();
        for i in 0..arch.levels {
            x = self.resnet(&format!("downs.{i}.0"), x, temb)?;
            skips.push(x);
            x = self.resnet(&format!("downs.{i}.1"), x, temb)?;
            x = self.attention_residual(&format!("downs.{i}.2"), x)?;
            skips.push(x);
            x = if i + 1 < arch.levels {
                // Downsample: pixel unshuffle 'b c (h p1) (w p2) -> b (c p1 p2) h w', then a 1x1 convolution,
                // which is a 2x2 convolution of stride 2 with the same weights.
                self.conv(&format!("downs.{i}.3.1"), x, 2, 0)?
            } else {
                self.conv(&format!("downs.{i}.3"), x, 1, 1)?
            };
        }

        x = self.resnet("mid_block1", x, temb)?;
        x = self.attention_residual("mid_attn", x)?;
        x = self.resnet("mid_block2", x, temb)?;

        for i in 0..arch.levels {
            let skip = skips.pop().ok_or_else(|| err!(Model, "internal: skip stack exhausted"))?;
            x = self.concat(x, skip)?;
            x = self.resnet(&format!("ups.{i}.0"), x, temb)?;
            let skip = skips.pop().ok_or_else(|| err!(Model, "internal: skip stack exhausted"))?;
            x = self.concat(x, skip)?;
            x = self.resnet(&format!("ups.{i}.1"), x, temb)?;
            x = self.attention_residual(&format!("ups.{i}.2"), x)?;
            x = if i + 1 < arch.levels {
                // Upsample: nearest x2, then a 3x3 convolution
                let s = self.g.shape(x);
                let up = self.g.value(s.c, 2 * s.h, 2 * s.w);
                self.g.push(Op::Upsample2x { out: up, x });
                self.conv(&format!("ups.{i}.3.1"), up, 1, 1)?
            } else {
                self.conv(&format!("ups.{i}.3"), x, 1, 1)?
            };
        }

        // x = torch.cat((x, r), dim = 1); x = self.final_res_block(x, t); return self.final_conv(x)
        x = self.concat(x, r)?;
        x = self.resnet("final_res_block", x, temb)?;
        let out = self.conv("final_conv", x, 1, 0)?;
        Ok((std::mem::take(&mut self.g), input, out))
    }

    fn take(&mut self, name: &str) -> Result<Tensor> {
        self.sd.remove(name).ok_or_else(|| {
            err!(Model, "lucidrains Unet: missing tensor '{name}' (an unrecognised variant); {ONNX_HINT}")
        })
    }

    /// Takes a tensor of the given shape.
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.take(name)?;
        if t.shape != shape {
            bail!(Model, "tensor {name}: expected {shape:?}, found {:?}", t.shape);
        }
        Ok(t)
    }

    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        self.sd.get(name).map(|t| t.shape.clone()).ok_or_else(|| {
            err!(Model, "lucidrains Unet: missing tensor '{name}' (an unrecognised variant); {ONNX_HINT}")
        })
    }

    /// `nn.Conv2d` `prefix` (square kernel, `padding = pad`, with bias). A 1×1 kernel of `4·c` inputs applied with `stride` 2 to `c` channels is the pixel-unshuffle
    /// downsample (its weight `[o, 4c, 1, 1]` read as `[o, c, 2, 2]`).
    fn conv(&mut self, prefix: &str, x: u32, stride: u32, pad: u32) -> Result<u32> {
        let s = self.g.shape(x);
        let ws = self.shape_of(&format!("{prefix}.weight"))?;
        let wt = self.take(&format!("{prefix}.weight"))?;
        let (dims, k) = match ws[..] {
            [o, i, 1, 1] if stride == 2 && i == 4 * s.c => (vec![o, s.c, 2, 2], 2),
            [o, i, kh, kw] if i == s.c && kh == kw && kh > 0 => (vec![o, i, kh, kh], kh),
            _ => bail!(Model, "tensor {prefix}.weight: expected a square kernel over {} channels, found {ws:?}", s.c),
        };
        if stride == 1 && k != 2 * pad as usize + 1 {
            bail!(Model, "tensor {prefix}.weight: expected a {0}x{0} kernel, found {ws:?}", 2 * pad + 1);
        }
        let o = dims[0];
        let b = self.weight(&format!("{prefix}.bias"), &[o])?;
        self.conv_with(prefix, x, dims, wt.data, b.data, stride, pad, k)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_with(
        &mut self,
        prefix: &str,
        x: u32,
        dims: Vec<usize>,
        w: Vec<f32>,
        b: Vec<f32>,
        stride: u32,
        pad: u32,
        k: usize,
    ) -> Result<u32> {
        let s = self.g.shape(x);
        let o = dims[0];
        let p = pad as usize;
        let st = stride as usize;
        let ho = ddpm_core::ops::conv_out_len(s.h, k, st, p, p);
        let wo = ddpm_core::ops::conv_out_len(s.w, k, st, p, p);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            bail!(Model, "{prefix}: a {k}x{k} kernel does not fit a {}x{} input", s.h, s.w);
        };
        let wt = self.g.tensor(&format!("{prefix}.weight"), dims, w);
        let bt = self.g.tensor(&format!("{prefix}.bias"), vec![o], b);
        let out = self.g.value(o, ho, wo);
        self.g.push(Op::Conv2d { out, x, w: wt, b: bt, stride, pad: [pad; 4], scratch: SCRATCH });
        Ok(out)
    }

    fn linear(&mut self, prefix: &str, x: u32) -> Result<u32> {
        let i = self.g.shape(x).c;
        let ws = self.shape_of(&format!("{prefix}.weight"))?;
        let o = ws.first().copied().unwrap_or(0);
        let w = self.weight(&format!("{prefix}.weight"), &[o, i])?;
        let b = self.weight(&format!("{prefix}.bias"), &[o])?;
        let wt = self.g.tensor(&format!("{prefix}.weight"), vec![o, i], w.data);
        let bt = self.g.tensor(&format!("{prefix}.bias"), vec![o], b.data);
        let out = self.g.value(o, 1, 1);
        self.g.push(Op::Linear { out, x, w: wt, b: bt });
        Ok(out)
    }

    /// `time_mlp`: `SinusoidalPosEmb(dim, theta)` (or `RandomOrLearnedSinusoidalPosEmb`), `Linear`, `GELU`,
    /// `Linear`.
    fn time_mlp(&mut self, learned: bool, theta: f32) -> Result<u32> {
        let feats = if learned {
            // [t, sin(2π t w), cos(2π t w)], a function of the integer timestep alone: tabulated, in f32 in
            // PyTorch's order ((t·w)·2)·π.
            let wts = self.take("time_mlp.0.weights")?;
            if wts.shape.len() != 1 || wts.data.is_empty() {
                bail!(Model, "tensor time_mlp.0.weights: expected [half_dim], found {:?}", wts.shape);
            }
            let half = wts.data.len();
            let n = 2 * half + 1;
            if self.timesteps.checked_mul(n).is_none_or(|e| e > MAX_TABLE) {
                bail!(Model, "a table of {} timesteps x {n} learned sinusoidal features is too large", self.timesteps);
            }
            let mut table = Vec::with_capacity(self.timesteps * n);
            for t in 0..self.timesteps {
                let tf = t as f32;
                let freqs: Vec<f32> = wts.data.iter().map(|&w| tf * w * 2.0 * std::f32::consts::PI).collect();
                table.push(tf);
                table.extend(freqs.iter().map(|f| f.sin()));
                table.extend(freqs.iter().map(|f| f.cos()));
            }
            let tt = self.g.tensor("time_mlp.0.table", vec![self.timesteps, n], table);
            let v = self.g.value(n, 1, 1);
            self.g.push(Op::TimestepTable { out: v, table: tt });
            v
        } else {
            // SinusoidalPosEmb: exp(-ln(theta)·k / (half − 1)), [sin, cos]
            let dim = self.shape_of("time_mlp.1.weight")?.get(1).copied().unwrap_or(0);
            if dim < 4 || dim % 2 == 1 {
                bail!(Model, "time_mlp.1.weight: a sinusoidal embedding of {dim} features (needs an even number >= 4)");
            }
            let v = self.g.value(dim, 1, 1);
            self.g.push(Op::TimestepEmbed { out: v, flip_sin_to_cos: false, freq_shift: 1.0, max_period: theta });
            v
        };
        let h = self.linear("time_mlp.1", feats)?;
        self.g.push(Op::Unary { out: h, x: h, kind: UnaryFn::Gelu as u32, a: 0.0, b: 0.0 });
        self.linear("time_mlp.3", h)
    }

    /// `torch.cat((a, b), dim = 1)`.
    fn concat(&mut self, a: u32, b: u32) -> Result<u32> {
        let (sa, sb) = (self.g.shape(a), self.g.shape(b));
        if (sa.h, sa.w) != (sb.h, sb.w) {
            bail!(Model, "lucidrains Unet: a skip of {}x{} meets a sample of {}x{}", sb.h, sb.w, sa.h, sa.w);
        }
        let o = self.g.value(sa.c + sb.c, sa.h, sa.w);
        self.g.push(Op::Concat { out: o, a, b });
        Ok(o)
    }

    /// `RMSNorm`: `F.normalize(x, dim = 1) * g * sqrt(C)`, i.e. `x / max(‖x‖₂, 1e-12)` over the channels of
    /// each pixel, times `g·√C` (folded at convert time).
    fn rms_norm(&mut self, name: &str, x: u32) -> Result<u32> {
        let s = self.g.shape(x);
        let (c, n) = (s.c, s.h * s.w);
        let g = self.weight(name, &[1, c, 1, 1])?;
        let scale = (c as f32).sqrt();
        let gt = self.g.tensor(name, vec![c], g.data.iter().map(|v| v * scale).collect());
        let norm = self.g.value(1, s.h, s.w);
        self.g.push(Op::Reduce { out: norm, x, outer: 1, n: c as u32, inner: n as u32, kind: ReduceFn::L2 as u32 });
        self.g.push(Op::Unary { out: norm, x: norm, kind: UnaryFn::Clip as u32, a: 1e-12, b: f32::MAX });
        let y = self.g.value(c, s.h, s.w);
        let dims = [1, c as u32, n as u32];
        // bit 3 + i of bcast broadcasts b along dimension i
        self.g.push(Op::Binary { out: y, a: x, b: norm, dims, bcast: 1 << 4, kind: BinaryFn::Div as u32 });
        self.g.push(Op::BinaryConst {
            out: y,
            a: y,
            t: gt,
            dims,
            bcast: 1 << 5,
            kind: BinaryFn::Mul as u32,
            swap: false,
        });
        Ok(y)
    }

    /// `Block`: `act(norm(proj(x)) * (scale + 1) + shift)` (scale-shift only in `block1`).
    fn block(&mut self, p: &str, x: u32, scale_shift: Option<u32>) -> Result<u32> {
        let h = self.conv(&format!("{p}.proj"), x, 1, 1)?;
        let h = self.rms_norm(&format!("{p}.norm.g"), h)?;
        if let Some(v) = scale_shift {
            self.g.push(Op::ScaleShift { x: h, v });
        }
        self.g.push(Op::Silu { out: h, x: h });
        Ok(h)
    }

    /// `ResnetBlock`: `block2(block1(x, mlp(t).chunk(2))) + res_conv(x)`; `temb` is `SiLU(t)`.
    fn resnet(&mut self, p: &str, x: u32, temb: u32) -> Result<u32> {
        let dim_out = self.shape_of(&format!("{p}.block1.proj.weight"))?.first().copied().unwrap_or(0);
        let proj = self.shape_of(&format!("{p}.mlp.1.weight"))?;
        if proj.first() != Some(&(2 * dim_out)) {
            bail!(Model, "tensor {p}.mlp.1.weight {proj:?}: expected a scale and a shift for {dim_out} channels");
        }
        let ss = self.linear(&format!("{p}.mlp.1"), temb)?;
        let h = self.block(&format!("{p}.block1"), x, Some(ss))?;
        let h = self.block(&format!("{p}.block2"), h, None)?;
        let res = if self.sd.contains_key(&format!("{p}.res_conv.weight")) {
            self.conv(&format!("{p}.res_conv"), x, 1, 0)?
        } else {
            x
        };
        if self.g.shape(res) != self.g.shape(h) {
            bail!(Model, "{p}: the residual {:?} and the block output {:?} differ", self.g.shape(res), self.g.shape(h));
        }
        self.g.push(Op::Add { out: h, a: h, b: res, scale: 1.0 });
        Ok(h)
    }

    /// `x = attn(x) + x`, with `Attention` or `LinearAttention` as the module's tensors say.
    fn attention_residual(&mut self, p: &str, x: u32) -> Result<u32> {
        let a = if self.sd.contains_key(&format!("{p}.to_out.weight")) {
            self.full_attention(p, x)?
        } else {
            self.linear_attention(p, x)?
        };
        if self.g.shape(a) != self.g.shape(x) {
            bail!(
                Model,
                "{p}: the attention output {:?} does not match its input {:?}",
                self.g.shape(a),
                self.g.shape(x)
            );
        }
        self.g.push(Op::Add { out: a, a, b: x, scale: 1.0 });
        Ok(a)
    }

    /// The shared front of both attentions: `norm`, then `to_qkv` (no bias) split into three 1×1 convolutions
    /// (`chunk(3, dim = 1)`), each `(heads·dim_head, h, w)`; and `mem_kv` with its `(heads, dim_head, mem)`.
    fn qkv(&mut self, p: &str, x: u32, full: bool) -> Result<([u32; 3], Tensor, [usize; 3])> {
        let c = self.g.shape(x).c;
        let mem = self.take(&format!("{p}.mem_kv"))?;
        let (heads, dh, m) = match (full, &mem.shape[..]) {
            (false, &[2, h, d, m]) => (h, d, m),
            (true, &[2, h, m, d]) => (h, d, m),
            _ => bail!(Model, "tensor {p}.mem_kv: expected [2, heads, ., .], found {:?}", mem.shape),
        };
        let hid = heads * dh;
        let w = self.weight(&format!("{p}.to_qkv.weight"), &[3 * hid, c, 1, 1])?;
        let xn = self.rms_norm(&format!("{p}.norm.g"), x)?;
        let mut qkv = [0u32; 3];
        for (j, part) in ["q", "k", "v"].iter().enumerate() {
            let rows = w.data[j * hid * c..(j + 1) * hid * c].to_vec();
            qkv[j] =
                self.conv_with(&format!("{p}.to_qkv.{part}"), xn, vec![hid, c, 1, 1], rows, vec![0.0; hid], 1, 0, 1)?;
        }
        Ok((qkv, mem, [heads, dh, m]))
    }

    /// `[mem; x]` on the token axis: `mem` `(heads·dim_head, mem)` (a constant), `x` `(heads·dim_head, n)`.
    fn with_memory(&mut self, name: &str, mem: Vec<f32>, x: u32, hid: usize, m: usize) -> u32 {
        let n = {
            let s = self.g.shape(x);
            s.h * s.w
        };
        let t = self.g.tensor(name, vec![hid * m], mem);
        let mv = self.g.value(hid, 1, m);
        self.g.push(Op::Constant { out: mv, t });
        let out = self.g.value(hid, 1, m + n);
        self.g.push(Op::ConcatAxis { out, a: mv, b: x, outer: hid as u32, na: m as u32, nb: n as u32, inner: 1 });
        out
    }

    /// `LinearAttention`: per head, `q` softmaxed over its features and scaled by `dim_head^-½`, `k` over the
    /// tokens (memory first); `context = k·vᵀ`, `out = contextᵀ·q`; then `to_out` (1×1 convolution, RMSNorm).
    fn linear_attention(&mut self, p: &str, x: u32) -> Result<u32> {
        let s = self.g.shape(x);
        let n = s.h * s.w;
        let ([q, k, v], mem, [heads, dh, m]) = self.qkv(p, x, false)?;
        let hid = heads * dh;
        let half = hid * m;
        // q.softmax(dim = -2) * scale
        self.g.push(Op::Softmax { out: q, x: q, outer: heads as u32, n: dh as u32, inner: n as u32 });
        self.g.push(Op::Affine { out: q, x: q, mul: (dh as f32).powf(-0.5), add: 0.0 });
        // mem_kv (2, heads, dim_head, mem): already [heads·dim_head, mem]
        let kc = self.with_memory(&format!("{p}.mem_kv.k"), mem.data[..half].to_vec(), k, hid, m);
        let vc = self.with_memory(&format!("{p}.mem_kv.v"), mem.data[half..].to_vec(), v, hid, m);
        let tokens = (m + n) as u32;
        self.g.push(Op::Softmax { out: kc, x: kc, outer: hid as u32, n: tokens, inner: 1 });
        // context[d, e] = Σ_n k[d, n] v[e, n]; computed transposed: ctxᵀ = v·kᵀ, (heads, e, d)
        let ctx_t = self.g.value(heads * dh, 1, dh);
        let (hh, d) = (heads as u32, dh as u32);
        self.g.push(Op::MatMul {
            out: ctx_t,
            a: vc,
            b: kc,
            batch: hh,
            m: d,
            k: tokens,
            n: d,
            shared: 0,
            trans_b: true,
        });
        // out[e, n] = Σ_d context[d, e] q[d, n] = ctxᵀ·q, (heads·dim_head, h, w)
        let out = self.g.value(hid, s.h, s.w);
        self.g.push(Op::MatMul { out, a: ctx_t, b: q, batch: hh, m: d, k: d, n: n as u32, shared: 0, trans_b: false });
        let o = self.conv(&format!("{p}.to_out.0"), out, 1, 0)?;
        self.rms_norm(&format!("{p}.to_out.1.g"), o)
    }

    /// `Attention` (`Attend` without flash): `softmax(q·kᵀ · dim_head^-½)·v` per head, memory key/values first
    /// on the token axis; then `to_out` (1×1 convolution).
    fn full_attention(&mut self, p: &str, x: u32) -> Result<u32> {
        let s = self.g.shape(x);
        let n = s.h * s.w;
        let ([q, k, v], mem, [heads, dh, m]) = self.qkv(p, x, true)?;
        let hid = heads * dh;
        // mem_kv (2, heads, mem, dim_head) → (heads, dim_head, mem), the layout of k and v here
        let transpose = |part: usize| -> Vec<f32> {
            let base = part * heads * m * dh;
            let mut t = vec![0.0; heads * dh * m];
            for h in 0..heads {
                for j in 0..m {
                    for d in 0..dh {
                        t[(h * dh + d) * m + j] = mem.data[base + (h * m + j) * dh + d];
                    }
                }
            }
            t
        };
        let kc = self.with_memory(&format!("{p}.mem_kv.k"), transpose(0), k, hid, m);
        let vc = self.with_memory(&format!("{p}.mem_kv.v"), transpose(1), v, hid, m);
        let tokens = (m + n) as u32;
        let (hh, d, nn) = (heads as u32, dh as u32, n as u32);
        // q (heads, dim_head, n) → (heads, n, dim_head)
        let q_t = self.g.value(hid, 1, n);
        let perm = 2 << 4 | 1 << 8 | 3 << 12 | 4 << 16 | 5 << 20;
        self.g.push(Op::Permute { out: q_t, x: q, dims: [hh, d, nn, 1, 1, 1], perm });
        // sim = q·k * scale, (heads, n, tokens); softmax over the tokens
        let sim = self.g.value(heads * n, 1, m + n);
        self.g.push(Op::MatMul {
            out: sim,
            a: q_t,
            b: kc,
            batch: hh,
            m: nn,
            k: d,
            n: tokens,
            shared: 0,
            trans_b: false,
        });
        self.g.push(Op::Affine { out: sim, x: sim, mul: (dh as f32).powf(-0.5), add: 0.0 });
        self.g.push(Op::Softmax { out: sim, x: sim, outer: hh * nn, n: tokens, inner: 1 });
        // out[d, i] = Σ_j v[d, j] attn[i, j], (heads·dim_head, h, w) = rearrange 'b h (x y) d -> b (h d) x y'
        let out = self.g.value(hid, s.h, s.w);
        self.g.push(Op::MatMul { out, a: vc, b: sim, batch: hh, m: d, k: tokens, n: nn, shared: 0, trans_b: true });
        self.conv(&format!("{p}.to_out"), out, 1, 0)
    }
}
