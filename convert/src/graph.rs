//! A network program under construction: activation values, weight tensors and ops; then the arena plan and
//! the blob bytes. Family builders (see `diffusers::unet2d`) emit ops through this; the planner
//! ([`crate::plan`]) places the values and the emitter ([`crate::emit`]) writes the blob; `ddpm-core` runs it.

use ddpm_core::format::{DType, Precision, Schedule};
use ddpm_core::program::{Op, Role};

/// An op's scratch operand before [`Graph::push`] sizes it.
pub const SCRATCH: u32 = u32::MAX;

/// An activation value `(c, h, w)` of type `dtype` (i8/i16 values stand for `(q − zero) × scale`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Element type (f32, or i8/i16/i32 in int8 programs).
    pub dtype: DType,
    /// For i8/i16: the real value of one integer step; 0 otherwise.
    pub scale: f32,
    /// For i8: the integer that stands for 0.0; 0 otherwise.
    pub zero: i32,
}

impl Shape {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Bytes it occupies in the arena (before alignment).
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// Stored tensor data. f32 tensors of two or more dimensions become f16 in an f16 blob.
#[derive(Debug, Clone)]
pub enum Data {
    /// f32 (stored as f16 where [`crate::precision::f16`] says so).
    F32(Vec<f32>),
    /// i8: int8 kernels and lookup tables.
    I8(Vec<i8>),
    /// i16: the int8 softmax's exponential table.
    I16(Vec<i16>),
    /// i32: int8 biases and requantization tables.
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
    /// The state-dict name it came from (or a name of the converter's for derived tables).
    pub name: String,
    /// Dimensions (1 to 4).
    pub dims: Vec<usize>,
    /// Row-major data.
    pub data: Data,
}

/// Everything the blob header states besides the program.
pub struct ModelHeader {
    /// Weight precision.
    pub precision: Precision,
    /// Channels of the sample.
    pub in_channels: usize,
    /// Channels of the network output (twice `in_channels` with learned variance).
    pub out_channels: usize,
    /// Sample height.
    pub height: usize,
    /// Sample width.
    pub width: usize,
    /// Class labels (0 = unconditional).
    pub num_classes: usize,
    /// Noise schedule and sampler defaults.
    pub schedule: Schedule,
    /// The model config as JSON, stored for `inspect`.
    pub config_json: String,
}

/// The program: values, tensors and ops, in the order the blob stores them.
#[derive(Default)]
pub struct Graph {
    /// Activation values, by index.
    pub values: Vec<Shape>,
    /// Weight tensors, by index.
    pub tensors: Vec<Tensor>,
    /// Ops, in execution order.
    pub ops: Vec<Op>,
    /// `(a, b)`: value `b` takes over `a`'s memory (an op that works in place; `a` dies where `b` is born).
    pub aliases: Vec<(u32, u32)>,
}

impl Graph {
    /// A new f32 value `(c, h, w)`; returns its index.
    pub fn value(&mut self, c: usize, h: usize, w: usize) -> u32 {
        self.typed_value(c, h, w, DType::F32, 0.0)
    }

    /// A new value of type `dtype` and scale `scale` (zero point 0); returns its index.
    pub fn typed_value(&mut self, c: usize, h: usize, w: usize, dtype: DType, scale: f32) -> u32 {
        self.values.push(Shape { c, h, w, dtype, scale, zero: 0 });
        (self.values.len() - 1) as u32
    }

    /// Value `v`'s shape (panics on an index the graph did not hand out).
    pub fn shape(&self, v: u32) -> Shape {
        self.values[v as usize]
    }

    /// A new f32 tensor; returns its index.
    pub fn tensor(&mut self, name: &str, dims: Vec<usize>, data: Vec<f32>) -> u32 {
        self.typed_tensor(name, dims, Data::F32(data))
    }

    /// A new tensor of any stored type; returns its index.
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
