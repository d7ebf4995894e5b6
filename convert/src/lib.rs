//! `ddpm-convert`: PyTorch/diffusers DDPM checkpoints to `ddpm-core` blobs, with no Python involved.
//!
//! The layers, from the file to the blob:
//!
//! - [`load`]: checkpoint and array readers: a restricted unpickler that never executes anything (`torch.save`
//!   zip archives), safetensors, NumPy `.npy`. Every float tensor becomes row-major f32.
//! - [`diffusers`]: the diffusers `UNet2DModel` family: its config (read or inferred from the tensors), the
//!   scheduler config (`DDPMScheduler`/`DDIMScheduler` options) and the builder that turns the state dict into
//!   a program.
//! - [`lucidrains`]: lucidrains' `denoising-diffusion-pytorch` `Unet`, from a `Trainer` checkpoint or a bare
//!   state dict, architecture and schedule read from the file.
//! - [`onnx`]: any network exported to ONNX, lowered to the same program.
//! - [`graph`]: the program under construction (activation values, weight tensors, ops) and the arena planner,
//!   which places values by liveness and adds the executor's scratch.
//! - [`precision`]: f16 storage and int8 calibration and quantization, siblings over one f32 program.
//! - [`emit`]: writes the blob, only through `ddpm_core::format`'s field declarations.
//!
//! [`convert`] works in memory (state dict and configs in, blob bytes out); [`convert_path`] reads a file or a
//! diffusers folder first. Errors are [`ConvertError`]s that say what kind of thing went wrong and where.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod aligned;
pub mod diffusers;
pub mod emit;
mod error;
pub mod graph;
pub mod load;
pub mod lucidrains;
pub mod onnx;
pub mod plan;
pub mod precision;

use std::path::{Path, PathBuf};

use ddpm_core::Precision;
use serde_json::{Map, Value};

pub use aligned::AlignedBlob;
use diffusers::config::{normalize_names, UNetConfig};
pub use diffusers::config::{parse_overrides, read_json_object};
use diffusers::{scheduler, unet2d};
pub use error::{Context, ConvertError, Result};
use graph::ModelHeader;
pub use load::StateDict;
pub use precision::int8::Calibration;

/// What to convert, in memory.
pub struct Request {
    /// The checkpoint's tensors.
    pub state_dict: StateDict,
    /// The model config (`config.json` of a diffusers folder); `None` infers it from the tensors.
    pub config: Option<Map<String, Value>>,
    /// Model config entries that override the config (`--set KEY=VALUE`).
    pub config_overrides: Map<String, Value>,
    /// The scheduler config; `None` uses diffusers' `DDPMScheduler()` defaults.
    pub scheduler: Option<Map<String, Value>>,
    /// Scheduler entries that override it (`--scheduler-set KEY=VALUE`).
    pub scheduler_overrides: Map<String, Value>,
    /// Precision of the blob.
    pub precision: Precision,
    /// Activation calibration of an int8 conversion.
    pub calibration: Calibration,
}

/// A converted model: the blob and notes for the user (what was inferred, assumed or found).
#[derive(Debug)]
pub struct Converted {
    /// The blob, validated by the same parser the target uses.
    pub blob: Vec<u8>,
    /// What the converter inferred or assumed, one line each.
    pub notes: Vec<String>,
}

/// What to convert, by path (`host-cli convert`).
pub struct ConvertArgs {
    /// A checkpoint file (`.pt`, `.pth`, `.bin`, `.ckpt`, `.safetensors`) or a diffusers model or pipeline folder.
    pub input: PathBuf,
    /// Precision of the blob.
    pub precision: Precision,
    /// The entry of a `torch.save` dict that holds the state dict (`--key`).
    pub key: Option<String>,
    /// A model config file; overrides one found beside the weights.
    pub config: Option<PathBuf>,
    /// A scheduler config file; overrides one found in a pipeline folder.
    pub scheduler: Option<PathBuf>,
    /// `KEY=VALUE` model config overrides.
    pub sets: Vec<String>,
    /// `KEY=VALUE` scheduler config overrides.
    pub scheduler_sets: Vec<String>,
    /// Activation calibration of an int8 conversion.
    pub calibration: Calibration,
}

impl ConvertArgs {
    /// `input` in `precision` with nothing else given (`host-cli convert INPUT --precision P`).
    pub fn new(input: impl Into<PathBuf>, precision: Precision) -> Self {
        ConvertArgs {
            input: input.into(),
            precision,
            key: None,
            config: None,
            scheduler: None,
            sets: vec![],
            scheduler_sets: vec![],
            calibration: Calibration::default(),
        }
    }
}

/// The weights files a diffusers model folder may hold, in order of preference.
const FOLDER_WEIGHTS: [&str; 4] =
    ["diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin"];

/// Weights loaded from a file or a diffusers folder, with what was found beside them.
struct Loaded {
    sd: StateDict,
    /// `config.json` of a diffusers folder.
    config: Option<PathBuf>,
    /// `scheduler/scheduler_config.json` of a diffusers pipeline.
    scheduler: Option<PathBuf>,
    notes: Vec<String>,
}

/// Loads weights from a file or a diffusers folder.
fn load_input(a: &ConvertArgs) -> Result<Loaded> {
    let mut notes = Vec::new();
    let p = &a.input;
    if p.is_dir() {
        // A pipeline folder (model_index.json, unet/, scheduler/) or a model folder (config.json + weights).
        pipeline_kind(p)?;
        let dir = if p.join("unet").is_dir() && !p.join("config.json").exists() { p.join("unet") } else { p.clone() };
        let Some(weights) = FOLDER_WEIGHTS.iter().map(|f| dir.join(f)).find(|f| f.is_file()) else {
            bail!(Checkpoint, "{} holds no diffusers weights file ({})", dir.display(), FOLDER_WEIGHTS.join(", "));
        };
        let (sd, n) = load_file(&weights, a.key.as_deref())?;
        notes.extend(n);
        let config = Some(dir.join("config.json")).filter(|c| c.is_file());
        // A flat model folder (google/ddpm-cifar10-32) keeps its scheduler config beside config.json.
        let sched = [
            dir.join("scheduler_config.json"),
            dir.join("scheduler/scheduler_config.json"),
            dir.join("../scheduler/scheduler_config.json"),
        ]
        .into_iter()
        .find(|s| s.is_file());
        if let Some(s) = &sched {
            notes.push(format!("scheduler config: {}", s.display()));
        }
        return Ok(Loaded { sd, config, scheduler: sched, notes });
    }
    if !p.exists() {
        bail!(Checkpoint, "{}: no such file or folder", p.display());
    }
    let (sd, n) = load_file(p, a.key.as_deref())?;
    notes.extend(n);
    Ok(Loaded { sd, config: None, scheduler: None, notes })
}

/// Refuses a pipeline folder whose `model_index.json` names a latent or otherwise conditioned pipeline (its
/// UNet denoises autoencoder latents or takes a condition): converting it as a pixel DDPM would make noise.
fn pipeline_kind(dir: &Path) -> Result<()> {
    let index = dir.join("model_index.json");
    if !index.is_file() {
        return Ok(());
    }
    let m = read_json_object(&index)?;
    let name = m.get("_class_name").and_then(Value::as_str).unwrap_or("");
    let latent_parts: Vec<&str> = ["vqvae", "vae", "text_encoder", "image_encoder", "low_res_scheduler"]
        .into_iter()
        .filter(|k| m.contains_key(*k))
        .collect();
    let conditioned = ["LDM", "Latent", "StableDiffusion", "VQ", "Inpaint", "SuperResolution", "Img2Img", "Kandinsky"]
        .iter()
        .any(|w| name.contains(w));
    if conditioned || !latent_parts.is_empty() {
        bail!(
            Config,
            "{}: model_index.json names a {name}{}: its UNet denoises autoencoder latents or takes a condition, so it is not a \
             pixel-space DDPM; supported are DDPMPipeline/DDIMPipeline folders (or the unet/ folder of a pixel model)",
            dir.display(),
            if latent_parts.is_empty() { String::new() } else { format!(" (with {})", latent_parts.join(", ")) }
        );
    }
    Ok(())
}

fn load_file(p: &Path, key: Option<&str>) -> Result<(StateDict, Vec<String>)> {
    lfs_pointer(p)?;
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "safetensors" {
        if key.is_some() {
            bail!(Config, "--key applies to torch.save files, not to {}", p.display());
        }
        return Ok((load::load_safetensors(p)?, vec![]));
    }
    let (sd, used) = load::load_torch(p, key).with_context(|| format!("cannot read {}", p.display()))?;
    Ok((sd, vec![format!("using the {used}")]))
}

/// Refuses a Git LFS pointer file (what a clone without `git lfs` holds in place of the weights), naming it.
fn lfs_pointer(p: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 200];
    let n = std::fs::File::open(p).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    let text = String::from_utf8_lossy(&head[..n]);
    if text.starts_with("version https://git-lfs") {
        let size = text.lines().find_map(|l| l.strip_prefix("size ")).map(str::trim).unwrap_or("?");
        bail!(
            Checkpoint,
            "{} is a Git LFS pointer to {size} bytes, not the file itself: run `git lfs pull`",
            p.display()
        );
    }
    Ok(())
}

/// Converts a checkpoint file or diffusers folder. Nothing is written; the caller stores [`Converted::blob`].
pub fn convert_path(a: &ConvertArgs) -> Result<Converted> {
    if a.input.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        return convert_onnx_path(a);
    }
    let Loaded { sd, config: found_config, scheduler: found_sched, mut notes } = load_input(a)?;
    let config_path = a.config.clone().or(found_config);
    let config = match &config_path {
        Some(c) => {
            notes.push(format!("model config: {}", c.display()));
            Some(read_json_object(c)?)
        }
        None => None,
    };
    let sched_path = a.scheduler.clone().or(found_sched);
    let scheduler = sched_path.as_deref().map(read_json_object).transpose()?;
    let request = Request {
        state_dict: sd,
        config,
        config_overrides: parse_overrides(&a.sets)?,
        scheduler,
        scheduler_overrides: parse_overrides(&a.scheduler_sets)?,
        precision: a.precision,
        calibration: a.calibration,
    };
    let mut out = convert(request)?;
    notes.append(&mut out.notes);
    out.notes = notes;
    Ok(out)
}

/// Converts an ONNX file: `--set` gives the import options, `--scheduler`/`--scheduler-set` the schedule.
fn convert_onnx_path(a: &ConvertArgs) -> Result<Converted> {
    if a.key.is_some() || a.config.is_some() {
        bail!(Config, "--key and --config apply to checkpoints, not to an ONNX graph");
    }
    let model = onnx::read_onnx(&a.input)?;
    let scheduler = a.scheduler.as_deref().map(read_json_object).transpose()?;
    let mut out = onnx::convert_onnx(onnx::OnnxRequest {
        model,
        options: parse_overrides(&a.sets)?,
        scheduler,
        scheduler_overrides: parse_overrides(&a.scheduler_sets)?,
        precision: a.precision,
        calibration: a.calibration,
    })?;
    if let Some(s) = &a.scheduler {
        out.notes.insert(0, format!("scheduler config: {}", s.display()));
    }
    Ok(out)
}

/// Converts a state dict with its configs into a blob, in memory.
pub fn convert(r: Request) -> Result<Converted> {
    let Request {
        state_dict: mut sd,
        config,
        config_overrides,
        scheduler,
        scheduler_overrides,
        precision,
        calibration,
    } = r;
    let mut notes = Vec::new();
    normalize_names(&mut sd);
    if lucidrains::recognise(&sd) {
        if config.is_some() {
            bail!(Config, "a model config describes a diffusers UNet2DModel; a lucidrains Unet takes --set options");
        }
        return lucidrains::convert(lucidrains::LucidrainsRequest {
            state_dict: sd,
            options: config_overrides,
            scheduler,
            scheduler_overrides,
            precision,
            calibration,
        });
    }
    let mut user = match config {
        Some(c) => c,
        None => {
            let (m, note) = UNetConfig::infer(&sd, &config_overrides)?;
            notes.push(note);
            m
        }
    };
    user.extend(config_overrides);
    let cfg = UNetConfig::from_json(&user)?;
    if !cfg.ignored.is_empty() {
        notes.push(format!(
            "warning: config keys a UNet2DModel does not take, ignored (as diffusers ignores them): {}",
            cfg.ignored.join(", ")
        ));
    }
    if cfg.in_channels != cfg.out_channels && 2 * cfg.in_channels != cfg.out_channels {
        bail!(
            Config,
            "in_channels {} and out_channels {}: a conditional UNet (extra input channels, e.g. super-resolution or \
             inpainting, which concatenate a condition to the sample) is not a pixel DDPM; only out_channels = \
             in_channels (or 2 x in_channels, learned variance) is supported",
            cfg.in_channels,
            cfg.out_channels
        );
    }

    let mut tensors = std::mem::take(&mut sd.tensors);
    let (mut graph, input, output) = unet2d::build(&cfg, &mut tensors)?;
    if !tensors.is_empty() {
        let names: Vec<&str> = tensors.keys().take(5).map(String::as_str).collect();
        bail!(
            Model,
            "{} checkpoint tensors are not used by a UNet2DModel with this config (e.g. {}); wrong config or not a UNet2DModel",
            tensors.len(),
            names.join(", ")
        );
    }

    let schedule = schedule(scheduler, scheduler_overrides, &mut graph, cfg.in_channels, cfg.out_channels, &mut notes)?;
    let hdr = ModelHeader {
        precision,
        in_channels: cfg.in_channels,
        out_channels: cfg.out_channels,
        height: cfg.height,
        width: cfg.width,
        num_classes: cfg.num_class_embeds.unwrap_or(0),
        schedule,
        config_json: serde_json::to_string(&Value::Object(with_class(cfg.json.clone())))?,
    };
    let blob = emit_checked(&graph, &hdr, input, output, &calibration, &mut notes)?;
    Ok(Converted { blob, notes })
}

fn with_class(mut m: Map<String, Value>) -> Map<String, Value> {
    m.insert("_class_name".into(), Value::String("UNet2DModel".into()));
    m
}

/// The schedule of a blob: the scheduler config (diffusers' `DDPMScheduler()` defaults without one) with its
/// overrides, checked against the model's output channels (learned variance predicts twice the input's).
fn schedule(
    scheduler: Option<Map<String, Value>>,
    overrides: Map<String, Value>,
    graph: &mut graph::Graph,
    in_channels: usize,
    out_channels: usize,
    notes: &mut Vec<String>,
) -> Result<ddpm_core::Schedule> {
    let has_scheduler = scheduler.is_some();
    let mut sched_json = scheduler.unwrap_or_default();
    if !has_scheduler {
        notes.push(if overrides.is_empty() {
            "no scheduler config: using DDPMScheduler defaults (1000 linear betas 1e-4..0.02, epsilon)".into()
        } else {
            "no scheduler config: DDPMScheduler defaults with the --scheduler-set options".into()
        });
    }
    sched_json.extend(overrides);
    let (schedule, warn) = scheduler::from_json(&sched_json, graph)?;
    notes.extend(warn);
    let learned = schedule.variance_type.is_learned();
    if out_channels == 2 * in_channels && !learned {
        notes.push(format!(
            "the model predicts {} channels for {}-channel images (learned variance?) but variance_type is fixed: \
             DDPM sampling will refuse it; pass --scheduler-set variance_type=learned_range if it was trained so",
            out_channels, in_channels
        ));
    }
    if learned && out_channels != 2 * in_channels {
        bail!(
            Config,
            "scheduler variance_type is learned but the model predicts {} channels, not 2 x {}",
            out_channels,
            in_channels
        );
    }
    Ok(schedule)
}

/// Writes the blob of a finished program in the header's precision (int8: calibrated and lowered first) and
/// checks it with the same validator the target uses.
fn emit_checked(
    graph: &graph::Graph,
    hdr: &ModelHeader,
    input: u32,
    output: u32,
    calibration: &Calibration,
    notes: &mut Vec<String>,
) -> Result<Vec<u8>> {
    let blob = if hdr.precision == Precision::Int8 {
        let (blob, n) = precision::int8::to_int8(graph, hdr, input, output, calibration)?;
        notes.extend(n);
        blob
    } else {
        emit::blob(graph, hdr, input, output)?
    };
    AlignedBlob::from_bytes(&blob).model().context("internal error: the converter produced an invalid blob")?;
    Ok(blob)
}
