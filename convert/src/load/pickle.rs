//! A restricted, non-executing unpickler for PyTorch checkpoints.
//!
//! `torch.save` writes its object graph with Python's pickle protocol 2. A real
//! unpickler *executes* the file: every `GLOBAL` + `REDUCE` pair is an arbitrary
//! function call, which is how malicious checkpoints run code. This module never
//! calls anything. It interprets the opcode stream as data, and the only
//! "callables" it understands are a fixed allow-list of constructors implemented
//! here in Rust (see [`Global`]). Any other global reference, such as
//! `os.system`, `builtins.eval` or a user class from a training framework, is
//! rejected with an error naming it as soon as the `GLOBAL` opcode is read.
//!
//! Robustness guarantees on untrusted input:
//! * no panics: every read is bounds-checked, lengths are validated against the
//!   remaining input before any allocation;
//! * no unbounded work: every opcode consumes at least one byte and does work
//!   proportional to the items it pops, so total time and memory are linear in
//!   the input size (dictionaries keep a hash index so `SETITEMS` is not
//!   quadratic);
//! * no recursion over untrusted depth: containers live in an arena and refer
//!   to each other by index, so deeply nested or even cyclic object graphs are
//!   just data.
//!
//! Opcodes understood (protocols 0-5 as used in practice): PROTO, FRAME, STOP, MARK, POP,
//! POP_MARK, DUP, NONE, NEWTRUE, NEWFALSE, INT, LONG, BININT, BININT1, BININT2, LONG1, LONG4,
//! FLOAT, BINFLOAT, BINUNICODE, SHORT_BINUNICODE, BINUNICODE8, BINSTRING, SHORT_BINSTRING,
//! BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8, EMPTY_LIST/TUPLE/DICT/SET, LIST, TUPLE,
//! TUPLE1-3, DICT, FROZENSET, APPEND(S), SETITEM(S), ADDITEMS, PUT, BINPUT, LONG_BINPUT, MEMOIZE,
//! GET, BINGET, LONG_BINGET, GLOBAL, STACK_GLOBAL, INST, OBJ, REDUCE, NEWOBJ, NEWOBJ_EX, BUILD
//! (on dicts only) and BINPERSID (torch storages only). Anything else (STRING, UNICODE, PERSID,
//! EXT1-4, NEXT_BUFFER, READONLY_BUFFER, unknown bytes) is an error naming the opcode and offset.
//!
//! Storages (the tensor payloads) are not resolved here: `BINPERSID` produces
//! a [`StorageRef`] naming the zip entry, and `_rebuild_tensor_v2` produces a
//! [`TensorRef`] describing the view. The zip reader materialises them.

use super::FloatKind;
use crate::err;
use crate::error::Result;
use std::collections::HashMap;

/// Index of an object in [`Pickle::objects`].
pub type ObjId = usize;

/// A pickle value. Scalars are stored inline; everything else lives in the
/// arena so that memo references (`BINGET`) share, rather than copy, objects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// Python `bool`.
    Bool(bool),
    /// Python `int` that fits in an `i64`.
    Int(i64),
    /// Python `float`.
    Float(f64),
    /// Reference to an arena object.
    Ref(ObjId),
}

/// Element type of a torch storage, from the storage class in its persistent id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    Complex64,
    Complex128,
    /// Quantized storages (`QInt8Storage`, ...): never converted.
    Quantized,
    /// `torch.storage.UntypedStorage`: raw bytes whose element type comes from the tensor
    /// (`_rebuild_tensor_v3`); its declared size is in bytes.
    Untyped,
    /// An element type this reader does not decode (float8, uint16, ...): never converted.
    Other,
}

impl StorageDtype {
    /// The float encoding the loader converts from, or `None` for types it skips.
    pub(crate) fn float_kind(self) -> Option<FloatKind> {
        match self {
            StorageDtype::F32 => Some(FloatKind::F32),
            StorageDtype::F16 => Some(FloatKind::F16),
            StorageDtype::BF16 => Some(FloatKind::BF16),
            StorageDtype::F64 => Some(FloatKind::F64),
            _ => None,
        }
    }
}

/// The allow-list: every global a checkpoint may reference.
///
/// Anything not listed here makes [`unpickle`] fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`: builds an (ordered) dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor_v3(untyped_storage, offset, size, stride, requires_grad,
    /// hooks, dtype[, metadata])`: what torch writes for dtypes without a legacy storage class
    /// (float8, uint16, ...).
    RebuildTensorV3,
    /// `torch._utils._rebuild_tensor(storage, offset, size, stride)` (older torch).
    RebuildTensor,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`: returns the tensor.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(tensor, requires_grad, hooks, state)`: returns the tensor.
    RebuildParameterWithState,
    /// `torch.<X>Storage` / `torch.storage.UntypedStorage`: only a type tag inside a persistent id.
    StorageType(StorageDtype),
    /// `_codecs.encode(str, encoding)`: how protocol 2 spells `bytes`; returns bytes.
    CodecsEncode,
    /// `torch.Size(tuple)`: returns the tuple.
    TorchSize,
    /// `torch.device(...)`: returns an opaque device marker.
    TorchDevice,
    /// `torch.float32` and friends: dtype markers, not callable.
    TorchDtype(StorageDtype),
    /// `builtins.set` / `builtins.frozenset` (protocol 2 spells sets this way): builds a set.
    Set,
    /// `numpy.dtype(...)`: an opaque marker (numpy scalars in training metadata).
    NumpyDtype,
    /// `numpy.core.multiarray.scalar(dtype, bytes)`: an opaque marker.
    NumpyScalar,
}

impl Global {
    /// Resolves `module.name` against the allow-list.
    fn resolve(module: &str, name: &str) -> Option<Global> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("_codecs", "encode") => Global::CodecsEncode,
            ("torch", "Size") => Global::TorchSize,
            ("torch", "device") => Global::TorchDevice,
            ("torch.storage", "UntypedStorage") | ("torch", "UntypedStorage") => {
                Global::StorageType(StorageDtype::Untyped)
            }
            ("torch", storage) if storage.ends_with("Storage") => Global::StorageType(storage_dtype(storage)?),
            ("torch", dtype) => Global::TorchDtype(torch_dtype(dtype)?),
            ("builtins" | "__builtin__", "set" | "frozenset") => Global::Set,
            ("numpy", "dtype") => Global::NumpyDtype,
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::NumpyScalar,
            _ => return None,
        };
        Some(g)
    }
}

/// Maps a legacy typed storage class name (`FloatStorage`, ...) to its element type.
fn storage_dtype(name: &str) -> Option<StorageDtype> {
    Some(match name {
        "DoubleStorage" => StorageDtype::F64,
        "FloatStorage" => StorageDtype::F32,
        "HalfStorage" => StorageDtype::F16,
        "BFloat16Storage" => StorageDtype::BF16,
        "LongStorage" => StorageDtype::I64,
        "IntStorage" => StorageDtype::I32,
        "ShortStorage" => StorageDtype::I16,
        "CharStorage" => StorageDtype::I8,
        "ByteStorage" => StorageDtype::U8,
        "BoolStorage" => StorageDtype::Bool,
        "ComplexFloatStorage" => StorageDtype::Complex64,
        "ComplexDoubleStorage" => StorageDtype::Complex128,
        "QUInt8Storage" | "QInt8Storage" | "QInt32Storage" | "QUInt4x2Storage" | "QUInt2x4Storage" => {
            StorageDtype::Quantized
        }
        _ => return None,
    })
}

/// Maps the name of a `torch.<dtype>` object to its element type; `None` if not a dtype.
fn torch_dtype(name: &str) -> Option<StorageDtype> {
    Some(match name {
        "float32" | "float" => StorageDtype::F32,
        "float64" | "double" => StorageDtype::F64,
        "float16" | "half" => StorageDtype::F16,
        "bfloat16" => StorageDtype::BF16,
        "int64" | "long" => StorageDtype::I64,
        "int32" | "int" => StorageDtype::I32,
        "int16" | "short" => StorageDtype::I16,
        "int8" => StorageDtype::I8,
        "uint8" => StorageDtype::U8,
        "bool" => StorageDtype::Bool,
        "complex64" | "cfloat" => StorageDtype::Complex64,
        "complex128" | "cdouble" => StorageDtype::Complex128,
        "quint8" | "qint8" | "qint32" | "quint4x2" | "quint2x4" => StorageDtype::Quantized,
        "float8_e4m3fn" | "float8_e5m2" | "float8_e4m3fnuz" | "float8_e5m2fnuz" | "float8_e8m0fnu"
        | "float4_e2m1fn_x2" | "uint16" | "uint32" | "uint64" | "complex32" | "chalf" | "bits1x8" | "bits2x4"
        | "bits4x2" | "bits8" | "bits16" | "int1" | "int2" | "int3" | "int4" | "int5" | "int6" | "int7" | "uint1"
        | "uint2" | "uint3" | "uint4" | "uint5" | "uint6" | "uint7" => StorageDtype::Other,
        _ => return None,
    })
}

/// A storage reference, from the persistent id `('storage', type, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// Element type (from the storage class).
    pub dtype: StorageDtype,
    /// Name of the entry under `<prefix>/data/` holding the raw bytes.
    pub key: String,
    /// Device it was saved from (`cpu`, `cuda:0`, ...); informational only.
    pub location: String,
    /// Declared number of elements.
    pub numel: u64,
}

/// A tensor view on a storage, from `_rebuild_tensor_v2` / `_v3`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage object ([`Object::Storage`]).
    pub storage: ObjId,
    /// Element type: the storage's for `_v2`, the explicit dtype argument for `_v3`.
    pub dtype: StorageDtype,
    /// Offset of element 0, in elements.
    pub offset: u64,
    /// Shape.
    pub size: Vec<u64>,
    /// Strides, in elements.
    pub stride: Vec<u64>,
}

/// Hashable identity of a dict key (value equality for scalars and strings,
/// object identity for everything else).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum DictKey {
    None,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(String),
    Bytes(Vec<u8>),
    Id(ObjId),
}

/// An insertion-ordered dict with a hash index on its keys.
#[derive(Clone, Debug, Default)]
pub struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

impl Dict {
    /// Entries in insertion order.
    pub fn entries(&self) -> &[(Value, Value)] {
        &self.entries
    }
}

/// An arena object.
#[derive(Clone, Debug)]
pub enum Object {
    /// Python `str`.
    Str(String),
    /// Python `bytes` / `bytearray`.
    Bytes(Vec<u8>),
    /// A Python `int` too large for `i64` (value not kept).
    BigInt,
    /// Python `list`.
    List(Vec<Value>),
    /// Python `tuple`.
    Tuple(Vec<Value>),
    /// Python `set` / `frozenset` (kept as a list of items).
    Set(Vec<Value>),
    /// Python `dict` or `collections.OrderedDict`.
    Dict(Dict),
    /// A reference to an allow-listed global.
    Global(Global),
    /// A torch storage (from a persistent id).
    Storage(StorageRef),
    /// A torch tensor view.
    Tensor(TensorRef),
    /// A `torch.<dtype>` object.
    Dtype(StorageDtype),
    /// An inert object produced by an allow-listed constructor (e.g. `torch.device`).
    Opaque(&'static str),
}

impl Object {
    /// Short Python-ish type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::Str(_) => "str",
            Object::Bytes(_) => "bytes",
            Object::BigInt => "int",
            Object::List(_) => "list",
            Object::Tuple(_) => "tuple",
            Object::Set(_) => "set",
            Object::Dict(_) => "dict",
            Object::Global(_) => "global",
            Object::Storage(_) => "storage",
            Object::Tensor(_) => "tensor",
            Object::Dtype(_) => "torch.dtype",
            Object::Opaque(name) => name,
        }
    }
}

/// The result of unpickling: an arena of objects and the root value.
#[derive(Debug)]
pub struct Pickle {
    /// All objects created while unpickling.
    pub objects: Vec<Object>,
    /// The value left on the stack by `STOP`.
    pub root: Value,
}

impl Pickle {
    /// The object a value refers to, if it is a reference.
    pub fn obj(&self, v: Value) -> Option<&Object> {
        match v {
            Value::Ref(id) => self.objects.get(id),
            _ => None,
        }
    }

    /// The dict a value refers to, if any.
    pub fn dict(&self, v: Value) -> Option<&Dict> {
        match self.obj(v) {
            Some(Object::Dict(d)) => Some(d),
            _ => None,
        }
    }

    /// The string a value refers to, if any.
    pub fn str(&self, v: Value) -> Option<&str> {
        match self.obj(v) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The tensor a value refers to, with its storage, if any.
    pub fn tensor(&self, v: Value) -> Option<(&TensorRef, &StorageRef)> {
        match self.obj(v) {
            Some(Object::Tensor(t)) => match self.objects.get(t.storage) {
                Some(Object::Storage(s)) => Some((t, s)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Looks up a string key in a dict.
    pub fn dict_get(&self, d: &Dict, key: &str) -> Option<Value> {
        d.index.get(&DictKey::Str(key.to_owned())).and_then(|&i| d.entries.get(i)).map(|e| e.1)
    }

    /// Short description of a value's type, for messages (`int`, `dict`, `tensor`, ...).
    pub fn type_name(&self, v: Value) -> &'static str {
        match v {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Ref(_) => self.obj(v).map_or("?", Object::type_name),
        }
    }
}

/// Upper bound on stack + memo entries + arena objects, far above what any real
/// checkpoint needs (a large model's pickle has tens of thousands).
const MAX_ITEMS: usize = 1 << 24;

/// Copy budget per input byte. Memo references (`BINGET`) let a few bytes of input name a
/// large object again and again; every operation that *copies* data out of an existing
/// object (argument tuples, dict key strings, set/Size contents, ...) is charged against
/// `WORK_PER_BYTE * input length + WORK_BASE`, so total work stays linear in the input.
const WORK_PER_BYTE: usize = 16;
/// Fixed part of the copy budget.
const WORK_BASE: usize = 1 << 20;

/// Opcode names, for error messages about opcodes this reader refuses.
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// Formats the standard error for a global outside the allow-list.
fn disallowed(module: &str, name: &str) -> crate::ConvertError {
    // A module class (torch.save(model) instead of torch.save(model.state_dict())): say what to do instead.
    let hint = if module.starts_with("torch.nn.modules")
        || module.starts_with("__main__")
        || name.chars().next().is_some_and(char::is_uppercase)
    {
        "; this looks like a whole pickled module (torch.save(model)), which would run its code on loading: save \
         model.state_dict() instead, or export the network with torch.onnx.export(model, (x, t), \"model.onnx\")"
    } else {
        ""
    };
    err!(
        Checkpoint,
        "checkpoint pickle references disallowed global '{}.{}' (only tensors and plain containers are allowed){hint}",
        module.escape_debug(),
        name.escape_debug()
    )
}

/// Unpickler state.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed (for messages).
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
    /// Remaining copy budget (see [`WORK_PER_BYTE`]).
    budget: usize,
}

/// Parses a pickle byte stream without executing it.
///
/// Returns the object graph, or an error for malformed input, unsupported
/// opcodes, or any global outside the allow-list.
pub fn unpickle(data: &[u8]) -> Result<Pickle> {
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
        budget: data.len().saturating_mul(WORK_PER_BYTE).saturating_add(WORK_BASE),
    };
    let root = m.run()?;
    Ok(Pickle { objects: m.objects, root })
}

impl<'a> Machine<'a> {
    /// Error with the current opcode offset appended.
    fn err(&self, msg: impl std::fmt::Display) -> crate::ConvertError {
        err!(Checkpoint, "malformed pickle: {msg} (opcode at offset {})", self.op_pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let data: &'a [u8] = self.data;
        match self.pos.checked_add(n) {
            Some(end) if end <= data.len() => {
                let s = &data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(self.err(format!("unexpected end of data (needed {n} bytes)"))),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads a length-prefixed payload, checking the length against the remaining input.
    fn take_len(&mut self, n: u64) -> Result<&'a [u8]> {
        let remaining = self.data.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= remaining => self.take(n),
            _ => Err(self.err(format!("declared length {n} exceeds the {remaining} remaining bytes"))),
        }
    }

    /// Reads a `\n`-terminated line (text opcodes), without the newline.
    fn line(&mut self) -> Result<&'a [u8]> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(self.err("unterminated text argument")),
        }
    }

    fn line_str(&mut self) -> Result<&'a str> {
        let l = self.line()?;
        std::str::from_utf8(l).map_err(|_| self.err("text argument is not UTF-8"))
    }

    fn utf8(&self, b: &[u8]) -> Result<String> {
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn check_items(&self) -> Result<()> {
        if self.stack.len() + self.memo.len() + self.objects.len() > MAX_ITEMS {
            return Err(self.err("object graph too large"));
        }
        Ok(())
    }

    fn alloc(&mut self, o: Object) -> Result<Value> {
        self.check_items()?;
        self.objects.push(o);
        Ok(Value::Ref(self.objects.len() - 1))
    }

    fn push(&mut self, v: Value) -> Result<()> {
        self.check_items()?;
        self.stack.push(v);
        Ok(())
    }

    fn push_obj(&mut self, o: Object) -> Result<()> {
        let v = self.alloc(o)?;
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.last().copied().ok_or_else(|| self.err("stack underflow"))
    }

    /// Pops everything above the most recent MARK, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| self.err("MARK missing"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK above stack top"));
        }
        Ok(self.stack.split_off(m))
    }

    fn obj_mut(&mut self, v: Value) -> Option<&mut Object> {
        match v {
            Value::Ref(id) => self.objects.get_mut(id),
            _ => None,
        }
    }

    fn str_of(&self, v: Value) -> Option<&str> {
        match v {
            Value::Ref(id) => match self.objects.get(id) {
                Some(Object::Str(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    fn int_of(&self, v: Value) -> Result<i64> {
        match v {
            Value::Int(i) => Ok(i),
            Value::Bool(b) => Ok(i64::from(b)),
            _ => Err(self.err("expected an int")),
        }
    }

    fn uint_of(&self, v: Value, what: &str) -> Result<u64> {
        let i = self.int_of(v)?;
        u64::try_from(i).map_err(|_| self.err(format!("negative {what}")))
    }

    /// Charges `units` of copying against the budget.
    fn charge(&mut self, units: usize) -> Result<()> {
        match self.budget.checked_sub(units) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(self.err("object graph expands too much (shared objects copied too often)")),
        }
    }

    /// Items of a tuple (or, with `any_seq`, a list or set).
    fn items_ref(&self, v: Value, any_seq: bool) -> Option<&[Value]> {
        match v {
            Value::Ref(id) => match self.objects.get(id) {
                Some(Object::Tuple(items)) => Some(items),
                Some(Object::List(items)) | Some(Object::Set(items)) if any_seq => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    /// A charged copy of the items of a tuple (or, with `any_seq`, a list or set).
    fn copy_items(&mut self, v: Value, any_seq: bool, what: &str) -> Result<Vec<Value>> {
        let Some(n) = self.items_ref(v, any_seq).map(<[Value]>::len) else {
            return Err(self.err(format!("{what}: expected a tuple")));
        };
        self.charge(n)?;
        Ok(self.items_ref(v, any_seq).map(<[Value]>::to_vec).unwrap_or_default())
    }

    /// Items of a tuple or list value.
    fn seq_of(&self, v: Value) -> Option<&[Value]> {
        match v {
            Value::Ref(id) => match self.objects.get(id) {
                Some(Object::Tuple(items)) | Some(Object::List(items)) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    fn dict_key(&self, v: Value) -> DictKey {
        match v {
            Value::None => DictKey::None,
            Value::Bool(b) => DictKey::Bool(b),
            Value::Int(i) => DictKey::Int(i),
            Value::Float(f) => DictKey::Float(f.to_bits()),
            Value::Ref(id) => match self.objects.get(id) {
                Some(Object::Str(s)) => DictKey::Str(s.clone()),
                Some(Object::Bytes(b)) => DictKey::Bytes(b.clone()),
                _ => DictKey::Id(id),
            },
        }
    }

    /// `dict[k] = v` on the dict referenced by `d`.
    fn set_items(&mut self, d: Value, items: &[Value]) -> Result<()> {
        if !items.chunks_exact(2).remainder().is_empty() {
            return Err(self.err("odd number of items for SETITEMS"));
        }
        let keys: Vec<DictKey> = items.chunks_exact(2).map(|kv| self.dict_key(kv[0])).collect();
        let copied: usize = keys
            .iter()
            .map(|k| match k {
                DictKey::Str(s) => s.len(),
                DictKey::Bytes(b) => b.len(),
                _ => 0,
            })
            .sum();
        self.charge(copied)?;
        let op_pos = self.op_pos;
        let Some(Object::Dict(dict)) = self.obj_mut(d) else {
            return Err(err!(Checkpoint, "malformed pickle: SETITEM on a non-dict (opcode at offset {op_pos})"));
        };
        for (key, kv) in keys.into_iter().zip(items.chunks_exact(2)) {
            match dict.index.get(&key) {
                Some(&i) => dict.entries[i] = (kv[0], kv[1]),
                None => {
                    dict.index.insert(key, dict.entries.len());
                    dict.entries.push((kv[0], kv[1]));
                }
            }
        }
        Ok(())
    }

    fn append_items(&mut self, l: Value, items: Vec<Value>) -> Result<()> {
        let op_pos = self.op_pos;
        match self.obj_mut(l) {
            Some(Object::List(list)) | Some(Object::Set(list)) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(err!(Checkpoint, "malformed pickle: APPEND/ADDITEMS on a non-list (opcode at offset {op_pos})")),
        }
    }

    /// Resolves a global through the allow-list and pushes it.
    fn push_global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::resolve(module, name).ok_or_else(|| disallowed(module, name))? {
            Global::TorchDtype(d) => self.push_obj(Object::Dtype(d)),
            g => self.push_obj(Object::Global(g)),
        }
    }

    /// Implements `callable(*args)` for allow-listed callables.
    fn call(&mut self, callable: Value, args: &[Value]) -> Result<Value> {
        let g = match self.obj_mut(callable) {
            Some(Object::Global(g)) => *g,
            Some(other) => {
                let t = other.type_name();
                return Err(self.err(format!("attempt to call a {t}")));
            }
            None => return Err(self.err("attempt to call a scalar")),
        };
        match g {
            Global::OrderedDict => {
                let d = self.alloc(Object::Dict(Dict::default()))?;
                match args {
                    [] => {}
                    [pairs] => {
                        // OrderedDict([[k, v], ...]) as written by protocols 0/1.
                        let pairs = self.copy_items(*pairs, true, "OrderedDict argument")?;
                        let mut flat = Vec::with_capacity(pairs.len().saturating_mul(2));
                        for p in pairs {
                            match self.seq_of(p) {
                                Some([k, v]) => flat.extend([*k, *v]),
                                _ => return Err(self.err("bad OrderedDict item")),
                            }
                        }
                        self.set_items(d, &flat)?;
                    }
                    _ => return Err(self.err("bad OrderedDict args")),
                }
                Ok(d)
            }
            Global::RebuildTensorV2 | Global::RebuildTensorV3 | Global::RebuildTensor => {
                let n_ok = match g {
                    Global::RebuildTensorV2 => (6..=7).contains(&args.len()),
                    Global::RebuildTensorV3 => (7..=8).contains(&args.len()),
                    _ => args.len() == 4,
                };
                if !n_ok {
                    return Err(self.err(format!("tensor rebuild called with {} arguments", args.len())));
                }
                let (storage, storage_dtype) = match args[0] {
                    Value::Ref(id) => match self.objects.get(id) {
                        Some(Object::Storage(s)) => (id, s.dtype),
                        _ => return Err(self.err("tensor rebuild without a storage")),
                    },
                    _ => return Err(self.err("tensor rebuild without a storage")),
                };
                let dtype = match g {
                    Global::RebuildTensorV3 => match args[6] {
                        Value::Ref(id) => match self.objects.get(id) {
                            Some(Object::Dtype(d)) => *d,
                            _ => return Err(self.err("_rebuild_tensor_v3 without a dtype")),
                        },
                        _ => return Err(self.err("_rebuild_tensor_v3 without a dtype")),
                    },
                    _ => storage_dtype,
                };
                let offset = self.uint_of(args[1], "storage offset")?;
                let size = self.int_seq(args[2], "size")?;
                let stride = self.int_seq(args[3], "stride")?;
                if size.len() != stride.len() {
                    return Err(self.err("tensor size and stride have different ranks"));
                }
                self.alloc(Object::Tensor(TensorRef { storage, dtype, offset, size, stride }))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let n_ok = match g {
                    Global::RebuildParameter => args.len() == 3,
                    _ => args.len() == 4,
                };
                match args.first() {
                    Some(&t) if n_ok && matches!(self.obj_mut(t), Some(Object::Tensor(_))) => Ok(t),
                    _ => Err(self.err("bad _rebuild_parameter arguments")),
                }
            }
            Global::CodecsEncode => {
                let (s, enc) = match args {
                    [s, enc] => (*s, *enc),
                    _ => return Err(self.err("bad _codecs.encode arguments")),
                };
                let s = self.str_of(s).ok_or_else(|| self.err("_codecs.encode of a non-str"))?;
                let enc = self.str_of(enc).ok_or_else(|| self.err("_codecs.encode with a non-str encoding"))?;
                let bytes = match enc.to_ascii_lowercase().as_str() {
                    "latin1" | "latin-1" | "iso-8859-1" => s
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).ok())
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| self.err("_codecs.encode: character outside latin-1"))?,
                    "utf-8" | "utf8" => s.as_bytes().to_vec(),
                    _ => return Err(self.err("_codecs.encode with an unsupported encoding")),
                };
                self.charge(bytes.len())?;
                self.alloc(Object::Bytes(bytes))
            }
            Global::TorchSize => match args {
                [] => self.alloc(Object::Tuple(Vec::new())),
                [t] => {
                    let items = self.copy_items(*t, true, "torch.Size argument")?;
                    self.alloc(Object::Tuple(items))
                }
                _ => Err(self.err("bad torch.Size arguments")),
            },
            Global::TorchDevice => self.alloc(Object::Opaque("torch.device")),
            Global::StorageType(_) => Err(self.err("storage types cannot be instantiated in a checkpoint")),
            Global::Set => match args {
                [] => self.alloc(Object::Set(Vec::new())),
                [items] => {
                    let items = self.copy_items(*items, true, "set argument")?;
                    self.alloc(Object::Set(items))
                }
                _ => Err(self.err("bad set arguments")),
            },
            Global::NumpyDtype => self.alloc(Object::Opaque("numpy.dtype")),
            Global::NumpyScalar => self.alloc(Object::Opaque("numpy scalar")),
            Global::TorchDtype(_) => Err(self.err("a torch dtype is not callable")),
        }
    }

    /// A tuple/list of non-negative ints.
    fn int_seq(&mut self, v: Value, what: &str) -> Result<Vec<u64>> {
        let items = self.copy_items(v, true, what)?;
        items.iter().map(|&i| self.uint_of(i, what)).collect()
    }

    /// `BINPERSID`: `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&mut self, pid: Value) -> Result<Value> {
        let items = self.seq_of(pid).ok_or_else(|| self.err("persistent id is not a tuple"))?;
        let [tag, ty, key, location, numel] = items else {
            return Err(self.err(format!("persistent id has {} fields, expected 5", items.len())));
        };
        if self.str_of(*tag) != Some("storage") {
            return Err(self.err("persistent id is not a storage"));
        }
        let dtype = match ty {
            Value::Ref(id) => match self.objects.get(*id) {
                Some(Object::Global(Global::StorageType(d))) => *d,
                _ => return Err(self.err("persistent id storage type is not a storage class")),
            },
            _ => return Err(self.err("persistent id storage type is not a storage class")),
        };
        let key = self.str_of(*key).ok_or_else(|| self.err("storage key is not a str"))?.to_owned();
        // Locations are normally strings ("cpu", "cuda:0"); accept anything and just record it.
        let location = self.str_of(*location).unwrap_or("?").to_owned();
        let numel = self.uint_of(*numel, "storage size")?;
        self.charge(key.len() + location.len())?;
        self.alloc(Object::Storage(StorageRef { dtype, key, location, numel }))
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?;
        self.check_items()?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = *self.memo.get(&idx).ok_or_else(|| self.err(format!("memo key {idx} not found")))?;
        self.push(v)
    }

    /// Two's complement little-endian integer (LONG1/LONG4 payloads).
    fn long_from_bytes(&mut self, b: &[u8]) -> Result<Value> {
        if b.is_empty() {
            return Ok(Value::Int(0));
        }
        let negative = b[b.len() - 1] & 0x80 != 0;
        if b.len() > 8 {
            // Fits in i64 only if the high bytes are pure sign extension.
            let (lo, hi) = b.split_at(8);
            let ext = if negative { 0xff } else { 0 };
            let lo_sign = lo[7] & 0x80 != 0;
            if hi.iter().all(|&x| x == ext) && lo_sign == negative {
                return self.long_from_bytes(lo);
            }
            return self.alloc(Object::BigInt);
        }
        let mut a = if negative { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        Ok(Value::Int(i64::from_le_bytes(a)))
    }

    /// Text-mode integer (`INT` / `LONG` arguments).
    fn parse_text_int(&mut self, line: &str) -> Result<Value> {
        let t = line.trim_end_matches('L');
        match t {
            "00" => return Ok(Value::Bool(false)),
            "01" => return Ok(Value::Bool(true)),
            _ => {}
        }
        match t.parse::<i64>() {
            Ok(i) => Ok(Value::Int(i)),
            Err(_) if !t.is_empty() && t.trim_start_matches('-').bytes().all(|c| c.is_ascii_digit()) => {
                self.alloc(Object::BigInt)
            }
            Err(_) => Err(self.err("bad integer literal")),
        }
    }

    /// Executes opcodes until `STOP`.
    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_pos = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return Err(err!(Checkpoint, "malformed pickle: data ended without a STOP opcode"));
            };
            self.pos += 1;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    // FRAME: framing is only a buffering hint.
                    self.u64()?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => {
                    self.check_items()?;
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?;
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a => {
                    let n = self.u8()?;
                    let b = self.take_len(u64::from(n))?;
                    let v = self.long_from_bytes(b)?;
                    self.push(v)?;
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    let n = u64::try_from(n).map_err(|_| self.err("negative LONG4 length"))?;
                    let b = self.take_len(n)?;
                    let v = self.long_from_bytes(b)?;
                    self.push(v)?;
                }
                b'I' | b'L' => {
                    let line = self.line_str()?;
                    let v = self.parse_text_int(line)?;
                    self.push(v)?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?;
                }
                b'F' => {
                    let line = self.line_str()?;
                    let f = line.trim().parse::<f64>().map_err(|_| self.err("bad float literal"))?;
                    self.push(Value::Float(f))?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u64::from(self.u32()?),
                        0x8c => u64::from(self.u8()?),
                        _ => self.u64()?,
                    };
                    let b = self.take_len(n)?;
                    let s = self.utf8(b)?;
                    self.push_obj(Object::Str(s))?;
                }
                b'T' | b'U' => {
                    // Python 2 byte strings: decoded as UTF-8 (lossy), like torch.load's encoding.
                    let n = match op {
                        b'T' => u64::from(self.u32()?),
                        _ => u64::from(self.u8()?),
                    };
                    let b = self.take_len(n)?;
                    let s = String::from_utf8_lossy(b).into_owned();
                    self.push_obj(Object::Str(s))?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u64::from(self.u32()?),
                        b'C' => u64::from(self.u8()?),
                        _ => self.u64()?,
                    };
                    let b = self.take_len(n)?.to_vec();
                    self.push_obj(Object::Bytes(b))?;
                }
                b']' => self.push_obj(Object::List(Vec::new()))?,
                b')' => self.push_obj(Object::Tuple(Vec::new()))?,
                b'}' => self.push_obj(Object::Dict(Dict::default()))?,
                0x8f => self.push_obj(Object::Set(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::List(items))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::Tuple(items))?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::Set(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_obj(Object::Tuple(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = self.alloc(Object::Dict(Dict::default()))?;
                    self.set_items(d, &items)?;
                    self.push(d)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append_items(l, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append_items(l, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, &[k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, &items)?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(u32::from(i))?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let line = self.line_str()?;
                    let i = line.parse::<u32>().map_err(|_| self.err("bad PUT index"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(u32::from(i))?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'g' => {
                    let line = self.line_str()?;
                    let i = line.parse::<u32>().map_err(|_| self.err("bad GET index"))?;
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    self.push_global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.str_of(module), self.str_of(name)) else {
                        return Err(self.err("STACK_GLOBAL arguments are not strings"));
                    };
                    let (module, name) = (module.to_owned(), name.to_owned());
                    self.charge(module.len() + name.len())?;
                    self.push_global(&module, &name)?;
                }
                b'i' => {
                    // INST: module/name lines, args from the mark.
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let g = Global::resolve(module, name).ok_or_else(|| disallowed(module, name))?;
                    let args = self.pop_mark()?;
                    let callable = self.alloc(Object::Global(g))?;
                    let v = self.call(callable, &args)?;
                    self.push(v)?;
                }
                b'o' => {
                    // OBJ: class and args from the mark.
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.err("OBJ without a class"));
                    }
                    let callable = items.remove(0);
                    let v = self.call(callable, &items)?;
                    self.push(v)?;
                }
                b'R' | 0x81 => {
                    // REDUCE: callable(*args); NEWOBJ: cls.__new__(cls, *args), same for our constructors.
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self.copy_items(args, false, "REDUCE arguments")?;
                    let v = self.call(callable, &args)?;
                    self.push(v)?;
                }
                0x92 => {
                    // NEWOBJ_EX: cls, args, kwargs. Our constructors take no keyword arguments.
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let no_kwargs = match self.obj_mut(kwargs) {
                        Some(Object::Dict(d)) => d.entries.is_empty(),
                        _ => false,
                    };
                    if !no_kwargs {
                        return Err(self.err("unsupported NEWOBJ_EX arguments"));
                    }
                    let args = self.copy_items(args, false, "NEWOBJ_EX arguments")?;
                    let v = self.call(callable, &args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD: only accepted (and ignored) on dicts, e.g. OrderedDict `_metadata`,
                    // and on numpy dtype markers (their byte-order state).
                    let _state = self.pop()?;
                    let target = self.top()?;
                    match self.obj_mut(target) {
                        Some(Object::Dict(_)) | Some(Object::Opaque("numpy.dtype")) => {}
                        Some(o) => {
                            let t = o.type_name();
                            return Err(self.err(format!("BUILD on a {t} is not supported")));
                        }
                        None => return Err(self.err("BUILD on a scalar")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                _ => {
                    return Err(match opcode_name(op) {
                        Some(name) => {
                            err!(Checkpoint, "unsupported pickle opcode 0x{op:02x} ({name}) at offset {}", self.op_pos)
                        }
                        None => {
                            err!(Checkpoint, "unknown pickle opcode 0x{op:02x} at offset {}", self.op_pos)
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny pickle writer for tests.
    #[derive(Default)]
    pub(crate) struct W(pub Vec<u8>);

    impl W {
        pub fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        pub fn proto(&mut self) -> &mut Self {
            self.op(&[0x80, 2])
        }
        pub fn str(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        pub fn int(&mut self, i: i32) -> &mut Self {
            self.0.push(b'J');
            self.0.extend_from_slice(&i.to_le_bytes());
            self
        }
        pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.0.push(b'c');
            self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            self
        }
        /// Pushes a tuple of ints.
        pub fn ints(&mut self, xs: &[i32]) -> &mut Self {
            self.op(b"(");
            for &x in xs {
                self.int(x);
            }
            self.op(b"t")
        }
        /// Pushes `_rebuild_tensor_v2(storage(key), offset, size, stride, False, OrderedDict())`.
        pub fn tensor(
            &mut self,
            ty: &str,
            key: &str,
            numel: i32,
            offset: i32,
            size: &[i32],
            stride: &[i32],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2");
            self.op(b"(");
            self.op(b"(").str("storage").global("torch", ty).str(key).str("cpu").int(numel).op(b"tQ");
            self.int(offset).ints(size).ints(stride).op(&[0x89]);
            self.global("collections", "OrderedDict").op(b")R");
            self.op(b"tR")
        }
    }

    fn parse(b: &[u8]) -> Result<Pickle> {
        unpickle(b)
    }

    #[test]
    fn scalars_and_containers() {
        let mut w = W::default();
        w.proto().op(b"}q\x00(").str("a").int(-5);
        w.str("b").op(b"K\x07");
        w.str("c").op(b"M\x00\x01");
        w.str("d").op(b"G\x3f\xf8\x00\x00\x00\x00\x00\x00");
        w.str("e").op(b"N");
        w.str("f").op(&[0x88]);
        w.str("g").op(&[0x8a, 2, 0xff, 0x7f]);
        w.str("h").op(b"]q\x01(K\x01K\x02e");
        w.str("i").op(b"h\x01");
        w.str("j").op(&[0x8c, 2]).op(b"hi");
        w.str("k").op(b"C\x03abc");
        w.op(b"u.");
        let p = parse(&w.0).unwrap();
        let d = p.dict(p.root).unwrap();
        assert_eq!(p.dict_get(d, "a"), Some(Value::Int(-5)));
        assert_eq!(p.dict_get(d, "b"), Some(Value::Int(7)));
        assert_eq!(p.dict_get(d, "c"), Some(Value::Int(256)));
        assert_eq!(p.dict_get(d, "d"), Some(Value::Float(1.5)));
        assert_eq!(p.dict_get(d, "e"), Some(Value::None));
        assert_eq!(p.dict_get(d, "f"), Some(Value::Bool(true)));
        assert_eq!(p.dict_get(d, "g"), Some(Value::Int(0x7fff)));
        // The memoised list is shared, not copied: both keys see the appended items.
        let h = p.dict_get(d, "h").unwrap();
        assert_eq!(p.dict_get(d, "i"), Some(h));
        assert!(matches!(p.obj(h), Some(Object::List(v)) if v.len() == 2));
        assert_eq!(p.str(p.dict_get(d, "j").unwrap()), Some("hi"));
        assert!(matches!(p.obj(p.dict_get(d, "k").unwrap()), Some(Object::Bytes(b)) if b == b"abc"));
    }

    #[test]
    fn long_encodings() {
        let cases: &[(&[u8], i64)] = &[
            (&[], 0),
            (&[0xff], -1),
            (&[0x00, 0x80], -32768),
            (&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], i64::MAX),
            (&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], -1),
        ];
        for (bytes, want) in cases {
            let mut b = vec![0x80, 2, 0x8a, bytes.len() as u8];
            b.extend_from_slice(bytes);
            b.push(b'.');
            assert_eq!(parse(&b).unwrap().root, Value::Int(*want), "{bytes:?}");
        }
        let big = [0x80, 2, 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'.'];
        let p = parse(&big).unwrap();
        assert!(matches!(p.obj(p.root), Some(Object::BigInt)));
    }

    #[test]
    fn ordered_dict_with_build_and_tensor() {
        let mut w = W::default();
        w.proto().global("collections", "OrderedDict").op(b")R");
        w.str("w").tensor("FloatStorage", "0", 6, 1, &[2, 2], &[1, 2]).op(b"s");
        // BUILD with a `_metadata` state, as OrderedDict state dicts carry.
        w.op(b"}").str("_metadata").op(b"}sb.");
        let p = parse(&w.0).unwrap();
        let d = p.dict(p.root).unwrap();
        let (t, s) = p.tensor(p.dict_get(d, "w").unwrap()).unwrap();
        assert_eq!((t.offset, &t.size[..], &t.stride[..]), (1, &[2u64, 2][..], &[1u64, 2][..]));
        assert_eq!((s.dtype, s.key.as_str(), s.location.as_str(), s.numel), (StorageDtype::F32, "0", "cpu", 6));
    }

    #[test]
    fn parameter_wrapper_and_codecs() {
        let mut w = W::default();
        w.proto().op(b"(");
        w.global("torch._utils", "_rebuild_parameter");
        w.tensor("HalfStorage", "k", 1, 0, &[], &[]).op(&[0x88]).global("collections", "OrderedDict").op(b")R");
        w.op(&[0x87]).op(b"R");
        w.global("_codecs", "encode").str("\u{e9}\u{1}").str("latin1").op(&[0x86]).op(b"R");
        w.op(b"l.");
        let p = parse(&w.0).unwrap();
        let Some(Object::List(items)) = p.obj(p.root) else { panic!() };
        assert!(p.tensor(items[0]).is_some());
        assert!(matches!(p.obj(items[1]), Some(Object::Bytes(b)) if b == &[0xe9, 1]));
    }

    fn hostile(w: &mut W) -> String {
        format!("{:#}", parse(&w.0).unwrap_err())
    }

    #[test]
    fn disallowed_globals_are_named() {
        let e = hostile(W::default().proto().global("os", "system").str("touch /tmp/x").op(&[0x85]).op(b"R."));
        assert!(e.contains("disallowed global 'os.system'"), "{e}");
        assert!(!e.contains("whole pickled module"), "{e}");
        let e = hostile(W::default().proto().global("torch.nn.modules.container", "Sequential").op(b")").op(b"R."));
        assert!(e.contains("whole pickled module") && e.contains("model.state_dict()"), "{e}");
        let e = hostile(W::default().proto().global("posix", "system").op(b"."));
        assert!(e.contains("'posix.system'"), "{e}");
        let e = hostile(W::default().proto().global("builtins", "eval").op(b"."));
        assert!(e.contains("'builtins.eval'"), "{e}");
        // STACK_GLOBAL (protocol 4).
        let e = hostile(W::default().op(&[0x80, 4]).str("subprocess").str("Popen").op(&[0x93, b'.']));
        assert!(e.contains("'subprocess.Popen'"), "{e}");
        // INST (protocol 0) also goes through the allow-list.
        let e = hostile(W::default().op(b"(").str("ls").op(b"ios\nsystem\n."));
        assert!(e.contains("'os.system'"), "{e}");
        let e = hostile(
            W::default().proto().global("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint").op(b"."),
        );
        assert!(e.contains("'pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint'"), "{e}");
        // Lookalikes of allowed names are rejected.
        let e = hostile(W::default().proto().global("torch", "load").op(b"."));
        assert!(e.contains("'torch.load'"), "{e}");
        let e = hostile(W::default().proto().global("torch", "EvilStorage").op(b"."));
        assert!(e.contains("'torch.EvilStorage'"), "{e}");
    }

    #[test]
    fn inert_metadata_values() {
        // {'np': numpy.float64(1.5), 'set': {1, 2}, 'dt': torch.float16, 'dev': torch.device('cuda', 0)}
        let mut w = W::default();
        w.proto().op(b"}(").str("np");
        w.global("numpy._core.multiarray", "scalar");
        w.global("numpy", "dtype").str("f8").op(&[0x89, 0x88, 0x87]).op(b"R");
        w.op(b"(").int(3).str("<").op(b"NNN").int(-1).int(-1).int(0).op(b"tb");
        w.global("_codecs", "encode").str("\0\0\0\0\0\0\u{f8}?").str("latin1");
        w.op(&[0x86]).op(b"R").op(&[0x86]).op(b"R");
        w.str("set").global("__builtin__", "set");
        w.op(b"(K\x01K\x02l").op(&[0x85]).op(b"R");
        w.str("dt").global("torch", "float16");
        w.str("dev").global("torch", "device").str("cuda").int(0).op(&[0x86]).op(b"R");
        w.op(b"u.");
        let p = parse(&w.0).unwrap();
        let d = p.dict(p.root).unwrap();
        assert_eq!(p.type_name(p.dict_get(d, "np").unwrap()), "numpy scalar");
        assert!(matches!(p.obj(p.dict_get(d, "set").unwrap()), Some(Object::Set(v)) if v.len() == 2));
        assert!(matches!(p.obj(p.dict_get(d, "dt").unwrap()), Some(Object::Dtype(StorageDtype::F16))));
        assert_eq!(p.type_name(p.dict_get(d, "dev").unwrap()), "torch.device");
    }

    #[test]
    fn rebuild_tensor_v3_takes_dtype_argument() {
        let mut w = W::default();
        w.proto().global("torch._utils", "_rebuild_tensor_v3").op(b"(");
        w.op(b"(").str("storage").global("torch.storage", "UntypedStorage");
        w.str("0").str("cpu").int(12).op(b"tQ");
        w.int(1).ints(&[2]).ints(&[1]).op(&[0x89]);
        w.global("collections", "OrderedDict").op(b")R");
        w.global("torch", "float8_e5m2").op(b"tR.");
        let p = parse(&w.0).unwrap();
        let (t, s) = p.tensor(p.root).unwrap();
        assert_eq!((t.dtype, s.dtype, s.numel), (StorageDtype::Other, StorageDtype::Untyped, 12));
        // A dtype argument that is not a dtype is refused.
        let bad = String::from_utf8_lossy(&w.0).replace("float8_e5m2", "Size").into_bytes();
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn misuse_of_allowed_globals_errors() {
        // Calling something that is not callable.
        assert!(parse(W::default().proto().global("torch", "FloatStorage").op(b")R.").0.as_slice()).is_err());
        assert!(parse(W::default().proto().int(3).op(b")R.").0.as_slice()).is_err());
        // Tensor with mismatched size/stride ranks.
        let mut w = W::default();
        w.proto().tensor("FloatStorage", "0", 4, 0, &[2, 2], &[1]).op(b".");
        assert!(parse(&w.0).is_err());
        // BUILD on a non-dict.
        assert!(parse(W::default().proto().op(b"]}b.").0.as_slice()).is_err());
        // Persistent ids other than storages.
        assert!(parse(W::default().proto().str("x").op(b"Q.").0.as_slice()).is_err());
    }

    #[test]
    fn opcode_errors_name_opcode_and_offset() {
        let e = format!("{:#}", parse(&[0x80, 2, 0xff]).unwrap_err());
        assert!(e.contains("0xff") && e.contains("offset 2"), "{e}");
        let e = format!("{:#}", parse(&[0x80, 2, 0x82, 1]).unwrap_err());
        assert!(e.contains("EXT1"), "{e}");
        assert!(parse(&[]).is_err());
        assert!(parse(b"N").is_err());
        assert!(parse(b".").is_err());
    }

    #[test]
    fn huge_lengths_do_not_allocate() {
        let mut b = vec![0x80, 4, 0x8d];
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&b).is_err());
        let mut b = vec![0x80, 2, b'B'];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&b).is_err());
        let mut b = vec![0x80, 2, 0x8b];
        b.extend_from_slice(&(-1i32).to_le_bytes());
        assert!(parse(&b).is_err());
    }

    #[test]
    fn deep_nesting_and_cycles_are_fine() {
        // 200k nested lists: no recursion, so no stack overflow.
        let n = 200_000;
        let mut b = vec![0x80, 2];
        b.extend(vec![b']'; n]);
        b.extend(vec![b'a'; n - 1]);
        b.push(b'.');
        assert!(parse(&b).is_ok());
        // 200k MARKs without matching close: just data.
        let mut b = vec![0x80, 2];
        b.extend(vec![b'('; n]);
        b.push(b'.');
        assert!(parse(&b).is_err());
        // A list containing itself.
        let p = parse(b"\x80\x02]q\x00h\x00a.").unwrap();
        assert!(matches!(p.obj(p.root), Some(Object::List(v)) if v[0] == p.root));
    }

    #[test]
    fn memo_aliasing_cannot_force_quadratic_copies() {
        // A 100k-element tuple passed to torch.Size 10k times (each call copies it).
        let mut w = W::default();
        w.proto().global("torch", "Size").op(b"q\x00(");
        for _ in 0..100_000 {
            w.op(b"K\x01");
        }
        w.op(b"tq\x01");
        for _ in 0..10_000 {
            w.op(b"h\x00h\x01\x85R0");
        }
        w.op(b"N.");
        let t = std::time::Instant::now();
        let e = format!("{:#}", parse(&w.0).unwrap_err());
        assert!(e.contains("expands too much"), "{e}");
        assert!(t.elapsed().as_secs() < 5);
        // A 1 MB string used as a dict key 10k times (each insertion copies the key).
        let mut w = W::default();
        w.proto().op(b"}").str(&"x".repeat(1 << 20)).op(b"q\x00");
        w.op(b"0");
        for _ in 0..10_000 {
            w.op(b"h\x00Ns");
        }
        w.op(b".");
        let e = format!("{:#}", parse(&w.0).unwrap_err());
        assert!(e.contains("expands too much"), "{e}");
    }

    #[test]
    fn many_setitems_are_not_quadratic() {
        let mut w = W::default();
        w.proto().op(b"}(");
        for i in 0..100_000 {
            w.str(&format!("key{i}")).int(i);
        }
        w.op(b"u.");
        let t = std::time::Instant::now();
        let p = parse(&w.0).unwrap();
        assert!(t.elapsed().as_secs() < 5);
        let d = p.dict(p.root).unwrap();
        assert_eq!(d.entries().len(), 100_000);
        assert_eq!(p.dict_get(d, "key99999"), Some(Value::Int(99999)));
    }

    /// Iteration count for the fuzz-style tests: `default`, or `$LOAD_FUZZ_ITERS` when set
    /// (e.g. `LOAD_FUZZ_ITERS=1000000 cargo test -p host-cli --release load::` for a long run).
    pub(crate) fn fuzz_iters(default: usize) -> usize {
        std::env::var("LOAD_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
    }

    /// Minimal xorshift PRNG for reproducible fuzzing.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn sample_pickle() -> Vec<u8> {
        let mut w = W::default();
        w.proto().global("collections", "OrderedDict").op(b")Rq\x00(");
        w.str("a").tensor("FloatStorage", "0", 6, 1, &[2, 2], &[1, 2]);
        w.str("b").tensor("HalfStorage", "1", 3, 0, &[3], &[1]);
        w.str("c").op(b"h\x00");
        w.op(b"u}").str("_metadata").op(b"}sb.");
        w.0
    }

    #[test]
    fn fuzz_truncations_and_flips_never_panic() {
        let good = sample_pickle();
        assert!(parse(&good).is_ok());
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "prefix {n} parsed");
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..fuzz_iters(20_000) {
            let mut b = good.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() % b.len() as u64) as usize;
                b[i] = rng.next() as u8;
            }
            let _ = parse(&b);
        }
        // Pure random garbage too.
        for _ in 0..fuzz_iters(2_000) {
            let len = (rng.next() % 256) as usize;
            let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = parse(&b);
        }
    }
}
