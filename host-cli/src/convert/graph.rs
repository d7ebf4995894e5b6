//! A network program under construction: activation values, weight tensors and ops; then the arena plan and
//! the blob bytes. Family builders (see `unet.rs`) emit ops through this; the executor in `ddpm-core` runs them.

use anyhow::{bail, Result};
use ddpm_core::blob::{
    DType, Precision, Schedule, ALIGN, FAMILY_UNET2D, HEADER_BYTES, MAGIC, OP_RECORD_BYTES, SCHEDULE_RECORD_BYTES,
    TENSOR_RECORD_BYTES, VALUE_RECORD_BYTES, VALUE_TYPE_RECORD_BYTES, VERSION, VERSION_FLOAT,
};
use ddpm_core::program::Op;

/// An activation value `(c, h, w)` of type `dtype` (i8/i16 values stand for `(q − zero) × scale`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub dtype: DType,
    pub scale: f32,
    pub zero: i32,
}

impl Shape {
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// Stored tensor data. f32 tensors of two or more dimensions become f16 in an f16 blob.
#[derive(Debug, Clone)]
pub enum Data {
    F32(Vec<f32>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
}

/// A weight tensor to store.
pub struct Tensor {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Data,
}

/// Everything the blob header states besides the program.
pub struct ModelHeader {
    pub precision: Precision,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    pub schedule: Schedule,
    pub config_json: String,
}

#[derive(Default)]
pub struct Graph {
    pub values: Vec<Shape>,
    pub tensors: Vec<Tensor>,
    pub ops: Vec<Op>,
    /// `(a, b)`: value `b` takes over `a`'s memory (an op that works in place; `a` dies where `b` is born).
    pub aliases: Vec<(u32, u32)>,
}

/// Value ids an op reads or writes.
pub fn op_values(op: &Op) -> Vec<u32> {
    match *op {
        Op::TimestepEmbed { out, .. } | Op::ClassEmbed { out, .. } => vec![out],
        Op::Conv2d { out, x, scratch, .. } => vec![out, x, scratch],
        Op::Linear { out, x, .. }
        | Op::Silu { out, x }
        | Op::GroupNorm { out, x, .. }
        | Op::Upsample2x { out, x }
        | Op::Affine { out, x, .. } => vec![out, x],
        Op::AddChannel { x, v } | Op::ScaleShift { x, v } => vec![x, v],
        Op::Add { out, a, b, .. } | Op::Concat { out, a, b } => vec![out, a, b],
        Op::Attention { out, x, xn, scratch, .. } => vec![out, x, xn, scratch],
        Op::Quantize { out, x } | Op::Dequantize { out, x } | Op::QLut { out, x, .. } => vec![out, x],
        Op::QConv2d { out, x, .. } | Op::QGroupNorm { out, x, .. } | Op::QClassEmbed { out, x, .. } => vec![out, x],
        Op::QScaleShift { out, x, v } => vec![out, x, v],
        Op::QAdd { out, a, b, .. } | Op::QConcat { out, a, b, .. } => vec![out, a, b],
        Op::QSdpa { out, q, k, v, scratch, .. } => vec![out, q, k, v, scratch],
    }
}

impl Graph {
    pub fn value(&mut self, c: usize, h: usize, w: usize) -> u32 {
        self.typed_value(c, h, w, DType::F32, 0.0)
    }

    pub fn typed_value(&mut self, c: usize, h: usize, w: usize, dtype: DType, scale: f32) -> u32 {
        self.values.push(Shape { c, h, w, dtype, scale, zero: 0 });
        (self.values.len() - 1) as u32
    }

    pub fn shape(&self, v: u32) -> Shape {
        self.values[v as usize]
    }

    pub fn tensor(&mut self, name: &str, dims: Vec<usize>, data: Vec<f32>) -> u32 {
        self.typed_tensor(name, dims, Data::F32(data))
    }

    pub fn typed_tensor(&mut self, name: &str, dims: Vec<usize>, data: Data) -> u32 {
        self.tensors.push(Tensor { name: name.to_string(), dims, data });
        (self.tensors.len() - 1) as u32
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Assigns arena offsets by liveness, first fit: a value occupies its range from the first op that touches
    /// it to the last; values whose ranges do not overlap may share memory. `pinned` values (input, output)
    /// live for the whole program. Returns byte offsets and the arena size.
    /// Aliased values (`self.aliases`) form one slot: the union of their lifetimes, the largest of their sizes.
    pub fn plan(&self, pinned: &[u32]) -> (Vec<usize>, usize) {
        let n = self.values.len();
        // Slot representative of each value.
        let mut slot: Vec<usize> = (0..n).collect();
        for &(a, b) in &self.aliases {
            let (root, old) = (slot[a as usize], slot[b as usize]);
            for s in slot.iter_mut().filter(|s| **s == old) {
                *s = root;
            }
        }
        let mut first = vec![usize::MAX; n];
        let mut last = vec![0usize; n];
        let mut size = vec![0usize; n];
        for (i, op) in self.ops.iter().enumerate() {
            for v in op_values(op) {
                let v = slot[v as usize];
                first[v] = first[v].min(i);
                last[v] = last[v].max(i);
            }
        }
        for &p in pinned {
            let p = slot[p as usize];
            first[p] = 0;
            last[p] = self.ops.len();
        }
        for (v, s) in self.values.iter().enumerate() {
            size[slot[v]] = size[slot[v]].max(s.bytes().next_multiple_of(ALIGN));
        }
        let bytes = |v: usize| size[v];
        let mut order: Vec<usize> = (0..n).filter(|&v| first[v] != usize::MAX).collect();
        // Place long-lived and large values first: fewer holes.
        order.sort_by_key(|&v| (first[v], std::cmp::Reverse(bytes(v))));
        let mut offsets = vec![0usize; n];
        let mut placed: Vec<usize> = Vec::new();
        let mut arena = 0usize;
        for v in order {
            // Ranges taken by placed values whose lifetimes overlap v's, sorted by offset.
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|&&u| first[u] <= last[v] && first[v] <= last[u])
                .map(|&u| (offsets[u], offsets[u] + bytes(u)))
                .collect();
            busy.sort_unstable();
            let mut at = 0usize;
            for (s, e) in busy {
                if at + bytes(v) <= s {
                    break;
                }
                at = at.max(e);
            }
            offsets[v] = at;
            arena = arena.max(at + bytes(v));
            placed.push(v);
        }
        let offsets = (0..n).map(|v| offsets[slot[v]]).collect();
        (offsets, arena)
    }

    /// Serialises the program into a blob (layout: `ddpm_core::blob`).
    pub fn to_blob(&self, hdr: &ModelHeader, input: u32, output: u32) -> Result<Vec<u8>> {
        let (offsets, arena) = self.plan(&[input, output]);
        let f16 = hdr.precision == Precision::F16;
        // f32 matrices and kernels follow the blob precision; vectors stay f32 (see the format docs).
        let dtype_of = |t: &Tensor| match t.data {
            Data::F32(_) if f16 && t.dims.len() >= 2 => DType::F16,
            Data::F32(_) => DType::F32,
            Data::I8(_) => DType::I8,
            Data::I16(_) => DType::I16,
            Data::I32(_) => DType::I32,
        };
        let typed = self.values.iter().any(|v| v.dtype != DType::F32);

        let mut strings = Vec::new();
        let mut name_at = Vec::new();
        for t in &self.tensors {
            name_at.push((strings.len(), t.name.len()));
            strings.extend_from_slice(t.name.as_bytes());
        }
        let config_at = (strings.len(), hdr.config_json.len());
        strings.extend_from_slice(hdr.config_json.as_bytes());

        let sched_off = HEADER_BYTES;
        let tensors_off = sched_off + SCHEDULE_RECORD_BYTES;
        let values_off = tensors_off + self.tensors.len() * TENSOR_RECORD_BYTES;
        let types_off = values_off + self.values.len() * VALUE_RECORD_BYTES;
        let ops_off = types_off + if typed { self.values.len() * VALUE_TYPE_RECORD_BYTES } else { 0 };
        let strings_off = ops_off + self.ops.len() * OP_RECORD_BYTES;
        let mut data_off = (strings_off + strings.len()).next_multiple_of(ALIGN);
        let mut tensor_records = Vec::new();
        let mut data_places = Vec::new();
        for (t, &(no, nl)) in self.tensors.iter().zip(&name_at) {
            let dtype = dtype_of(t);
            let numel = match &t.data {
                Data::F32(d) => d.len(),
                Data::I8(d) => d.len(),
                Data::I16(d) => d.len(),
                Data::I32(d) => d.len(),
            };
            if numel != t.dims.iter().product::<usize>() {
                bail!("internal: tensor {} has {numel} elements for dims {:?}", t.name, t.dims);
            }
            let len = numel * dtype.size();
            let mut dims = [1u32; 4];
            if t.dims.is_empty() || t.dims.len() > 4 {
                bail!("tensor {} has {} dimensions; the blob holds 1 to 4", t.name, t.dims.len());
            }
            for (d, &v) in dims.iter_mut().zip(&t.dims) {
                *d = u32_of(v)?;
            }
            let rec = [
                u32_of(no)?,
                u32_of(nl)?,
                dtype.code(),
                t.dims.len() as u32,
                dims[0],
                dims[1],
                dims[2],
                dims[3],
                u32_of(data_off)?,
                u32_of(len)?,
            ];
            tensor_records.extend(rec.iter().flat_map(|w| w.to_le_bytes()));
            data_places.push((data_off, dtype));
            data_off = (data_off + len).next_multiple_of(ALIGN);
        }
        let total = data_off;
        u32_of(total).map_err(|_| anyhow::anyhow!("model too large: blob would exceed 4 GiB"))?;

        let mut b = vec![0u8; total];
        let put = |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        b[..8].copy_from_slice(&MAGIC);
        put(&mut b, 8, if typed { VERSION } else { VERSION_FLOAT });
        put(&mut b, 12, HEADER_BYTES as u32);
        b[16..24].copy_from_slice(&(total as u64).to_le_bytes());
        put(&mut b, 32, hdr.precision.code());
        put(&mut b, 36, FAMILY_UNET2D);
        put(&mut b, 40, u32_of(hdr.in_channels)?);
        put(&mut b, 44, u32_of(hdr.out_channels)?);
        put(&mut b, 48, u32_of(hdr.height)?);
        put(&mut b, 52, u32_of(hdr.width)?);
        put(&mut b, 56, u32_of(hdr.num_classes)?);
        put(&mut b, 60, u32_of(arena)?);
        for (at, off, count) in [
            (64, tensors_off, self.tensors.len()),
            (72, values_off, self.values.len()),
            (80, ops_off, self.ops.len()),
            (88, strings_off, strings.len()),
        ] {
            put(&mut b, at, u32_of(off)?);
            put(&mut b, at + 4, u32_of(count)?);
        }
        if typed {
            put(&mut b, 116, u32_of(types_off)?);
            put(&mut b, 120, u32_of(self.values.len())?);
            for (i, s) in self.values.iter().enumerate() {
                let at = types_off + i * VALUE_TYPE_RECORD_BYTES;
                put(&mut b, at, s.dtype.code() | u32::from(s.zero as i16 as u16) << 16);
                put(&mut b, at + 4, s.scale.to_bits());
            }
        }
        put(&mut b, 96, sched_off as u32);
        put(&mut b, 100, input);
        put(&mut b, 104, output);
        put(&mut b, 108, u32_of(config_at.0)?);
        put(&mut b, 112, u32_of(config_at.1)?);
        b[sched_off..sched_off + SCHEDULE_RECORD_BYTES].copy_from_slice(&hdr.schedule.encode());
        b[tensors_off..values_off].copy_from_slice(&tensor_records);
        for (i, s) in self.values.iter().enumerate() {
            let rec = [u32_of(offsets[i])?, u32_of(s.c)?, u32_of(s.h)?, u32_of(s.w)?];
            let at = values_off + i * VALUE_RECORD_BYTES;
            b[at..at + 16].copy_from_slice(&rec.map(u32::to_le_bytes).concat());
        }
        for (i, op) in self.ops.iter().enumerate() {
            let at = ops_off + i * OP_RECORD_BYTES;
            b[at..at + OP_RECORD_BYTES].copy_from_slice(&op.encode().map(u32::to_le_bytes).concat());
        }
        b[strings_off..strings_off + strings.len()].copy_from_slice(&strings);
        for (t, &(off, dtype)) in self.tensors.iter().zip(&data_places) {
            let bytes: Vec<u8> = match &t.data {
                Data::F32(d) if dtype == DType::F16 => {
                    d.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
                }
                Data::F32(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Data::I8(d) => d.iter().map(|&v| v as u8).collect(),
                Data::I16(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Data::I32(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            b[off..off + bytes.len()].copy_from_slice(&bytes);
        }
        let sum = ddpm_core::fnv1a64(&b[32..]);
        b[24..32].copy_from_slice(&sum.to_le_bytes());
        Ok(b)
    }
}

fn u32_of(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| anyhow::anyhow!("value {v} does not fit the blob's 32-bit fields"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planner_reuses_dead_values_and_keeps_live_ones_apart() {
        let mut g = Graph::default();
        let a = g.value(4, 1, 1);
        let b = g.value(4, 1, 1);
        let c = g.value(4, 1, 1);
        g.push(Op::Silu { out: b, x: a }); // a dies here
        g.push(Op::Silu { out: c, x: b }); // b dies here; c may take a's place
        let (off, arena) = g.plan(&[]);
        assert_ne!(off[a as usize], off[b as usize]);
        assert_ne!(off[b as usize], off[c as usize]);
        assert_eq!(off[c as usize], off[a as usize]);
        assert_eq!(arena, 32);
        // Pinned input stays reserved for the whole program.
        let (off, _) = g.plan(&[a]);
        assert_ne!(off[c as usize], off[a as usize]);
    }
}
