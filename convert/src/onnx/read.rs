//! Reads an ONNX model (protobuf, via `onnx-protobuf`) into plain structures: nodes with typed attributes,
//! initializers as [`Arr`]ays (inline or external data), and the graph's inputs and outputs. Nothing of the file
//! is executed; sizes are checked before anything is allocated from them.

use std::collections::HashMap;
use std::path::{Component, Path};

use onnx_protobuf::{attribute_proto::AttributeType, tensor_proto, Message, ModelProto, TensorProto};
use protobuf::Enum;

use super::arr::{numel, Arr};
use crate::error::{Context, ConvertError, Result};
use crate::{bail, err};

/// A node's attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    /// A float.
    Float(f32),
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
    /// Floats.
    Floats(Vec<f32>),
    /// Integers.
    Ints(Vec<i64>),
    /// A tensor (`Constant`'s `value`).
    Tensor(Arr),
    /// Something the lowering never reads (graphs, sparse tensors, types, strings lists).
    Other,
}

/// One node of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name (or `#index` when the file gives none).
    pub name: String,
    /// Its op type (`Conv`, `Add`, ...).
    pub op: String,
    /// Its operator set domain (empty for the default `ai.onnx`).
    pub domain: String,
    /// Input tensor names (an empty name is an omitted optional input).
    pub inputs: Vec<String>,
    /// Output tensor names.
    pub outputs: Vec<String>,
    /// Attributes by name.
    pub attrs: HashMap<String, Attr>,
}

/// A graph input or output: its name, element type and dimensions (`None`: symbolic or unknown).
#[derive(Debug, Clone)]
pub struct Io {
    /// Tensor name.
    pub name: String,
    /// ONNX element type code (1 float, 7 int64, ...).
    pub elem: i32,
    /// Dimensions; `None` where the file names a symbol or gives nothing.
    pub dims: Vec<Option<usize>>,
}

/// An ONNX model, read.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    /// Nodes in file order (ONNX requires topological order).
    pub nodes: Vec<Node>,
    /// Initializers (weights and constants) by name.
    pub initializers: HashMap<String, Arr>,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<Io>,
    /// Graph outputs.
    pub outputs: Vec<Io>,
    /// The default domain's opset version.
    pub opset: i64,
    /// `producer_name producer_version`.
    pub producer: String,
}

/// The most bytes an external-data file may be read for.
const MAX_EXTERNAL: u64 = 1 << 32;

/// Parses ONNX bytes. `dir` is the folder external data files are relative to (`None`: external data is refused).
pub fn parse(bytes: &[u8], dir: Option<&Path>) -> Result<OnnxModel> {
    if bytes.starts_with(b"version https://git-lfs") {
        bail!(Checkpoint, "the file is a Git LFS pointer, not the ONNX model: run `git lfs pull`");
    }
    let m = ModelProto::parse_from_bytes(bytes).map_err(|e| err!(Checkpoint, "not an ONNX model: {e}"))?;
    let Some(g) = m.graph.as_ref() else { bail!(Checkpoint, "the ONNX file holds no graph") };
    if !m.functions.is_empty() {
        bail!(Model, "the ONNX file defines local functions ({}); export with inlined functions", m.functions.len());
    }
    let opset = m.opset_import.iter().filter(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version).max();
    let Some(opset) = opset else { bail!(Model, "the ONNX file imports no default-domain opset") };
    let mut initializers = HashMap::new();
    for t in &g.initializer {
        let a = tensor(t, dir).with_context(|| format!("initializer {}", t.name))?;
        initializers.insert(t.name.clone(), a);
    }
    if !g.sparse_initializer.is_empty() {
        bail!(Model, "sparse initializers are not supported");
    }
    let mut nodes = Vec::with_capacity(g.node.len());
    for (i, n) in g.node.iter().enumerate() {
        let name = if n.name.is_empty() { format!("#{i}") } else { n.name.clone() };
        let mut attrs = HashMap::new();
        for a in &n.attribute {
            let v = attr(a, dir).with_context(|| format!("node {name} ({}): attribute {}", n.op_type, a.name))?;
            attrs.insert(a.name.clone(), v);
        }
        nodes.push(Node {
            name,
            op: n.op_type.clone(),
            domain: n.domain.clone(),
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attrs,
        });
    }
    let io = |v: &onnx_protobuf::ValueInfoProto| {
        let tt = v.type_.as_ref().map(|t| t.tensor_type());
        let elem = tt.map_or(0, |t| t.elem_type);
        let dims = tt
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| if d.has_dim_value() { usize::try_from(d.dim_value()).ok() } else { None })
                    .collect()
            })
            .unwrap_or_default();
        Io { name: v.name.clone(), elem, dims }
    };
    let inputs = g.input.iter().filter(|i| !initializers.contains_key(&i.name)).map(io).collect();
    let outputs = g.output.iter().map(io).collect();
    let producer = format!("{} {}", m.producer_name, m.producer_version).trim().to_string();
    Ok(OnnxModel { nodes, initializers, inputs, outputs, opset, producer })
}

fn attr(a: &onnx_protobuf::AttributeProto, dir: Option<&Path>) -> Result<Attr> {
    let ty = a.type_.enum_value().ok();
    Ok(match ty {
        Some(AttributeType::FLOAT) => Attr::Float(a.f),
        Some(AttributeType::INT) => Attr::Int(a.i),
        Some(AttributeType::STRING) => Attr::Str(String::from_utf8_lossy(&a.s).into_owned()),
        Some(AttributeType::FLOATS) => Attr::Floats(a.floats.clone()),
        Some(AttributeType::INTS) => Attr::Ints(a.ints.clone()),
        Some(AttributeType::TENSOR) => match a.t.as_ref() {
            Some(t) => Attr::Tensor(tensor(t, dir)?),
            None => bail!(Model, "a tensor attribute without a tensor"),
        },
        _ => Attr::Other,
    })
}

/// A tensor's dimensions, checked.
fn dims(t: &TensorProto) -> Result<Vec<usize>> {
    let d = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| err!(Model, "negative dimension {d}")))
        .collect::<Result<Vec<_>>>()?;
    numel(&d)?;
    Ok(d)
}

/// The bytes of an external-data tensor: `location` relative to `dir`, `offset`, `length`.
fn external(t: &TensorProto, dir: Option<&Path>) -> Result<Vec<u8>> {
    let Some(dir) = dir else { bail!(Checkpoint, "tensor {} keeps its data in an external file", t.name) };
    let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
    let Some(loc) = get("location") else { bail!(Checkpoint, "external data without a location") };
    let rel = Path::new(loc);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        bail!(Checkpoint, "external data location {loc:?} leaves the model's folder");
    }
    let num = |k: &str| -> Result<Option<u64>> {
        get(k).map(|v| v.parse::<u64>().map_err(|_| err!(Checkpoint, "external data {k} {v:?}"))).transpose()
    };
    let (offset, length) = (num("offset")?.unwrap_or(0), num("length")?);
    let path = dir.join(rel);
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(&path).map_err(|e| ConvertError::io(&path, e))?;
    let size = f.metadata().map_err(|e| ConvertError::io(&path, e))?.len();
    let length = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) || length > MAX_EXTERNAL {
        bail!(
            Checkpoint,
            "external data {}: bytes {offset}..+{length} are not in the file ({size} bytes)",
            path.display()
        );
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| ConvertError::io(&path, e))?;
    let mut buf = vec![0u8; length as usize];
    f.read_exact(&mut buf).map_err(|e| ConvertError::io(&path, e))?;
    Ok(buf)
}

/// A tensor's data as an [`Arr`]: raw little-endian bytes or the typed fields, checked against its dimensions.
pub fn tensor(t: &TensorProto, dir: Option<&Path>) -> Result<Arr> {
    use tensor_proto::DataType as D;
    let shape = dims(t)?;
    let n = numel(&shape)?;
    let is_external = t.data_location.enum_value().ok() == Some(tensor_proto::DataLocation::EXTERNAL);
    let raw = if is_external { external(t, dir)? } else { t.raw_data.clone() };
    let Some(ty) = D::from_i32(t.data_type) else { bail!(Model, "unknown tensor type {}", t.data_type) };
    let width = match ty {
        D::FLOAT | D::INT32 | D::UINT32 => 4,
        D::DOUBLE | D::INT64 | D::UINT64 => 8,
        D::FLOAT16 | D::BFLOAT16 | D::INT16 | D::UINT16 => 2,
        D::INT8 | D::UINT8 | D::BOOL => 1,
        _ => bail!(Model, "tensor type {ty:?} is not supported"),
    };
    let from_raw = !raw.is_empty() || is_external;
    if from_raw && raw.len() != n * width {
        bail!(Model, "tensor {} of shape {shape:?} holds {} bytes, not {}", t.name, raw.len(), n * width);
    }
    let field_len = |len: usize| -> Result<()> {
        if len != n {
            bail!(Model, "tensor {} of shape {shape:?} holds {len} values", t.name);
        }
        Ok(())
    };
    let chunks = |w: usize| raw.chunks_exact(w);
    let arr = match ty {
        D::FLOAT if from_raw => {
            Arr::f(shape, chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))).collect())
        }
        D::FLOAT => {
            field_len(t.float_data.len())?;
            Arr::f(shape, t.float_data.clone())
        }
        D::DOUBLE if from_raw => {
            Arr::f(shape, chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect())
        }
        D::DOUBLE => {
            field_len(t.double_data.len())?;
            Arr::f(shape, t.double_data.iter().map(|&v| v as f32).collect())
        }
        D::FLOAT16 | D::BFLOAT16 if from_raw => {
            let conv = |b: [u8; 2]| {
                if ty == D::FLOAT16 {
                    half::f16::from_le_bytes(b).to_f32()
                } else {
                    half::bf16::from_le_bytes(b).to_f32()
                }
            };
            Arr::f(shape, chunks(2).map(|c| conv([c[0], c[1]])).collect())
        }
        D::FLOAT16 | D::BFLOAT16 => {
            field_len(t.int32_data.len())?;
            let conv = |v: i32| {
                let b = (v as u16).to_le_bytes();
                if ty == D::FLOAT16 {
                    half::f16::from_le_bytes(b).to_f32()
                } else {
                    half::bf16::from_le_bytes(b).to_f32()
                }
            };
            Arr::f(shape, t.int32_data.iter().map(|&v| conv(v)).collect())
        }
        D::INT64 if from_raw => {
            Arr::i(shape, chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
        }
        D::INT64 => {
            field_len(t.int64_data.len())?;
            Arr::i(shape, t.int64_data.clone())
        }
        D::UINT64 if from_raw => {
            Arr::i(shape, chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as i64).collect())
        }
        D::UINT64 => {
            field_len(t.uint64_data.len())?;
            Arr::i(shape, t.uint64_data.iter().map(|&v| v as i64).collect())
        }
        D::INT32 if from_raw => {
            Arr::i(shape, chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64).collect())
        }
        D::UINT32 if from_raw => {
            Arr::i(shape, chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64).collect())
        }
        D::INT16 if from_raw => Arr::i(shape, chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect()),
        D::UINT16 if from_raw => Arr::i(shape, chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect()),
        D::INT8 if from_raw => Arr::i(shape, raw.iter().map(|&b| b as i8 as i64).collect()),
        D::UINT8 | D::BOOL if from_raw => Arr::i(shape, raw.iter().map(|&b| b as i64).collect()),
        D::INT32 | D::UINT32 | D::INT16 | D::UINT16 | D::INT8 | D::UINT8 | D::BOOL => {
            field_len(t.int32_data.len())?;
            Arr::i(shape, t.int32_data.iter().map(|&v| v as i64).collect())
        }
        _ => bail!(Model, "tensor type {ty:?} is not supported"),
    };
    Ok(arr)
}
