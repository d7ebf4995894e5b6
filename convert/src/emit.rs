//! The emitter: a planned program into blob bytes, written only through `ddpm_core::format`'s records.
//!
//! Layout, in this order: header, schedule record, tensor table, value table, value type table (typed
//! programs only), op table, string section (tensor names, then the config JSON), then every tensor's data,
//! each 16-byte aligned.

use ddpm_core::format::{
    self, header, schedule, tensor, value, value_type, DType, Header, TensorRecord, ValueRecord, ValueTypeRecord,
    ALIGN, FAMILY_UNET2D, HEADER_BYTES, OP_RECORD_BYTES, VERSION, VERSION_FLOAT,
};

use crate::bail;
use crate::error::{ConvertError, Result};
use crate::graph::{Data, Graph, ModelHeader};
use crate::precision::f16;

fn u32_of(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| ConvertError::Blob(format!("value {v} does not fit the blob's 32-bit fields")))
}

/// Plans the arena and serialises the program into a blob (layout: [`ddpm_core::format`]).
pub fn blob(g: &Graph, hdr: &ModelHeader, input: u32, output: u32) -> Result<Vec<u8>> {
    let plan = g.plan(&[input, output]);
    let typed = g.values.iter().any(|v| v.dtype != DType::F32);

    let mut strings = Vec::new();
    let mut names = Vec::new();
    for t in &g.tensors {
        names.push((u32_of(strings.len())?, u32_of(t.name.len())?));
        strings.extend_from_slice(t.name.as_bytes());
    }
    let config = (u32_of(strings.len())?, u32_of(hdr.config_json.len())?);
    strings.extend_from_slice(hdr.config_json.as_bytes());

    let sched_off = HEADER_BYTES;
    let tensors_off = sched_off + schedule::RECORD_BYTES;
    let values_off = tensors_off + g.tensors.len() * tensor::RECORD_BYTES;
    let types_off = values_off + g.values.len() * value::RECORD_BYTES;
    let ops_off = types_off + if typed { g.values.len() * value_type::RECORD_BYTES } else { 0 };
    let strings_off = ops_off + g.ops.len() * OP_RECORD_BYTES;
    let mut data_off = (strings_off + strings.len()).next_multiple_of(ALIGN);
    let mut records = Vec::with_capacity(g.tensors.len());
    for (t, &name) in g.tensors.iter().zip(&names) {
        let dtype = f16::stored_dtype(hdr.precision, t);
        let numel = t.data.len();
        if numel != t.dims.iter().product::<usize>() {
            bail!(Blob, "internal: tensor {} has {numel} elements for dims {:?}", t.name, t.dims);
        }
        if t.dims.is_empty() || t.dims.len() > 4 {
            bail!(Blob, "tensor {} has {} dimensions; the blob holds 1 to 4", t.name, t.dims.len());
        }
        let mut dims = [1u32; 4];
        for (d, &v) in dims.iter_mut().zip(&t.dims) {
            *d = u32_of(v)?;
        }
        let len = numel * dtype.size();
        records.push(TensorRecord {
            name,
            dtype,
            ndim: t.dims.len() as u32,
            dims,
            data: (u32_of(data_off)?, u32_of(len)?),
        });
        data_off = (data_off + len).next_multiple_of(ALIGN);
    }
    let total = data_off;
    if u32::try_from(total).is_err() {
        bail!(Blob, "model too large: blob would exceed 4 GiB");
    }

    let mut b = vec![0u8; total];
    Header {
        version: if typed { VERSION } else { VERSION_FLOAT },
        total: total as u64,
        precision: hdr.precision,
        family: FAMILY_UNET2D,
        in_channels: u32_of(hdr.in_channels)?,
        out_channels: u32_of(hdr.out_channels)?,
        height: u32_of(hdr.height)?,
        width: u32_of(hdr.width)?,
        num_classes: u32_of(hdr.num_classes)?,
        arena_bytes: u32_of(plan.arena_bytes)?,
        tensors: (u32_of(tensors_off)?, u32_of(g.tensors.len())?),
        values: (u32_of(values_off)?, u32_of(g.values.len())?),
        ops: (u32_of(ops_off)?, u32_of(g.ops.len())?),
        strings: (u32_of(strings_off)?, u32_of(strings.len())?),
        schedule: u32_of(sched_off)?,
        input,
        output,
        config,
        value_types: if typed { (u32_of(types_off)?, u32_of(g.values.len())?) } else { (0, 0) },
    }
    .emit(&mut b);
    hdr.schedule.emit(&mut b[sched_off..sched_off + schedule::RECORD_BYTES]);
    for (i, r) in records.iter().enumerate() {
        r.emit(&mut b[tensors_off + i * tensor::RECORD_BYTES..]);
    }
    for (i, (s, &off)) in g.values.iter().zip(&plan.offsets).enumerate() {
        let r = ValueRecord { arena_off: u32_of(off)?, c: u32_of(s.c)?, h: u32_of(s.h)?, w: u32_of(s.w)? };
        r.emit(&mut b[values_off + i * value::RECORD_BYTES..]);
        if typed {
            let t = ValueTypeRecord { dtype: s.dtype, zero: s.zero as i16, scale: s.scale };
            t.emit(&mut b[types_off + i * value_type::RECORD_BYTES..]);
        }
    }
    for (i, op) in g.ops.iter().enumerate() {
        let at = ops_off + i * OP_RECORD_BYTES;
        for (k, w) in op.encode().into_iter().enumerate() {
            format::write_u32(&mut b[at..], 4 * k..4 * k + 4, w);
        }
    }
    b[strings_off..strings_off + strings.len()].copy_from_slice(&strings);
    for (t, r) in g.tensors.iter().zip(&records) {
        let off = r.data.0 as usize;
        let dst = &mut b[off..off + r.data.1 as usize];
        match &t.data {
            Data::F32(d) if r.dtype == DType::F16 => {
                for (o, &v) in dst.chunks_exact_mut(2).zip(d) {
                    o.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
            }
            Data::F32(d) => {
                dst.copy_from_slice(bytemuck::cast_slice(&d.iter().map(|v| v.to_le_bytes()).collect::<Vec<_>>()))
            }
            Data::I8(d) => dst.copy_from_slice(bytemuck::cast_slice(d)),
            Data::I16(d) => {
                dst.copy_from_slice(bytemuck::cast_slice(&d.iter().map(|v| v.to_le_bytes()).collect::<Vec<_>>()))
            }
            Data::I32(d) => {
                dst.copy_from_slice(bytemuck::cast_slice(&d.iter().map(|v| v.to_le_bytes()).collect::<Vec<_>>()))
            }
        }
    }
    header::seal(&mut b);
    Ok(b)
}
