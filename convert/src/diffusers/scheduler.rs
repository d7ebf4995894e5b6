//! diffusers scheduler config (`scheduler_config.json`) → the blob's [`Schedule`] record.
//!
//! `DDPMScheduler`, `DDIMScheduler` and `DPMSolverMultistepScheduler` configs share the schedule options.
//! DPM-Solver++'s own options are chosen at sample time (`host-cli sample --sampler dpm-solver`), so a
//! DPMSolverMultistepScheduler config is checked for options the engine cannot follow: any `algorithm_type`
//! but "dpmsolver++", `solver_type` "heun", `solver_order` 3, the sigma schedules (`use_karras_sigmas`, ...),
//! `euler_at_final`, dynamic shifting or a finite `lambda_min_clipped` are errors naming the option.

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

/// `DPMSolverMultistepScheduler` options that the engine supports only at their default value (boolean
/// switches that must be false).
const DPM_OFF: [&str; 7] = [
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "use_flow_sigmas",
    "euler_at_final",
    "use_dynamic_shifting",
];

/// `DPMSolverMultistepScheduler` options read here but chosen at sample time, not stored in the blob.
const DPM_AT_SAMPLE_TIME: [(&str, &str); 3] = [
    ("solver_order", "--solver-order"),
    ("lower_order_final", "--lower-order-final"),
    ("final_sigmas_type", "--final-sigmas"),
];

/// DPM-Solver++ options with no effect on what the engine computes at their accepted values.
const DPM_IGNORED: [&str; 2] = ["flow_shift", "time_shift_type"];

/// Checks one `DPMSolverMultistepScheduler` option; `Ok(Some(note))` for an accepted one worth a note.
fn dpm_option(k: &str, v: &Value) -> Result<Option<String>> {
    let unsupported =
        || err!(Config, "unsupported scheduler option {k} = {v} (DPM-Solver++ here: {})", dpm_supported(k));
    match k {
        "algorithm_type" => match v.as_str() {
            // diffusers itself maps the retired "deis" to "dpmsolver++"
            Some("dpmsolver++" | "deis") => Ok(None),
            _ => Err(unsupported()),
        },
        "solver_type" => match v.as_str() {
            // diffusers maps the retired "logrho", "bh1", "bh2" to "midpoint"
            Some("midpoint" | "logrho" | "bh1" | "bh2") => Ok(None),
            _ => Err(unsupported()),
        },
        // -inf (no clipping), which Python's json writes as -Infinity (read as the string "-inf")
        "lambda_min_clipped" if v.as_str() == Some("-inf") => Ok(None),
        "lambda_min_clipped" => Err(unsupported()),
        k if DPM_OFF.contains(&k) && (v.as_bool() == Some(false) || v.is_null()) => Ok(None),
        k if DPM_OFF.contains(&k) => Err(unsupported()),
        "solver_order" => match v.as_u64() {
            Some(1 | 2) => Ok(Some(format!("scheduler option solver_order = {v} is chosen at sample time: host-cli sample --sampler dpm-solver --solver-order {v}"))),
            _ => Err(unsupported()),
        },
        "lower_order_final" | "final_sigmas_type" => {
            let ok = if k == "lower_order_final" { v.is_boolean() } else { matches!(v.as_str(), Some("zero" | "sigma_min")) };
            if !ok {
                return Err(unsupported());
            }
            let flag = DPM_AT_SAMPLE_TIME.iter().find(|(n, _)| *n == k).map_or("", |(_, f)| f);
            let value = v.as_str().map_or_else(|| v.to_string(), |s| s.replace('_', "-"));
            Ok(Some(format!("scheduler option {k} = {v} is chosen at sample time: host-cli sample --sampler dpm-solver {flag} {value}")))
        }
        _ => Ok(None),
    }
}

fn dpm_supported(k: &str) -> &'static str {
    match k {
        "algorithm_type" => "\"dpmsolver++\" only",
        "solver_type" => "\"midpoint\" only",
        "lambda_min_clipped" => "-inf only",
        "solver_order" => "1 or 2",
        "final_sigmas_type" => "\"zero\" or \"sigma_min\"",
        "lower_order_final" => "true or false",
        _ => "false only",
    }
}

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
    let class = m.get("_class_name").and_then(Value::as_str);
    if class == Some("DPMSolverMultistepScheduler") {
        // its defaults where they differ from DDPMScheduler's: linspace spacing, and no clip_sample option
        s.timestep_spacing = TimestepSpacing::Linspace;
        s.clip_sample = false;
    } else if let Some(name) = class {
        if !["DDPMScheduler", "DDIMScheduler"].contains(&name) {
            notes.push(format!("scheduler config is for {name}; reading its DDPM-compatible options"));
        }
    }
    let num = |k: &str, v: &Value| {
        // A number beyond f32's range would become infinite in the blob, which its validator refuses.
        v.as_f64()
            .map(|x| x as f32)
            .filter(|x| x.is_finite())
            .ok_or_else(|| err!(Config, "scheduler option '{k}': expected a finite 32-bit number, found {v}"))
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
        let dpm_key = DPM_OFF.contains(&k.as_str())
            || DPM_AT_SAMPLE_TIME.iter().any(|(n, _)| n == k)
            || ["algorithm_type", "solver_type", "lambda_min_clipped"].contains(&k.as_str());
        if dpm_key {
            notes.extend(dpm_option(k, v)?);
            continue;
        }
        if DPM_IGNORED.contains(&k.as_str()) {
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
            // DPMSolverMultistepScheduler's default is null: no learned variance
            "variance_type" if v.is_null() => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_beyond_f32_is_refused_not_stored_as_infinity() {
        let m: Map<String, Value> =
            serde_json::from_str(r#"{"thresholding": true, "sample_max_value": 1e60}"#).unwrap();
        let e = from_json(&m, &mut Graph::default()).unwrap_err().to_string();
        assert!(e.contains("sample_max_value") && e.contains("finite"), "{e}");
        let ok: Map<String, Value> = serde_json::from_str(r#"{"sample_max_value": 3.0e38}"#).unwrap();
        assert_eq!(from_json(&ok, &mut Graph::default()).unwrap().0.sample_max_value, 3.0e38);
    }
}
