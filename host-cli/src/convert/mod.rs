//! `host-cli convert`: checkpoint → blob, with no Python involved.

pub mod config;
pub mod graph;
mod quantize;
pub mod scheduler;
mod unet;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ddpm_core::{Precision, Schedule};
use serde_json::{Map, Value};

use config::{normalize_names, UNetConfig};
pub use config::{parse_overrides, read_json_object};
use graph::ModelHeader;
pub use quantize::Calibration;

use crate::load::{self, StateDict};

/// What `convert` was asked to do.
pub struct ConvertArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub precision: Precision,
    pub key: Option<String>,
    pub config: Option<PathBuf>,
    pub scheduler: Option<PathBuf>,
    pub sets: Vec<String>,
    pub scheduler_sets: Vec<String>,
    /// Activation calibration of an int8 conversion.
    pub calibration: Calibration,
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
        let dir = if p.join("unet").is_dir() && !p.join("config.json").exists() { p.join("unet") } else { p.clone() };
        let weights = FOLDER_WEIGHTS.iter().map(|f| dir.join(f)).find(|f| f.is_file()).with_context(|| {
            format!("{} holds no diffusers weights file ({})", dir.display(), FOLDER_WEIGHTS.join(", "))
        })?;
        let (sd, n) = load_file(&weights, a.key.as_deref())?;
        notes.extend(n);
        let config = Some(dir.join("config.json")).filter(|c| c.is_file());
        let sched = [dir.join("scheduler/scheduler_config.json"), dir.join("../scheduler/scheduler_config.json")]
            .into_iter()
            .find(|s| s.is_file());
        if let Some(s) = &sched {
            notes.push(format!("scheduler config: {}", s.display()));
        }
        return Ok(Loaded { sd, config, scheduler: sched, notes });
    }
    if !p.exists() {
        bail!("{}: no such file or folder", p.display());
    }
    let (sd, n) = load_file(p, a.key.as_deref())?;
    notes.extend(n);
    Ok(Loaded { sd, config: None, scheduler: None, notes })
}

fn load_file(p: &Path, key: Option<&str>) -> Result<(StateDict, Vec<String>)> {
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "safetensors" {
        if key.is_some() {
            bail!("--key applies to torch.save files, not to {}", p.display());
        }
        return Ok((load::load_safetensors(p)?, vec![]));
    }
    let (sd, used) = load::load_torch(p, key).with_context(|| format!("cannot read {}", p.display()))?;
    Ok((sd, vec![format!("using the {used}")]))
}

/// Runs the conversion; on error nothing is written. Returns notes for the user.
pub fn convert(a: &ConvertArgs) -> Result<Vec<String>> {
    let Loaded { mut sd, config: found_config, scheduler: found_sched, mut notes } = load_input(a)?;
    normalize_names(&mut sd);
    let overrides = parse_overrides(&a.sets)?;
    let config_path = a.config.clone().or(found_config);
    let mut user = match &config_path {
        Some(c) => {
            notes.push(format!("model config: {}", c.display()));
            read_json_object(c)?
        }
        None => {
            let (m, note) = UNetConfig::infer(&sd, &overrides)?;
            notes.push(note);
            m
        }
    };
    user.extend(overrides);
    let cfg = UNetConfig::from_json(&user)?;

    let mut tensors = std::mem::take(&mut sd.tensors);
    let (mut graph, input, output) = unet::build(&cfg, &mut tensors)?;
    if !tensors.is_empty() {
        let names: Vec<&str> = tensors.keys().take(5).map(String::as_str).collect();
        bail!(
            "{} checkpoint tensors are not used by a UNet2DModel with this config (e.g. {}); wrong config or not a UNet2DModel",
            tensors.len(),
            names.join(", ")
        );
    }

    let sched_path = a.scheduler.clone().or(found_sched);
    let mut sched_json = match &sched_path {
        Some(s) => read_json_object(s)?,
        None => Map::new(),
    };
    let sched_overrides = parse_overrides(&a.scheduler_sets)?;
    if sched_path.is_none() {
        notes.push(if sched_overrides.is_empty() {
            "no scheduler config: using DDPMScheduler defaults (1000 linear betas 1e-4..0.02, epsilon)".into()
        } else {
            "no scheduler config: DDPMScheduler defaults with the --scheduler-set options".into()
        });
    }
    sched_json.extend(sched_overrides);
    let (schedule, warn) = scheduler::from_json(&sched_json, &mut graph)?;
    notes.extend(warn);
    let learned =
        matches!(Schedule::VARIANCE_TYPES.get(schedule.variance_type as usize), Some(&"learned" | &"learned_range"));
    if cfg.out_channels == 2 * cfg.in_channels && !learned {
        notes.push(format!(
            "the model predicts {} channels for {}-channel images (learned variance?) but variance_type is fixed: \
             DDPM sampling will refuse it; pass --scheduler-set variance_type=learned_range if it was trained so",
            cfg.out_channels, cfg.in_channels
        ));
    }
    if learned && cfg.out_channels != 2 * cfg.in_channels {
        bail!(
            "scheduler variance_type is learned but the model predicts {} channels, not 2 x {}",
            cfg.out_channels,
            cfg.in_channels
        );
    }
    let hdr = ModelHeader {
        precision: a.precision,
        in_channels: cfg.in_channels,
        out_channels: cfg.out_channels,
        height: cfg.height,
        width: cfg.width,
        num_classes: cfg.num_class_embeds.unwrap_or(0),
        schedule,
        config_json: serde_json::to_string(&Value::Object(with_class(cfg.json.clone())))?,
    };
    let blob = if a.precision == Precision::Int8 {
        let (blob, n) = quantize::to_int8(&graph, &hdr, input, output, &a.calibration)?;
        notes.extend(n);
        blob
    } else {
        graph.to_blob(&hdr, input, output)?
    };
    // Check what we wrote with the same validator the target uses.
    crate::blobfile::check(&blob).context("internal error: the converter produced an invalid blob")?;
    crate::blobfile::write_atomic(&a.output, &blob)?;
    Ok(notes)
}

fn with_class(mut m: Map<String, Value>) -> Map<String, Value> {
    m.insert("_class_name".into(), Value::String("UNet2DModel".into()));
    m
}
