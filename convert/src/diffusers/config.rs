//! diffusers `UNet2DModel` config: parsed from `config.json`, or inferred from tensor names and shapes, and
//! checked against what the executor supports. Unsupported values are errors that name the option.

use std::collections::BTreeMap;

use crate::error::{Context as _, Result};
use crate::{bail, err};
use serde_json::{json, Map, Value};

use crate::load::StateDict;

/// The `UNet2DModel.__init__` arguments, with diffusers' defaults (diffusers 0.42, `models/unets/unet_2d.py`).
fn defaults() -> Map<String, Value> {
    let v = json!({
        "sample_size": null,
        "in_channels": 3,
        "out_channels": 3,
        "center_input_sample": false,
        "time_embedding_type": "positional",
        "time_embedding_dim": null,
        "freq_shift": 0,
        "flip_sin_to_cos": true,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [224, 448, 672, 896],
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": 0.0,
        "act_fn": "silu",
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "attn_norm_num_groups": null,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "default",
        "add_attention": true,
        "class_embed_type": null,
        "num_class_embeds": null,
        "num_train_timesteps": null
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// What a state dict that is not a `UNet2DModel` looks like, from its tensor names.
fn recognise<'a>(names: impl Iterator<Item = &'a str> + Clone) -> &'static str {
    let has = |suffix: &str| names.clone().any(|n| n == suffix || n.ends_with(&format!(".{suffix}")));
    let any = |part: &str| names.clone().any(|n| n.contains(part));
    if has("init_conv.weight") && has("final_conv.weight") && any("mid_block1.") {
        "this is lucidrains' denoising-diffusion-pytorch Unet, not a diffusers UNet2DModel"
    } else if (has("time_embed.weight") || any("te1.")) && (any("b1.") || any("down1.")) {
        "this looks like a tutorial UNet (time_embed table, te*/b*/down*/up* blocks), not a diffusers UNet2DModel"
    } else if any("first_stage_model.") || any("encoder.down.") || any("quant_conv.") {
        "this is a latent diffusion checkpoint (autoencoder weights): only pixel-space DDPMs are supported"
    } else {
        "not a diffusers UNet2DModel checkpoint"
    }
}

/// Keys of a `UNet2DConditionModel` config: a config with one of them describes a conditioned network, which
/// no amount of ignoring makes a `UNet2DModel`.
const CONDITIONAL_KEYS: [&str; 8] = [
    "cross_attention_dim",
    "encoder_hid_dim",
    "addition_embed_type",
    "transformer_layers_per_block",
    "only_cross_attention",
    "use_linear_projection",
    "projection_class_embeddings_input_dim",
    "conditioning_channels",
];

/// diffusers' default of a [`MUST_GIVE`] option, for messages.
fn diffusers_default(k: &str) -> Option<&'static str> {
    match k {
        "norm_num_groups" => Some("32"),
        "attention_head_dim" => Some("8"),
        _ => None,
    }
}

/// Options a checkpoint's tensors cannot tell, that have no safe default, and that must be given when there
/// is no config file.
const MUST_GIVE: [&str; 3] = ["sample_size", "norm_num_groups", "attention_head_dim"];

/// A validated `UNet2DModel` config.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Sample height (`sample_size`).
    pub height: usize,
    /// Sample width (`sample_size`).
    pub width: usize,
    /// `in_channels`.
    pub in_channels: usize,
    /// `out_channels` (twice `in_channels` with learned variance).
    pub out_channels: usize,
    /// `center_input_sample`: the network sees `2x − 1`.
    pub center_input_sample: bool,
    /// Width of the time embedding MLP (`time_embedding_dim`, default 4 × the first block width).
    pub time_embed_dim: usize,
    /// `freq_shift` of the sinusoidal timestep embedding.
    pub freq_shift: f32,
    /// `flip_sin_to_cos` of the sinusoidal timestep embedding.
    pub flip_sin_to_cos: bool,
    /// Per level: does the down block have attention.
    pub down_attn: Vec<bool>,
    /// Per level, in up order: does the up block have attention.
    pub up_attn: Vec<bool>,
    /// Whether there is a mid block (`mid_block_type` not null).
    pub mid_block: bool,
    /// `block_out_channels`, one per level.
    pub block_out_channels: Vec<usize>,
    /// `layers_per_block` (the up blocks have one more).
    pub layers_per_block: usize,
    /// `mid_block_scale_factor`: the mid block's residual outputs are divided by it.
    pub mid_block_scale_factor: f32,
    /// `downsample_padding` of the strided down-sampling convolutions.
    pub downsample_padding: usize,
    /// `attention_head_dim`; `None` = one head per attention layer.
    pub attention_head_dim: Option<usize>,
    /// `norm_num_groups` of every group norm.
    pub norm_num_groups: usize,
    /// `attn_norm_num_groups`: the attention blocks' group count, when it differs.
    pub attn_norm_num_groups: Option<usize>,
    /// `norm_eps` of every group norm.
    pub norm_eps: f32,
    /// `resnet_time_scale_shift` is `scale_shift` (else `default`).
    pub scale_shift: bool,
    /// `add_attention`: the mid block has attention.
    pub add_attention: bool,
    /// `num_class_embeds` of a class-conditional model.
    pub num_class_embeds: Option<usize>,
    /// The full config (defaults filled in), stored in the blob for `inspect`.
    pub json: Map<String, Value>,
    /// Keys of the given config that a `UNet2DModel` does not take (ignored, as diffusers ignores them).
    pub ignored: Vec<String>,
}

fn opt_usize(m: &Map<String, Value>, k: &str) -> Result<Option<usize>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| err!(Config, "config option '{k}': expected a non-negative integer, found {v}")),
    }
}

fn get_usize(m: &Map<String, Value>, k: &str) -> Result<usize> {
    opt_usize(m, k)?.ok_or_else(|| err!(Config, "config option '{k}' is missing (null)"))
}

fn get_f32(m: &Map<String, Value>, k: &str) -> Result<f32> {
    m.get(k)
        .and_then(Value::as_f64)
        .map(|v| v as f32)
        .ok_or_else(|| err!(Config, "config option '{k}': expected a number"))
}

fn get_bool(m: &Map<String, Value>, k: &str) -> Result<bool> {
    m.get(k).and_then(Value::as_bool).ok_or_else(|| err!(Config, "config option '{k}': expected true or false"))
}

fn get_str<'a>(m: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!(Config, "config option '{k}': expected a string, found {v}"),
    }
}

fn get_list<'a>(m: &'a Map<String, Value>, k: &str) -> Result<&'a Vec<Value>> {
    m.get(k).and_then(Value::as_array).ok_or_else(|| err!(Config, "config option '{k}': expected a list"))
}

fn unsupported(k: &str, v: impl std::fmt::Display, supported: &str) -> crate::ConvertError {
    err!(Config, "unsupported UNet2DModel option {k} = {v} (supported: {supported})")
}

impl UNetConfig {
    /// Validates a config as diffusers' `config.json` writes it (missing keys take diffusers' defaults).
    pub fn from_json(user: &Map<String, Value>) -> Result<Self> {
        let mut m = defaults();
        let mut ignored = Vec::new();
        if let Some(name) = get_str(user, "_class_name")? {
            if name != "UNet2DModel" {
                bail!(Config, "config is for a '{name}', not a UNet2DModel (the only family supported so far)");
            }
        }
        for (k, v) in user {
            if k.starts_with('_') {
                continue;
            }
            if CONDITIONAL_KEYS.contains(&k.as_str()) {
                bail!(
                    Config,
                    "config option '{k}' belongs to a text- or image-conditioned UNet (UNet2DConditionModel), not a \
                     pixel UNet2DModel"
                );
            }
            if !m.contains_key(k) {
                // diffusers ignores keys its UNet2DModel does not take (with a warning); so does the converter.
                ignored.push(k.clone());
                continue;
            }
            m.insert(k.clone(), v.clone());
        }

        let (height, width) = match m.get("sample_size") {
            Some(Value::Number(n)) => {
                let s =
                    n.as_u64().ok_or_else(|| err!(Config, "config option 'sample_size' must be a positive integer"))?;
                (s as usize, s as usize)
            }
            Some(Value::Array(a)) if a.len() == 2 => {
                let d = |i: usize| a[i].as_u64().map(|v| v as usize);
                match (d(0), d(1)) {
                    (Some(h), Some(w)) => (h, w),
                    _ => bail!(Config, "config option 'sample_size' must be an integer or [height, width]"),
                }
            }
            _ => bail!(
                Config,
                "config option 'sample_size' is missing: give it in the config or with --set sample_size=N"
            ),
        };
        let block_out_channels: Vec<usize> = get_list(&m, "block_out_channels")?
            .iter()
            .map(|v| v.as_u64().map(|x| x as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| err!(Config, "config option 'block_out_channels' must be a list of integers"))?;
        let levels = block_out_channels.len();
        if levels == 0 || block_out_channels.contains(&0) {
            bail!(Config, "config option 'block_out_channels' must be a non-empty list of positive integers");
        }
        let block_types = |k: &str, plain: &str, attn: &str| -> Result<Vec<bool>> {
            let list = get_list(&m, k)?;
            if list.len() != levels {
                bail!(Config, "config option '{k}' has {} entries but block_out_channels has {levels}", list.len());
            }
            list.iter()
                .map(|v| match v.as_str() {
                    Some(s) if s == plain => Ok(false),
                    Some(s) if s == attn => Ok(true),
                    _ => Err(unsupported(k, v, &format!("{plain}, {attn}"))),
                })
                .collect()
        };
        let down_attn = block_types("down_block_types", "DownBlock2D", "AttnDownBlock2D")?;
        let up_attn = block_types("up_block_types", "UpBlock2D", "AttnUpBlock2D")?;
        let mid_block = match get_str(&m, "mid_block_type")? {
            None => false,
            Some("UNetMidBlock2D") => true,
            Some(s) => return Err(unsupported("mid_block_type", s, "UNetMidBlock2D, null")),
        };
        let expect = |k: &str, allowed: &[&str]| -> Result<()> {
            match get_str(&m, k)? {
                Some(s) if allowed.contains(&s) => Ok(()),
                other => Err(unsupported(k, other.unwrap_or("null"), &allowed.join(", "))),
            }
        };
        expect("time_embedding_type", &["positional"])?;
        expect("downsample_type", &["conv"])?;
        expect("upsample_type", &["conv"])?;
        expect("act_fn", &["silu", "swish"])?;
        expect("resnet_time_scale_shift", &["default", "scale_shift"])?;
        if let Some(s) = get_str(&m, "class_embed_type")? {
            return Err(unsupported("class_embed_type", s, "null (with num_class_embeds)"));
        }
        let downsample_padding = get_usize(&m, "downsample_padding")?;
        if downsample_padding > 1 {
            return Err(unsupported("downsample_padding", downsample_padding, "0, 1"));
        }
        let norm_num_groups = match opt_usize(&m, "norm_num_groups")? {
            Some(g) if g > 0 => g,
            _ => return Err(unsupported("norm_num_groups", "null", "a positive integer")),
        };
        let attention_head_dim = opt_usize(&m, "attention_head_dim")?;
        let attn_norm_num_groups = opt_usize(&m, "attn_norm_num_groups")?;
        let c0 = block_out_channels[0];
        let time_embed_dim = opt_usize(&m, "time_embedding_dim")?.unwrap_or(4 * c0);
        let cfg = UNetConfig {
            height,
            width,
            in_channels: get_usize(&m, "in_channels")?,
            out_channels: get_usize(&m, "out_channels")?,
            center_input_sample: get_bool(&m, "center_input_sample")?,
            time_embed_dim,
            freq_shift: get_f32(&m, "freq_shift")?,
            flip_sin_to_cos: get_bool(&m, "flip_sin_to_cos")?,
            down_attn,
            up_attn,
            mid_block,
            layers_per_block: get_usize(&m, "layers_per_block")?,
            mid_block_scale_factor: get_f32(&m, "mid_block_scale_factor")?,
            downsample_padding,
            attention_head_dim,
            norm_num_groups,
            attn_norm_num_groups,
            norm_eps: get_f32(&m, "norm_eps")?,
            scale_shift: get_str(&m, "resnet_time_scale_shift")? == Some("scale_shift"),
            add_attention: get_bool(&m, "add_attention")?,
            num_class_embeds: opt_usize(&m, "num_class_embeds")?,
            block_out_channels,
            json: m,
            ignored,
        };
        cfg.check_geometry()?;
        Ok(cfg)
    }

    fn check_geometry(&self) -> Result<()> {
        let levels = self.block_out_channels.len();
        if self.in_channels == 0 || self.out_channels == 0 || self.layers_per_block == 0 {
            bail!(Config, "in_channels, out_channels and layers_per_block must be positive");
        }
        let step = 1usize << (levels - 1);
        if self.height == 0 || self.width == 0 || !self.height.is_multiple_of(step) || !self.width.is_multiple_of(step)
        {
            bail!(
                Config,
                "sample_size {}x{} must be a positive multiple of {step} ({levels} levels halve it {} times)",
                self.height,
                self.width,
                levels - 1
            );
        }
        if self.time_embed_dim == 0 || self.block_out_channels[0] < 2 {
            bail!(Config, "time embedding dimensions must be at least 2");
        }
        if !(self.mid_block_scale_factor.is_finite() && self.mid_block_scale_factor != 0.0) {
            bail!(Config, "config option 'mid_block_scale_factor' must be a non-zero number");
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            bail!(Config, "config option 'norm_eps' must be a non-negative number");
        }
        if self.num_class_embeds == Some(0) {
            bail!(Config, "config option 'num_class_embeds' must be positive or null");
        }
        for &c in &self.block_out_channels {
            if c % self.norm_num_groups != 0 {
                bail!(Config, "norm_num_groups = {} does not divide block channels {c}", self.norm_num_groups);
            }
            if let Some(d) = self.attention_head_dim {
                if d == 0 || c % d != 0 {
                    bail!(Config, "attention_head_dim = {d} does not divide block channels {c}");
                }
            }
            if let Some(g) = self.attn_norm_num_groups {
                if g == 0 || c % g != 0 {
                    bail!(Config, "attn_norm_num_groups = {g} does not divide block channels {c}");
                }
            }
        }
        // Up-block resnets see concatenations of channel counts; their group norms must divide those too.
        let mut prev = *self.block_out_channels.last().unwrap_or(&0);
        for (i, &out) in self.block_out_channels.iter().rev().enumerate() {
            let skip_in = self.block_out_channels[levels.saturating_sub(i + 2).min(levels - 1)];
            for j in 0..=self.layers_per_block {
                let res_in = if j == 0 { prev } else { out };
                let skip = if j == self.layers_per_block { skip_in } else { out };
                if (res_in + skip) % self.norm_num_groups != 0 {
                    bail!(
                        Config,
                        "norm_num_groups = {} does not divide up-block input channels {}",
                        self.norm_num_groups,
                        res_in + skip
                    );
                }
            }
            prev = out;
        }
        Ok(())
    }

    /// Infers a config from tensor names and shapes. Options the tensors cannot tell take diffusers' defaults
    /// (listed in the returned note), except [`MUST_GIVE`], which must come from `overrides`.
    pub fn infer(sd: &StateDict, overrides: &Map<String, Value>) -> Result<(Map<String, Value>, String)> {
        let t = &sd.tensors;
        let dims = |name: &str| -> Option<&Vec<usize>> { t.get(name).map(|x| &x.shape) };
        let Some(conv_in) = dims("conv_in.weight") else {
            let first: Vec<&str> = t.keys().take(5).map(String::as_str).collect();
            bail!(
                Config,
                "no 'conv_in.weight' tensor: {} (first tensors: {}). Any PyTorch network converts through ONNX: \
                 torch.onnx.export(model, (x, t), \"model.onnx\"), then `host-cli convert model.onnx`",
                recognise(t.keys().map(String::as_str)),
                first.join(", ")
            );
        };
        let conv_out = dims("conv_out.weight").ok_or_else(|| err!(Config, "missing tensor 'conv_out.weight'"))?;
        let mut m = Map::new();
        m.insert("in_channels".into(), json!(conv_in.get(1).copied().unwrap_or(0)));
        m.insert("out_channels".into(), json!(conv_out.first().copied().unwrap_or(0)));
        let mut boc = Vec::new();
        let (mut downs, mut ups) = (Vec::new(), Vec::new());
        // A tensor's leading dimension; 0 for a zero-dimensional one (which the config checks then refuse).
        let lead = |d: &Vec<usize>| d.first().copied().unwrap_or(0);
        while let Some(d) = dims(&format!("down_blocks.{}.resnets.0.conv1.weight", boc.len())) {
            let i = boc.len();
            boc.push(lead(d));
            let attn = t.keys().any(|k| k.starts_with(&format!("down_blocks.{i}.attentions.")));
            downs.push(if attn { "AttnDownBlock2D" } else { "DownBlock2D" });
            let attn_up = t.keys().any(|k| k.starts_with(&format!("up_blocks.{i}.attentions.")));
            ups.push(if attn_up { "AttnUpBlock2D" } else { "UpBlock2D" });
        }
        if boc.is_empty() {
            bail!(Config, "no 'down_blocks.0.resnets.0.conv1.weight' tensor: not a diffusers UNet2DModel checkpoint");
        }
        let layers = (0..).take_while(|j| t.contains_key(&format!("down_blocks.0.resnets.{j}.conv1.weight"))).count();
        m.insert("block_out_channels".into(), json!(boc));
        m.insert("down_block_types".into(), json!(downs));
        m.insert("up_block_types".into(), json!(ups));
        m.insert("layers_per_block".into(), json!(layers));
        let temb = dims("time_embedding.linear_1.weight").map(lead).unwrap_or(4 * boc[0]);
        if temb != 4 * boc[0] {
            m.insert("time_embedding_dim".into(), json!(temb));
        }
        let proj = dims("down_blocks.0.resnets.0.time_emb_proj.weight").map(lead);
        let shift = if proj == Some(2 * boc[0]) { "scale_shift" } else { "default" };
        m.insert("resnet_time_scale_shift".into(), json!(shift));
        let mid = t.keys().any(|k| k.starts_with("mid_block."));
        m.insert("mid_block_type".into(), if mid { json!("UNetMidBlock2D") } else { Value::Null });
        m.insert("add_attention".into(), json!(t.keys().any(|k| k.starts_with("mid_block.attentions."))));
        if let Some(d) = dims("class_embedding.weight") {
            m.insert("num_class_embeds".into(), json!(lead(d)));
        }
        if shift == "scale_shift" && t.contains_key("mid_block.attentions.0.group_norm.weight") {
            // With scale_shift, diffusers gives the mid attention a group norm only if attn_norm_num_groups is
            // set; its value is not visible in the shapes.
            if !overrides.contains_key("attn_norm_num_groups") {
                bail!(Config, "cannot infer 'attn_norm_num_groups' (mid-block attention has a group norm): pass --set attn_norm_num_groups=N or --config");
            }
        }
        let has_attn = t.keys().any(|k| k.contains(".attentions."));
        let missing: Vec<&str> = MUST_GIVE
            .iter()
            .copied()
            .filter(|k| !overrides.contains_key(*k))
            .filter(|&k| k != "attention_head_dim" || has_attn)
            .collect();
        if !missing.is_empty() {
            let named: Vec<String> = missing
                .iter()
                .map(|k| match diffusers_default(k) {
                    Some(d) => format!("{k} (diffusers' default {d}, if the model was built with it)"),
                    None => k.to_string(),
                })
                .collect();
            let sets: Vec<String> =
                missing.iter().map(|k| format!("--set {k}={}", diffusers_default(k).unwrap_or("..."))).collect();
            bail!(
                Config,
                "no config given and these UNet2DModel options cannot be read from the tensors: {} \
                 (pass --config config.json, or {})",
                named.join(", "),
                sets.join(" ")
            );
        }
        let assumed: Vec<String> = [
            "flip_sin_to_cos",
            "freq_shift",
            "downsample_padding",
            "norm_eps",
            "center_input_sample",
            "mid_block_scale_factor",
            "act_fn",
        ]
        .iter()
        .filter(|k| !overrides.contains_key(**k))
        .map(|k| format!("{k}={}", defaults().get(*k).cloned().unwrap_or(Value::Null)))
        .collect();
        let note = if assumed.is_empty() {
            "config inferred from tensor shapes".to_string()
        } else {
            format!(
                "config inferred from tensor shapes; assumed diffusers defaults {} (override with --set)",
                assumed.join(", ")
            )
        };
        Ok((m, note))
    }
}

/// Parses `KEY=VALUE` overrides; VALUE is JSON (`16`, `[16, 8]`, `true`, `"silu"`) or else a bare string.
pub fn parse_overrides(sets: &[String]) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for s in sets {
        let (k, v) = s.split_once('=').ok_or_else(|| err!(Config, "--set '{s}': expected KEY=VALUE"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.trim().to_string(), v);
    }
    Ok(m)
}

/// Reads a JSON object from a file.
pub fn read_json_object(path: &std::path::Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // Python's json module writes non-finite floats as bare `Infinity`, `-Infinity` and `NaN` (diffusers'
    // DPMSolverMultistepScheduler saves `"lambda_min_clipped": -Infinity`); read them as the strings "inf",
    // "-inf" and "nan", which the readers of such options accept.
    let parsed =
        serde_json::from_str(&text).or_else(|e| serde_json::from_str(&python_floats_as_strings(&text)).map_err(|_| e));
    match parsed.with_context(|| format!("{} is not valid JSON", path.display()))? {
        Value::Object(m) => Ok(m),
        _ => bail!(Config, "{} does not hold a JSON object", path.display()),
    }
}

/// `text` with Python's bare non-finite float tokens outside strings replaced by JSON strings.
fn python_floats_as_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            (in_string, escaped) = (escaped || c != '"', !escaped && c == '\\');
        } else if c == '"' {
            in_string = true;
        } else if let Some((token, as_string)) =
            [("-Infinity", "\"-inf\""), ("Infinity", "\"inf\""), ("NaN", "\"nan\"")]
                .into_iter()
                .find(|(t, _)| rest.starts_with(t))
        {
            out.push_str(as_string);
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Renames legacy diffusers names to current ones: the old attention block's `query`, `key`, `value`,
/// `proj_attn` become `to_q`, `to_k`, `to_v`, `to_out.0`; a `module.` prefix (DataParallel) is dropped.
pub fn normalize_names(sd: &mut StateDict) {
    let all_module = !sd.tensors.is_empty() && sd.tensors.keys().all(|k| k.starts_with("module."));
    let old = std::mem::take(&mut sd.tensors);
    let mut new = BTreeMap::new();
    for (k, v) in old {
        let mut k = if all_module { k["module.".len()..].to_string() } else { k };
        if k.contains(".attentions.") {
            for (from, to) in
                [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")]
            {
                k = k.replace(from, to);
            }
        }
        new.insert(k, v);
    }
    sd.tensors = new;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Tensor;

    /// A checkpoint whose tensors [`UNetConfig::infer`] reads by their leading dimension.
    const BASE: [(&str, &[usize]); 4] = [
        ("conv_in.weight", &[32, 1, 3, 3]),
        ("conv_out.weight", &[1, 32, 3, 3]),
        ("down_blocks.0.resnets.0.conv1.weight", &[32, 32, 3, 3]),
        ("time_embedding.linear_1.weight", &[128, 32]),
    ];

    fn state_dict(tensors: &[(&str, &[usize])]) -> StateDict {
        let mut sd = StateDict::default();
        for &(name, shape) in tensors {
            let data = vec![0.0; shape.iter().product()];
            sd.tensors.insert(name.into(), Tensor { shape: shape.to_vec(), data });
        }
        sd
    }

    #[test]
    fn other_families_are_named() {
        let luc =
            ["init_conv.weight", "downs.0.0.block1.proj.weight", "mid_block1.block1.proj.weight", "final_conv.weight"];
        assert!(recognise(luc.iter().copied()).contains("lucidrains"));
        let ema = luc.map(|n| format!("ema_model.model.{n}"));
        assert!(recognise(ema.iter().map(String::as_str)).contains("lucidrains"));
        let tutorial = ["time_embed.weight", "te1.0.weight", "b1.0.ln.weight", "down1.weight"];
        assert!(recognise(tutorial.iter().copied()).contains("tutorial UNet"));
        assert_eq!(recognise(["fc1.weight"].into_iter()), "not a diffusers UNet2DModel checkpoint");
    }

    /// Fuzz finding (`config` target): a zero-dimensional tensor under a name whose leading dimension `infer`
    /// reads indexed an empty shape and panicked. Each one now gives a config that `from_json` refuses, or, for
    /// `time_emb_proj`, the default time-scale shift.
    #[test]
    fn infer_zero_dimensional_tensors() {
        let overrides = parse_overrides(&["sample_size=8".into(), "norm_num_groups=4".into()]).unwrap();
        for (name, refused) in [
            ("down_blocks.0.resnets.0.conv1.weight", true),
            ("time_embedding.linear_1.weight", true),
            ("class_embedding.weight", true),
            ("down_blocks.0.resnets.0.time_emb_proj.weight", false),
        ] {
            let mut tensors: Vec<(&str, &[usize])> = BASE.iter().copied().filter(|t| t.0 != name).collect();
            tensors.push((name, &[]));
            let (mut m, _) = UNetConfig::infer(&state_dict(&tensors), &overrides).unwrap();
            m.extend(overrides.clone());
            assert_eq!(UNetConfig::from_json(&m).is_err(), refused, "{name}: {m:?}");
        }
    }
}
