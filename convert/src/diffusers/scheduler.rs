//! diffusers scheduler config (`scheduler_config.json`) → the blob's [`Schedule`] record.

use crate::error::Result;
use crate::{bail, err};
use ddpm_core::format::{BetaSchedule, PredictionType, Schedule, TimestepSpacing, VarianceType};
use serde_json::{Map, Value};

use crate::graph::Graph;

/// Keys of `DDPMScheduler` / `DDIMScheduler` configs that are read here.
const KNOWN: [&str; 16] = [
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
    "set_alpha_to_one",
    "rescale_betas_zero_snr",
];

/// A coded option by its diffusers name, among `options`.
fn code<T: Copy>(key: &str, value: &Value, options: &[T], name: impl Fn(T) -> &'static str) -> Result<T> {
    let s = value.as_str().ok_or_else(|| err!(Config, "scheduler option '{key}': expected a string, found {value}"))?;
    options.iter().copied().find(|&o| name(o) == s).ok_or_else(|| {
        let names: Vec<&str> = options.iter().map(|&o| name(o)).collect();
        err!(Config, "unsupported scheduler option {key} = \"{s}\" (supported: {})", names.join(", "))
    })
}

/// Reads a scheduler config. Missing keys keep diffusers' defaults; unknown values are errors naming the key;
/// `trained_betas` becomes a tensor of `graph`. Returns the schedule and warnings for keys that were ignored.
pub fn from_json(m: &Map<String, Value>, graph: &mut Graph) -> Result<(Schedule, Vec<String>)> {
    let mut s = Schedule::DDPM_DEFAULT;
    let mut notes = Vec::new();
    if let Some(name) = m.get("_class_name").and_then(Value::as_str) {
        if !["DDPMScheduler", "DDIMScheduler"].contains(&name) {
            notes.push(format!("scheduler config is for {name}; reading its DDPM-compatible options"));
        }
    }
    let num = |k: &str, v: &Value| {
        v.as_f64().map(|x| x as f32).ok_or_else(|| err!(Config, "scheduler option '{k}': expected a number, found {v}"))
    };
    let flag = |k: &str, v: &Value| {
        v.as_bool().ok_or_else(|| err!(Config, "scheduler option '{k}': expected true or false, found {v}"))
    };
    let uint = |k: &str, v: &Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| err!(Config, "scheduler option '{k}': expected a non-negative integer, found {v}"))
    };
    let mut trained: Option<Vec<f32>> = None;
    for (k, v) in m {
        if k.starts_with('_') {
            continue;
        }
        if !KNOWN.contains(&k.as_str()) {
            notes.push(format!("scheduler option '{k}' is not used"));
            continue;
        }
        match k.as_str() {
            "num_train_timesteps" => s.num_train_timesteps = uint(k, v)?,
            "beta_start" => s.beta_start = num(k, v)?,
            "beta_end" => s.beta_end = num(k, v)?,
            "beta_schedule" => s.beta_schedule = code(k, v, &BetaSchedule::ALL[..4], BetaSchedule::name)?,
            "trained_betas" if !v.is_null() => {
                let list =
                    v.as_array().ok_or_else(|| err!(Config, "scheduler option 'trained_betas': expected a list"))?;
                trained = Some(list.iter().map(|x| num(k, x)).collect::<Result<_>>()?);
            }
            "variance_type" => s.variance_type = code(k, v, VarianceType::ALL, VarianceType::name)?,
            "clip_sample" => s.clip_sample = flag(k, v)?,
            "clip_sample_range" => s.clip_sample_range = num(k, v)?,
            "prediction_type" => s.prediction_type = code(k, v, PredictionType::ALL, PredictionType::name)?,
            "thresholding" => s.thresholding = flag(k, v)?,
            "dynamic_thresholding_ratio" => s.dynamic_thresholding_ratio = num(k, v)?,
            "sample_max_value" => s.sample_max_value = num(k, v)?,
            "timestep_spacing" => s.timestep_spacing = code(k, v, TimestepSpacing::ALL, TimestepSpacing::name)?,
            "steps_offset" => s.steps_offset = uint(k, v)?,
            "set_alpha_to_one" => s.set_alpha_to_one = flag(k, v)?,
            "rescale_betas_zero_snr" => s.rescale_betas_zero_snr = flag(k, v)?,
            _ => {}
        }
    }
    if s.num_train_timesteps == 0 {
        bail!(Config, "scheduler option 'num_train_timesteps' must be positive");
    }
    if let Some(betas) = trained {
        if betas.len() != s.num_train_timesteps as usize {
            bail!(
                Config,
                "scheduler trained_betas has {} entries but num_train_timesteps is {}",
                betas.len(),
                s.num_train_timesteps
            );
        }
        if betas.iter().any(|b| !(b.is_finite() && *b > 0.0 && *b < 1.0)) {
            bail!(Config, "scheduler trained_betas must lie in (0, 1)");
        }
        s.beta_schedule = BetaSchedule::TrainedBetas;
        s.trained_betas_tensor = graph.tensor("scheduler.trained_betas", vec![betas.len()], betas);
    }
    Ok((s, notes))
}
