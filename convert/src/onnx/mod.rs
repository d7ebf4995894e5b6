//! ONNX import: any PyTorch network exported with `torch.onnx.export(model, (x, t), "model.onnx")` (either of
//! torch's exporters, opset 13 and later) becomes a program.
//!
//! [`read`] parses the protobuf with `onnx-protobuf` (initializers inline or in external-data files beside the
//! model); [`lower`] folds constants and shapes, tabulates the timestep's sub-graph, fuses `x·sigmoid(x)` and
//! emits one program op per remaining node, refusing anything outside [`lower::SUPPORTED`] with the node's name.
//! The graph's first input is the sample `[N, C, H, W]` (N = 1 or symbolic), the second, if any, the timestep,
//! the third, if any, integer class labels (the timestep's and the labels' sub-graphs are tabulated).

mod arr;
pub mod lower;
pub mod read;

use std::path::Path;

use ddpm_core::Precision;
use serde_json::{Map, Value};

use crate::error::{ConvertError, Result};
use crate::graph::ModelHeader;
use crate::precision::int8::Calibration;
use crate::{bail, Converted};

pub use read::{parse, OnnxModel};

/// What to convert from an ONNX model, in memory.
pub struct OnnxRequest {
    /// The parsed model ([`parse`]).
    pub model: OnnxModel,
    /// Options of the import (`--set KEY=VALUE`): `timestep_scale` (float timesteps are fed as `t · scale`),
    /// `sample_size` (height and width for a graph whose sample size is symbolic: `N` or `[H, W]`), `num_classes`
    /// (classes of a class-label input that indexes no embedding table).
    pub options: Map<String, Value>,
    /// The scheduler config; `None` uses diffusers' `DDPMScheduler()` defaults.
    pub scheduler: Option<Map<String, Value>>,
    /// Scheduler entries that override it (`--scheduler-set KEY=VALUE`).
    pub scheduler_overrides: Map<String, Value>,
    /// Precision of the blob.
    pub precision: Precision,
    /// Activation calibration of an int8 conversion.
    pub calibration: Calibration,
}

/// The import options; `timesteps` is left 0 for the caller.
fn options(m: &Map<String, Value>) -> Result<lower::Options> {
    let mut scale = 1.0f32;
    let mut size = None;
    let mut classes = None;
    for (k, v) in m {
        match k.as_str() {
            "timestep_scale" => match v.as_f64() {
                Some(s) if s.is_finite() && s != 0.0 => scale = s as f32,
                _ => bail!(Config, "timestep_scale must be a non-zero number, not {v}"),
            },
            "sample_size" => {
                let dim = |x: &Value| x.as_u64().filter(|&d| (1..=65536).contains(&d)).map(|d| d as usize);
                size = match v {
                    Value::Array(a) if a.len() == 2 => dim(&a[0]).zip(dim(&a[1])),
                    x => dim(x).map(|d| (d, d)),
                };
                if size.is_none() {
                    bail!(Config, "sample_size must be N or [H, W] with sizes 1..65536, not {v}");
                }
            }
            "num_classes" => match v.as_u64() {
                Some(k) if (1..=65536).contains(&k) => classes = Some(k as usize),
                _ => bail!(Config, "num_classes must be 1..65536, not {v}"),
            },
            other => {
                bail!(Config, "unknown ONNX import option {other:?} (known: timestep_scale, sample_size, num_classes)")
            }
        }
    }
    Ok(lower::Options { timesteps: 0, timestep_scale: scale, sample_size: size, num_classes: classes })
}

/// Converts a parsed ONNX model into a blob.
pub fn convert_onnx(r: OnnxRequest) -> Result<Converted> {
    let mut opts = options(&r.options)?;
    let mut notes =
        vec![format!("ONNX graph: opset {}, {} nodes, from {}", r.model.opset, r.model.nodes.len(), r.model.producer)];
    // The schedule's length sizes the timestep tables; it is parsed again into the program's own graph below.
    let mut sched_json = r.scheduler.clone().unwrap_or_default();
    sched_json.extend(r.scheduler_overrides.clone());
    let (probe, _) = crate::diffusers::scheduler::from_json(&sched_json, &mut crate::graph::Graph::default())?;
    opts.timesteps = probe.num_train_timesteps as usize;
    let mut low = lower::lower(&r.model, &opts)?;
    notes.append(&mut low.notes);
    let (c, h, w) = low.sample;
    let schedule =
        crate::schedule(r.scheduler, r.scheduler_overrides, &mut low.graph, c, low.out_channels, &mut notes)?;
    let config = serde_json::json!({
        "_class_name": "OnnxGraph",
        "opset": r.model.opset,
        "producer": r.model.producer,
        "nodes": r.model.nodes.len(),
        "inputs": r.model.inputs.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
        "in_channels": c,
        "out_channels": low.out_channels,
        "sample_size": [h, w],
        "timestep_scale": opts.timestep_scale,
        "num_class_embeds": low.num_classes,
    });
    let hdr = ModelHeader {
        precision: r.precision,
        in_channels: c,
        out_channels: low.out_channels,
        height: h,
        width: w,
        num_classes: low.num_classes,
        schedule,
        config_json: config.to_string(),
    };
    let blob = crate::emit_checked(&low.graph, &hdr, low.input, low.output, &r.calibration, &mut notes)?;
    Ok(Converted { blob, notes })
}

/// Reads an ONNX file (external data relative to its folder).
pub fn read_onnx(path: &Path) -> Result<OnnxModel> {
    crate::lfs_pointer(path)?;
    let bytes = std::fs::read(path).map_err(|e| ConvertError::io(path, e))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&bytes, Some(&dir))
}
