//! A network program under construction: activation values, weight tensors and ops; then the arena plan and
//! the blob bytes. Family builders (see `unet.rs`) emit ops through this; the executor in `ddpm-core` runs them.

use ddpm_core::format::{DType, Precision, Schedule};
use ddpm_core::program::{Op, Role};

/// An op's scratch operand before [`Graph::push`] sizes it.
pub const SCRATCH: u32 = u32::MAX;

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

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(d) => d.len(),
            Data::I8(d) => d.len(),
            Data::I16(d) => d.len(),
            Data::I32(d) => d.len(),
        }
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

    /// Appends `op`. A [`SCRATCH`] operand becomes a new value of the size the executor needs for it
    /// ([`crate::plan::scratch_shape`]): family builders say that an op needs scratch, not how much.
    pub fn push(&mut self, mut op: Op) {
        let mut needs = false;
        op.for_each_value(|v, role| needs |= role == Role::Scratch && v == SCRATCH);
        if needs {
            let s = crate::plan::scratch_shape(self, &op);
            self.values.push(s);
            let v = (self.values.len() - 1) as u32;
            op.map_operands(&mut |w, role| {
                if role == Role::Scratch && *w == SCRATCH {
                    *w = v;
                }
            });
        }
        self.ops.push(op);
    }
}
