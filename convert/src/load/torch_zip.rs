//! `torch.save` zip archives (torch >= 1.6).
//!
//! Layout: `<prefix>/data.pkl` (the object graph, pickle protocol 2),
//! `<prefix>/data/<key>` (raw little-endian storage bytes), `<prefix>/byteorder`
//! (`little`; absent in older files) and `<prefix>/version`. The prefix is the
//! file stem at save time, so `data.pkl` is found by suffix.
//!
//! The pickle is parsed by [`super::pickle`], which never executes anything; this
//! module picks the state dict out of the object graph and materialises its
//! float tensors (gathering strided views into contiguous `f32`).

use super::pickle::{self, Pickle, StorageDtype, TensorRef, Value};
use super::{FloatKind, StateDict, Tensor};
use crate::error::{Context as _, Result};
use crate::{bail, err};
use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::Path;

/// Keys tried, in order, when no key is given and the top level is not itself a state dict.
const CANDIDATE_KEYS: &[&str] = &["ema", "ema_model", "state_dict", "model", "model_state_dict", "module", "net"];

/// Largest `data.pkl` accepted (real ones are a few MiB even for huge models).
const MAX_PICKLE_BYTES: u64 = 512 << 20;

/// Output (f32 bytes) may exceed the archive size by at most this factor (f16 storages
/// double in size, tied weights are listed more than once) ...
const MAX_EXPANSION: u64 = 16;
/// ... or this many bytes, whichever is larger.
const MIN_OUTPUT_LIMIT: u64 = 1 << 30;

/// Message for files that are not zip archives.
const NOT_ZIP: &str = "not a torch.save zip archive (legacy pre-1.6 format or not a checkpoint)";

/// Loads a checkpoint file; see [`super::load_torch`].
pub(crate) fn load_torch_file(path: &Path, key: Option<&str>) -> Result<(StateDict, String)> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    load_torch_reader(std::io::BufReader::new(file), key).with_context(|| format!("loading {}", path.display()))
}

/// Loads a checkpoint from any seekable reader (used by the file loader and by tests).
pub(crate) fn load_torch_reader<R: Read + Seek>(mut reader: R, key: Option<&str>) -> Result<(StateDict, String)> {
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut reader, &mut magic)?;
    if n == 0 {
        bail!(Checkpoint, "empty file: {NOT_ZIP}");
    }
    if n < 4 || &magic[..2] != b"PK" {
        if magic[0] == 0x80 {
            bail!(Checkpoint, "{NOT_ZIP}: this looks like a raw pickle (torch.save before 1.6, or _use_new_zipfile_serialization=False); re-save it with a recent torch");
        }
        bail!(Checkpoint, "{NOT_ZIP}");
    }
    let archive_len = reader.seek(std::io::SeekFrom::End(0))?;
    reader.rewind()?;
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| err!(Checkpoint, "{NOT_ZIP}: {e}"))?;
    let prefix = find_prefix(&zip)?;

    if let Some(order) = read_small(&mut zip, &format!("{prefix}byteorder"), 64)? {
        let order = String::from_utf8_lossy(&order);
        match order.trim() {
            "little" => {}
            "big" => {
                bail!(
                    Checkpoint,
                    "checkpoint was saved on a big-endian machine; only little-endian checkpoints are supported"
                )
            }
            other => bail!(Checkpoint, "checkpoint has an unknown byteorder {other:?}"),
        }
    }

    let pkl_name = format!("{prefix}data.pkl");
    let pkl = read_small(&mut zip, &pkl_name, MAX_PICKLE_BYTES)?
        .ok_or_else(|| err!(Checkpoint, "{pkl_name} disappeared from the archive"))?;
    let p = pickle::unpickle(&pkl).with_context(|| format!("reading {pkl_name}"))?;

    let (dict, how) = select_state_dict(&p, key)?;
    let tensors = collect_tensors(&p, dict)?;
    if tensors.is_empty() {
        bail!(Checkpoint, "the {how} contains no float tensors ({})", describe_keys(&p, dict, None));
    }
    let state = materialize(&mut zip, &prefix, tensors, archive_len)?;
    Ok((state, how))
}

/// Reads as many bytes as are available, up to `buf.len()`.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Finds the archive's record prefix (`"archive/"`, `"model/"`, or `""`) from its `data.pkl`.
fn find_prefix<R: Read + Seek>(zip: &zip::ZipArchive<R>) -> Result<String> {
    let mut prefix: Option<String> = None;
    let mut torchscript = false;
    for name in zip.file_names() {
        if let Some(p) = name.strip_suffix("data.pkl") {
            let depth_ok = p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1);
            if depth_ok && !matches!(&prefix, Some(q) if q.len() <= p.len()) {
                prefix = Some(p.to_owned());
            }
        }
        let mut parts = name.splitn(3, '/');
        let (_, second) = (parts.next(), parts.next());
        if second == Some("constants.pkl") || second == Some("code") {
            torchscript = true;
        }
    }
    if torchscript {
        bail!(Checkpoint, "this is a TorchScript archive (torch.jit.save), which is not supported; save the model's state_dict() with torch.save instead");
    }
    prefix.ok_or_else(|| err!(Checkpoint, "zip archive has no data.pkl: not a torch.save checkpoint"))
}

/// Reads a whole archive entry if it exists, refusing entries larger than `limit`.
fn read_small<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let entry = match zip.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(err!(Checkpoint, "cannot read {name} from the archive: {e}")),
    };
    if entry.size() > limit {
        bail!(Checkpoint, "{name} is implausibly large ({} bytes)", entry.size());
    }
    let mut buf = Vec::new();
    entry
        .take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {name} from the archive (truncated or corrupt)"))?;
    if buf.len() as u64 > limit {
        bail!(Checkpoint, "{name} is implausibly large");
    }
    Ok(Some(buf))
}

/// Whether a value is a tensor of any dtype.
fn is_tensor(p: &Pickle, v: Value) -> bool {
    p.tensor(v).is_some()
}

/// Whether a value is a plain scalar (tolerated next to tensors in a state dict).
fn is_scalar(p: &Pickle, v: Value) -> bool {
    matches!(v, Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_)) || p.str(v).is_some()
}

/// A non-empty dict whose values are all tensors.
fn all_tensors(p: &Pickle, d: &pickle::Dict) -> bool {
    !d.entries().is_empty() && d.entries().iter().all(|&(_, v)| is_tensor(p, v))
}

/// A dict with at least one tensor whose other values are plain scalars.
fn mostly_tensors(p: &Pickle, d: &pickle::Dict) -> bool {
    d.entries().iter().any(|&(_, v)| is_tensor(p, v))
        && d.entries().iter().all(|&(_, v)| is_tensor(p, v) || is_scalar(p, v))
}

/// Quotes a key for messages.
fn quote(s: &str) -> String {
    format!("'{}'", s.escape_debug())
}

/// Lists a dict's string keys for messages, with a short type note per key
/// (`'step' (int), 'model' (dict, 12 entries)`); `skip` is left out.
fn describe_keys(p: &Pickle, d: &pickle::Dict, skip: Option<&str>) -> String {
    const MAX: usize = 16;
    let mut parts = Vec::new();
    let mut n = 0;
    for &(k, v) in d.entries() {
        let Some(k) = p.str(k) else { continue };
        if Some(k) == skip {
            continue;
        }
        n += 1;
        if parts.len() < MAX {
            let note = match p.dict(v) {
                Some(sub) => format!("dict, {} entries", sub.entries().len()),
                None => p.type_name(v).to_owned(),
            };
            parts.push(format!("{} ({note})", quote(k)));
        }
    }
    match n {
        0 => "no keys".to_owned(),
        _ if n > MAX => format!("keys: {}, ... ({} more)", parts.join(", "), n - MAX),
        _ => format!("keys: {}", parts.join(", ")),
    }
}

/// Other top-level keys, for the "what was used" sentence.
fn other_keys(p: &Pickle, d: &pickle::Dict, used: &str) -> String {
    const MAX: usize = 12;
    let keys: Vec<String> =
        d.entries().iter().filter_map(|&(k, _)| p.str(k)).filter(|&k| k != used).map(quote).collect();
    if keys.is_empty() {
        return String::new();
    }
    let more = keys.len().saturating_sub(MAX);
    let mut s = keys.into_iter().take(MAX).collect::<Vec<_>>().join(", ");
    if more > 0 {
        s.push_str(&format!(", ... ({more} more)"));
    }
    format!(" (other keys: {s})")
}

/// Picks the dict holding the state dict; returns it and a description.
fn select_state_dict<'p>(p: &'p Pickle, key: Option<&str>) -> Result<(&'p pickle::Dict, String)> {
    let Some(root) = p.dict(p.root) else {
        bail!(Checkpoint, "checkpoint's top-level object is a {}, not a dict of tensors", p.type_name(p.root));
    };
    if let Some(key) = key {
        return select_by_key(p, root, key);
    }
    if all_tensors(p, root) {
        return Ok((root, "top-level state dict".to_owned()));
    }
    for &cand in CANDIDATE_KEYS {
        if let Some(d) = p.dict_get(root, cand).and_then(|v| p.dict(v)) {
            if mostly_tensors(p, d) {
                return Ok((d, format!("state dict under top-level key {}{}", quote(cand), other_keys(p, root, cand))));
            }
        }
    }
    for &outer in CANDIDATE_KEYS {
        let Some(od) = p.dict_get(root, outer).and_then(|v| p.dict(v)) else {
            continue;
        };
        for &inner in CANDIDATE_KEYS {
            if let Some(d) = p.dict_get(od, inner).and_then(|v| p.dict(v)) {
                if mostly_tensors(p, d) {
                    let path = format!("{outer}.{inner}");
                    return Ok((d, format!("state dict under key {}{}", quote(&path), other_keys(p, root, outer))));
                }
            }
        }
    }
    if mostly_tensors(p, root) {
        return Ok((root, "top-level state dict (non-tensor entries skipped)".to_owned()));
    }
    bail!(
        Checkpoint,
        "no state dict found in the checkpoint (tried the top level and keys {}); top-level {}; pass the key to use explicitly",
        CANDIDATE_KEYS.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", "),
        describe_keys(p, root, None)
    )
}

/// Resolves an explicit key: a path of dict keys separated by dots. Keys may themselves
/// contain dots (`"ema.0.999"` finds `ckpt["ema"]["0.999"]`): at each level the longest
/// run of dot-separated parts that is a key there wins.
fn select_by_key<'p>(p: &'p Pickle, root: &'p pickle::Dict, key: &str) -> Result<(&'p pickle::Dict, String)> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    let mut walked = String::new();
    let mut i = 0;
    let found = loop {
        let hit = (i + 1..=parts.len()).rev().find_map(|j| p.dict_get(cur, &parts[i..j].join(".")).map(|v| (j, v)));
        let Some((j, v)) = hit else {
            let place =
                if walked.is_empty() { "at the top level".to_owned() } else { format!("under {}", quote(&walked)) };
            bail!(
                Checkpoint,
                "key {} not found {place} of the checkpoint; {}",
                quote(&parts[i..].join(".")),
                describe_keys(p, cur, None)
            );
        };
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(&parts[i..j].join("."));
        i = j;
        if i == parts.len() {
            break v;
        }
        cur = p.dict(v).ok_or_else(|| err!(Checkpoint, "{} is a {}, not a dict", quote(&walked), p.type_name(v)))?;
    };
    let d = p
        .dict(found)
        .ok_or_else(|| err!(Checkpoint, "{} is a {}, not a dict of tensors", quote(key), p.type_name(found)))?;
    Ok((d, format!("state dict under key {} (as requested)", quote(key))))
}

/// A float tensor to materialise.
struct Pending<'p> {
    name: String,
    tensor: &'p TensorRef,
    /// Element count its storage declares.
    storage_numel: u64,
}

/// Float tensors sharing one storage, keyed by (storage key, element type).
type Groups<'p> = BTreeMap<(&'p str, FloatKind), Vec<Pending<'p>>>;

/// The float tensors of a dict, grouped by storage. Non-string keys, non-tensor values and
/// non-float tensors are skipped.
fn collect_tensors<'p>(p: &'p Pickle, d: &'p pickle::Dict) -> Result<Groups<'p>> {
    let mut groups = Groups::new();
    for &(k, v) in d.entries() {
        let (Some(name), Some((t, s))) = (p.str(k), p.tensor(v)) else {
            continue;
        };
        let Some(kind) = t.dtype.float_kind() else {
            continue;
        };
        // Typed storages count elements; untyped ones (from `_rebuild_tensor_v3`) count bytes.
        let storage_numel = if s.dtype == StorageDtype::Untyped {
            s.numel / kind.size() as u64
        } else if s.dtype == t.dtype {
            s.numel
        } else {
            bail!(
                Checkpoint,
                "tensor {}: dtype {:?} does not match its storage type {:?}",
                quote(name),
                t.dtype,
                s.dtype
            );
        };
        let pending = Pending { name: name.to_owned(), tensor: t, storage_numel };
        groups.entry((s.key.as_str(), kind)).or_default().push(pending);
    }
    Ok(groups)
}

/// Reads each needed storage once and gathers its tensors.
fn materialize<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    prefix: &str,
    groups: Groups,
    archive_len: u64,
) -> Result<StateDict> {
    // One tensor object may be listed under many names (tied weights do this legitimately);
    // bound the total output so aliasing cannot turn a small file into a huge allocation.
    let limit = archive_len.saturating_mul(MAX_EXPANSION).max(MIN_OUTPUT_LIMIT);
    let total = groups
        .values()
        .flatten()
        .map(|t| numel(t.tensor).unwrap_or(u64::MAX))
        .fold(0u64, u64::saturating_add)
        .saturating_mul(4);
    if total > limit {
        bail!(Checkpoint, "the state dict would expand to {total} bytes of f32 from a {archive_len}-byte archive (tensors aliased too many times?)");
    }
    let mut out = StateDict::default();
    for ((key, kind), tensors) in groups {
        // Validate every view against its declared storage size before reading anything.
        for t in &tensors {
            check_view(t.tensor, t.storage_numel).with_context(|| format!("tensor {}", quote(&t.name)))?;
        }
        let needed = tensors.iter().any(|t| numel(t.tensor) != Some(0));
        let bytes = if needed {
            let numel = tensors.iter().map(|t| t.storage_numel).max().unwrap_or(0);
            read_storage(zip, prefix, key, numel, kind, archive_len)?
        } else {
            Vec::new()
        };
        for t in tensors {
            let tensor = gather(&bytes, kind, t.tensor).with_context(|| format!("tensor {}", quote(&t.name)))?;
            out.tensors.insert(t.name, tensor);
        }
    }
    Ok(out)
}

/// Reads `<prefix>data/<key>`: the first `numel` elements of `kind` (`archive_len`, the size of
/// the whole archive, bounds the up-front allocation).
fn read_storage<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    prefix: &str,
    key: &str,
    numel: u64,
    kind: FloatKind,
    archive_len: u64,
) -> Result<Vec<u8>> {
    let name = format!("{prefix}data/{key}");
    let want = numel
        .checked_mul(kind.size() as u64)
        .ok_or_else(|| err!(Checkpoint, "storage {} declares an impossible size", quote(key)))?;
    let entry = zip
        .by_name(&name)
        .map_err(|e| err!(Checkpoint, "storage {} is missing from the archive: {e}", quote(&name)))?;
    if entry.size() < want {
        bail!(Checkpoint, "storage {} holds {} bytes but the checkpoint declares {want}", quote(&name), entry.size());
    }
    // Read the whole entry so the zip reader verifies its CRC at the end. Memory grows with
    // the bytes actually present; only the archive's own length is reserved up front.
    let mut buf = Vec::new();
    buf.reserve_exact(usize::try_from(entry.size().min(archive_len)).unwrap_or(0));
    let mut entry = entry;
    entry
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read storage {} (truncated or corrupt archive)", quote(&name)))?;
    if (buf.len() as u64) < want {
        bail!(Checkpoint, "storage {} is truncated ({} of {want} bytes)", quote(&name), buf.len());
    }
    buf.truncate(want as usize);
    Ok(buf)
}

/// Element count of a view, or `None` on overflow.
fn numel(t: &TensorRef) -> Option<u64> {
    t.size.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Checks that a view lies inside a storage of `storage_numel` elements.
fn check_view(t: &TensorRef, storage_numel: u64) -> Result<()> {
    let n = numel(t).ok_or_else(|| err!(Checkpoint, "shape {:?} overflows", t.size))?;
    if n == 0 {
        return Ok(());
    }
    if n > storage_numel {
        bail!(Checkpoint, "shape {:?} has {n} elements but its storage only {storage_numel}", t.size);
    }
    // Largest element index touched: offset + sum((size_i - 1) * stride_i).
    let mut last = t.offset;
    for (&d, &s) in t.size.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| last.checked_add(x))
            .ok_or_else(|| err!(Checkpoint, "view geometry overflows"))?;
    }
    if last >= storage_numel {
        bail!(
            Checkpoint,
            "view (offset {}, shape {:?}, stride {:?}) reaches element {last} of a {storage_numel}-element storage",
            t.offset,
            t.size,
            t.stride
        );
    }
    if usize::try_from(n).is_err() {
        bail!(Checkpoint, "tensor too large for this machine");
    }
    Ok(())
}

/// Gathers a (validated) view into a contiguous f32 tensor.
fn gather(bytes: &[u8], kind: FloatKind, t: &TensorRef) -> Result<Tensor> {
    let shape: Vec<usize> = t
        .size
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| err!(Checkpoint, "tensor too large for this machine"))?;
    let n = numel(t).and_then(|n| usize::try_from(n).ok()).ok_or_else(|| err!(Checkpoint, "shape overflows"))?;
    if n == 0 {
        return Ok(Tensor { shape, data: Vec::new() });
    }
    let es = kind.size();
    let storage_numel = (bytes.len() / es) as u64;
    check_view(t, storage_numel)?;
    let dec = kind.decoder();
    // After check_view every index is < storage_numel, so it fits in usize and in `bytes`.
    let elem = |i: u64| -> Result<f32> {
        let start = usize::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(es))
            .ok_or_else(|| err!(Checkpoint, "index overflow"))?;
        bytes.get(start..start + es).map(dec).ok_or_else(|| err!(Checkpoint, "index {i} outside storage"))
    };

    // Fast path: row-major contiguous (dimensions of size 1 may have any stride).
    let mut expect = 1u64;
    let mut contiguous = true;
    for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect = expect.saturating_mul(d);
    }
    if contiguous {
        let start = usize::try_from(t.offset).map_err(|_| err!(Checkpoint, "offset overflow"))? * es;
        let slice = bytes.get(start..start + n * es).ok_or_else(|| err!(Checkpoint, "view outside storage"))?;
        return Ok(Tensor { shape, data: kind.decode_all(slice) });
    }

    // General strided gather with an odometer over the index (no recursion).
    let rank = t.size.len();
    let mut idx = vec![0u64; rank];
    let mut data = Vec::with_capacity(n);
    let mut pos = t.offset;
    for _ in 0..n {
        data.push(elem(pos)?);
        for dim in (0..rank).rev() {
            // Wrapping arithmetic: the position may step past the end (and wrap for absurd strides
            // of size-1 dims) only transiently, before being rewound below.
            idx[dim] += 1;
            pos = pos.wrapping_add(t.stride[dim]);
            if idx[dim] < t.size[dim] {
                break;
            }
            pos = pos.wrapping_sub(t.stride[dim].wrapping_mul(t.size[dim]));
            idx[dim] = 0;
        }
    }
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::super::pickle::tests::{fuzz_iters, Rng, W};
    use super::*;
    use std::io::{Cursor, Write};

    fn data_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/load")
    }

    /// Builds an in-memory zip from `(name, bytes)` entries.
    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn f32_bytes(xs: &[f32]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn load_bytes(b: &[u8], key: Option<&str>) -> Result<(StateDict, String)> {
        load_torch_reader(Cursor::new(b), key)
    }

    /// A hand-built checkpoint: {'w': 2x3 f32 transposed view, 's': scalar at offset 5, 'e': empty,
    /// 'n': int64 tensor} plus storages.
    fn sample_checkpoint() -> Vec<u8> {
        let mut w = W::default();
        w.proto().op(b"}(");
        w.str("w").tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
        w.str("s").tensor("FloatStorage", "0", 6, 5, &[], &[]);
        w.str("e").tensor("FloatStorage", "1", 0, 0, &[0, 4], &[4, 1]);
        w.str("n").tensor("LongStorage", "2", 1, 0, &[], &[]);
        w.op(b"u.");
        let s0 = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
        zip_of(&[
            ("ckpt/data.pkl", &w.0),
            ("ckpt/byteorder", b"little"),
            ("ckpt/data/0", &s0),
            ("ckpt/data/1", b""),
            ("ckpt/data/2", &7i64.to_le_bytes()),
            ("ckpt/version", b"3\n"),
        ])
    }

    #[test]
    fn corrupted_storage_bytes_fail_the_crc() {
        let mut z = sample_checkpoint();
        // Storage 0 holds 0.0..5.0; 5.0f32 is 00 00 a0 40 and occurs only there.
        let at = z.windows(4).position(|w| w == [0, 0, 0xa0, 0x40]).unwrap();
        z[at + 3] ^= 1;
        let e = format!("{:#}", load_bytes(&z, None).unwrap_err());
        assert!(e.contains("corrupt"), "{e}");
    }

    #[test]
    fn hand_built_checkpoint() {
        let (sd, how) = load_bytes(&sample_checkpoint(), None).unwrap();
        assert_eq!(how, "top-level state dict");
        assert_eq!(sd.len(), 3, "int tensor skipped");
        // Storage [[0,1,2],[3,4,5]] viewed with stride (1,3) is its transpose.
        assert_eq!(sd.get("w").unwrap(), &Tensor { shape: vec![3, 2], data: vec![0., 3., 1., 4., 2., 5.] });
        assert_eq!(sd.get("s").unwrap(), &Tensor { shape: vec![], data: vec![5.] });
        assert_eq!(sd.get("e").unwrap(), &Tensor { shape: vec![0, 4], data: vec![] });
    }

    #[test]
    fn strided_gather_cases() {
        let bytes = f32_bytes(&(0..24).map(|i| i as f32).collect::<Vec<_>>());
        let t = |offset, size: &[u64], stride: &[u64]| TensorRef {
            storage: 0,
            dtype: StorageDtype::F32,
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        };
        // Contiguous with offset.
        assert_eq!(gather(&bytes, FloatKind::F32, &t(2, &[2, 2], &[2, 1])).unwrap().data, vec![2., 3., 4., 5.]);
        // Slice of columns: x.view(4,6)[:, 1:3].
        assert_eq!(
            gather(&bytes, FloatKind::F32, &t(1, &[4, 2], &[6, 1])).unwrap().data,
            vec![1., 2., 7., 8., 13., 14., 19., 20.]
        );
        // 3-D permutation.
        let g = gather(&bytes, FloatKind::F32, &t(0, &[4, 3, 2], &[1, 8, 4])).unwrap();
        assert_eq!(&g.data[..6], &[0., 4., 8., 12., 16., 20.]);
        assert_eq!(g.data[23], 23.);
        // Size-1 dims with odd strides are still contiguous.
        assert_eq!(gather(&bytes, FloatKind::F32, &t(3, &[1, 2], &[99, 1])).unwrap().data, vec![3., 4.]);
        // Out of bounds, overflow, and more elements than the storage are errors.
        assert!(gather(&bytes, FloatKind::F32, &t(20, &[2, 3], &[3, 1])).is_err());
        assert!(gather(&bytes, FloatKind::F32, &t(0, &[u64::MAX, 2], &[1, 1])).is_err());
        assert!(gather(&bytes, FloatKind::F32, &t(0, &[1 << 40, 1 << 40], &[0, 0])).is_err());
        assert!(gather(&bytes, FloatKind::F32, &t(0, &[100], &[0])).is_err());
        assert!(gather(&bytes, FloatKind::F32, &t(u64::MAX, &[1], &[1])).is_err());
    }

    #[test]
    fn key_selection_and_messages() {
        let mut w = W::default();
        w.proto().op(b"}(");
        w.str("model").op(b"}").str("a").tensor("FloatStorage", "0", 2, 0, &[2], &[1]).op(b"s");
        w.str("ema").op(b"}").str("a").tensor("FloatStorage", "0", 2, 1, &[1], &[1]).op(b"s");
        w.str("step").int(3);
        w.str("nested").op(b"}").str("inner").op(b"}").str("b").tensor("FloatStorage", "0", 2, 0, &[], &[]).op(b"ss");
        w.str("weird.key").op(b"}").str("c").tensor("FloatStorage", "0", 2, 0, &[], &[]).op(b"s");
        w.op(b"u.");
        let z = zip_of(&[("x/data.pkl", &w.0), ("x/data/0", &f32_bytes(&[1., 2.]))]);

        let (sd, how) = load_bytes(&z, None).unwrap();
        assert_eq!(sd.get("a").unwrap().data, vec![2.]);
        assert!(how.starts_with("state dict under top-level key 'ema' (other keys: 'model', 'step'"), "{how}");

        let (sd, how) = load_bytes(&z, Some("model")).unwrap();
        assert_eq!(sd.get("a").unwrap().data, vec![1., 2.]);
        assert!(how.contains("'model'"), "{how}");
        let (sd, _) = load_bytes(&z, Some("nested.inner")).unwrap();
        assert_eq!(sd.get("b").unwrap().data, vec![1.]);
        let (sd, _) = load_bytes(&z, Some("weird.key")).unwrap();
        assert!(sd.get("c").is_some());

        // Keys containing dots, nested: {'ema': {'0.999': {...}}}.
        let mut w2 = W::default();
        w2.proto().op(b"}").str("ema").op(b"}").str("0.999").op(b"}");
        w2.str("d").tensor("FloatStorage", "0", 2, 1, &[], &[]).op(b"sss.");
        let z2 = zip_of(&[("x/data.pkl", &w2.0), ("x/data/0", &f32_bytes(&[1., 2.]))]);
        let (sd, _) = load_bytes(&z2, Some("ema.0.999")).unwrap();
        assert_eq!(sd.get("d").unwrap().data, vec![2.]);
        let e = format!("{:#}", load_bytes(&z2, Some("ema.0.99")).unwrap_err());
        assert!(e.contains("'0.99' not found under 'ema'") && e.contains("'0.999'"), "{e}");

        let e = format!("{:#}", load_bytes(&z, Some("nope")).unwrap_err());
        assert!(e.contains("'nope' not found") && e.contains("'model'") && e.contains("'step' (int)"), "{e}");
        let e = format!("{:#}", load_bytes(&z, Some("nested.x")).unwrap_err());
        assert!(e.contains("under 'nested'") && e.contains("'inner'"), "{e}");
        let e = format!("{:#}", load_bytes(&z, Some("step")).unwrap_err());
        assert!(e.contains("int"), "{e}");
        let e = format!("{:#}", load_bytes(&z, Some("step.x")).unwrap_err());
        assert!(e.contains("not a dict"), "{e}");
    }

    #[test]
    fn no_state_dict_error_lists_keys() {
        let mut w = W::default();
        w.proto().op(b"}(").str("optimizer").op(b"}").str("epoch").int(1).op(b"u.");
        let z = zip_of(&[("x/data.pkl", &w.0)]);
        let e = format!("{:#}", load_bytes(&z, None).unwrap_err());
        assert!(
            e.contains("no state dict found")
                && e.contains("'optimizer' (dict, 0 entries)")
                && e.contains("'epoch' (int)"),
            "{e}"
        );
        // A non-dict root.
        let z = zip_of(&[("x/data.pkl", b"\x80\x02]q\x00.")]);
        let e = format!("{:#}", load_bytes(&z, None).unwrap_err());
        assert!(e.contains("top-level object is a list"), "{e}");
    }

    #[test]
    fn nested_candidate_one_level_down() {
        let mut w = W::default();
        w.proto().op(b"}(").str("model").op(b"}").str("state_dict").op(b"}");
        w.str("k").tensor("HalfStorage", "0", 1, 0, &[1], &[1]).op(b"ss").str("epoch").int(1).op(b"u.");
        let z = zip_of(&[("x/data.pkl", &w.0), ("x/data/0", &half::f16::from_f32(-1.5).to_bits().to_le_bytes())]);
        let (sd, how) = load_bytes(&z, None).unwrap();
        assert_eq!(sd.get("k").unwrap().data, vec![-1.5]);
        assert!(how.contains("'model.state_dict'"), "{how}");
    }

    #[test]
    fn archive_level_errors() {
        let e = format!("{:#}", load_bytes(b"", None).unwrap_err());
        assert!(e.contains("empty file") && e.contains("not a torch.save zip archive"), "{e}");
        let e = format!("{:#}", load_bytes(b"\x80\x02\x8a\x0alegacy", None).unwrap_err());
        assert!(e.contains("not a torch.save zip archive"), "{e}");
        let e = format!("{:#}", load_bytes(b"hello world", None).unwrap_err());
        assert!(e.contains("not a torch.save zip archive"), "{e}");
        let z = zip_of(&[("a/other.txt", b"x")]);
        assert!(format!("{:#}", load_bytes(&z, None).unwrap_err()).contains("no data.pkl"));
        let z = zip_of(&[("a/data.pkl", b"\x80\x02}."), ("a/byteorder", b"big")]);
        assert!(format!("{:#}", load_bytes(&z, None).unwrap_err()).contains("big-endian"));
        let z = zip_of(&[("a/data.pkl", b"\x80\x02}."), ("a/code/__torch__.py", b""), ("a/constants.pkl", b"")]);
        assert!(format!("{:#}", load_bytes(&z, None).unwrap_err()).contains("TorchScript"));
        // Storage shorter than declared.
        let mut w = W::default();
        w.proto().op(b"}").str("w").tensor("FloatStorage", "0", 4, 0, &[4], &[1]).op(b"s.");
        let z = zip_of(&[("a/data.pkl", &w.0), ("a/data/0", &f32_bytes(&[1., 2.]))]);
        assert!(format!("{:#}", load_bytes(&z, None).unwrap_err()).contains("declares"));
        // Missing storage.
        let z = zip_of(&[("a/data.pkl", &w.0)]);
        assert!(format!("{:#}", load_bytes(&z, None).unwrap_err()).contains("missing"));
        // View beyond the declared storage size.
        let mut w = W::default();
        w.proto().op(b"}").str("w").tensor("FloatStorage", "0", 2, 1, &[2], &[1]).op(b"s.");
        let z = zip_of(&[("a/data.pkl", &w.0), ("a/data/0", &f32_bytes(&[1., 2.]))]);
        assert!(format!("{:#}", load_bytes(&z, None).unwrap_err()).contains("'w'"));
    }

    #[test]
    fn rebuild_tensor_v3_on_untyped_storage() {
        // A float32 tensor written the torch >= 2.1 way for "new" dtypes: the storage size
        // is in bytes, offset/size/stride in elements.
        let mut w = W::default();
        w.proto().op(b"}").str("w");
        w.global("torch._utils", "_rebuild_tensor_v3").op(b"(");
        w.op(b"(").str("storage").global("torch.storage", "UntypedStorage");
        w.str("0").str("cuda:1").int(12).op(b"tQ");
        w.int(1).ints(&[2]).ints(&[1]).op(&[0x89]);
        w.global("collections", "OrderedDict").op(b")R");
        w.global("torch", "float32").op(b"tRs.");
        let z = zip_of(&[("a/data.pkl", &w.0), ("a/data/0", &f32_bytes(&[1., 2., 3.]))]);
        let (sd, _) = load_bytes(&z, None).unwrap();
        assert_eq!(sd.get("w").unwrap().data, vec![2., 3.]);
        // One element too far: 12 bytes hold only 3 floats.
        let bad = String::from_utf8_lossy(&w.0).into_owned();
        let bad = bad.replace("J\x01\x00\x00\x00", "J\x02\x00\x00\x00").into_bytes();
        let z = zip_of(&[("a/data.pkl", &bad), ("a/data/0", &f32_bytes(&[1., 2., 3.]))]);
        assert!(load_bytes(&z, None).is_err());
    }

    /// Mutates the real fixture's data.pkl and re-zips it with intact CRCs, so the mutations
    /// reach the unpickler, the state-dict selection and the tensor gathering (a mutated
    /// pickle inside the original zip would only exercise the CRC check).
    #[test]
    fn fuzz_mutated_pickle_inside_valid_archive() {
        let good = std::fs::read(data_dir().join("state_dict.pt")).unwrap();
        let mut zip = zip::ZipArchive::new(Cursor::new(&good[..])).unwrap();
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            entries.push((f.name().to_owned(), b));
        }
        let pkl_idx = entries.iter().position(|(n, _)| n.ends_with("/data.pkl")).unwrap();
        let pkl = entries[pkl_idx].1.clone();
        let run = |pkl: Vec<u8>| {
            let mut e = entries.clone();
            e[pkl_idx].1 = pkl;
            let refs: Vec<(&str, &[u8])> = e.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
            load_bytes(&zip_of(&refs), None).is_ok()
        };
        assert!(run(pkl.clone()));
        for n in 0..pkl.len() {
            assert!(!run(pkl[..n].to_vec()), "prefix {n} loaded");
        }
        let mut rng = Rng(7);
        for _ in 0..fuzz_iters(3000) {
            let mut b = pkl.clone();
            for _ in 0..1 + rng.next() % 3 {
                let i = (rng.next() % b.len() as u64) as usize;
                // Small values are the interesting ones for sizes, strides and offsets.
                b[i] = if rng.next() & 1 == 0 { rng.next() as u8 } else { (rng.next() % 16) as u8 };
            }
            let _ = run(b);
        }
    }

    #[test]
    fn aliasing_cannot_blow_up_memory() {
        // One 4096-float tensor listed under 100k names would need 1.6 GB of output.
        let mut w = W::default();
        w.proto().op(b"}(").str("k0");
        w.tensor("FloatStorage", "0", 4096, 0, &[4096], &[1]);
        w.op(b"r").op(&1_000_000u32.to_le_bytes());
        for i in 1..100_000 {
            w.str(&format!("k{i}")).op(b"j").op(&1_000_000u32.to_le_bytes());
        }
        w.op(b"u.");
        let z = zip_of(&[("a/data.pkl", &w.0), ("a/data/0", &f32_bytes(&[0.0; 4096]))]);
        let e = format!("{:#}", load_bytes(&z, None).unwrap_err());
        assert!(e.contains("aliased"), "{e}");
    }

    #[test]
    fn hostile_pickle_in_zip() {
        let mut w = W::default();
        w.proto().global("os", "system").str("echo pwned").op(&[0x85]).op(b"R.");
        let z = zip_of(&[("a/data.pkl", &w.0), ("a/byteorder", b"little")]);
        let e = format!("{:#}", load_bytes(&z, None).unwrap_err());
        assert!(e.contains("disallowed global 'os.system'"), "{e}");
    }

    #[test]
    fn fuzz_checkpoint_truncations_and_flips() {
        let good = sample_checkpoint();
        assert!(load_bytes(&good, None).is_ok());
        for n in 0..good.len() {
            let _ = load_bytes(&good[..n], None);
        }
        let mut rng = Rng(12345);
        for _ in 0..fuzz_iters(3000) {
            let mut b = good.clone();
            for _ in 0..1 + rng.next() % 3 {
                let i = (rng.next() % b.len() as u64) as usize;
                b[i] ^= 1 << (rng.next() % 8);
            }
            let _ = load_bytes(&b, None);
        }
    }

    /// Fixture written by tests/data/load/make.py (real torch.save output when torch was available).
    #[test]
    fn fixture_state_dict() {
        let (sd, how) = super::super::load_torch(&data_dir().join("state_dict.pt"), None).unwrap();
        assert_eq!(how, "top-level state dict");
        let ramp = |n: usize, off: f32| (0..n).map(|i| i as f32 + off).collect::<Vec<_>>();
        assert_eq!(sd.get("lin.weight").unwrap(), &Tensor { shape: vec![3, 4], data: ramp(12, 0.) });
        assert_eq!(sd.get("lin.bias").unwrap(), &Tensor { shape: vec![3], data: vec![0.5, -1.0, 2.0] });
        let half = sd.get("half").unwrap();
        assert_eq!(half.shape, vec![2, 3]);
        assert_eq!(half.data, vec![0.0, 0.5, -1.0, 1.5, 2.0, -2.5]);
        let bf = sd.get("bf16").unwrap();
        assert_eq!(bf.data, vec![1.0, -2.0, 0.25, 3.0]);
        let dbl = sd.get("double").unwrap();
        assert_eq!((dbl.shape.as_slice(), dbl.data.as_slice()), (&[2usize][..], &[0.1f64 as f32, 1e10f64 as f32][..]));
        // Transposed 3x4 ramp.
        let t = sd.get("transposed").unwrap();
        assert_eq!(t.shape, vec![4, 3]);
        assert_eq!(t.data, vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        // Row 1..3 slice of a 4x3 ramp shares the storage at offset 3.
        assert_eq!(sd.get("offset").unwrap(), &Tensor { shape: vec![2, 3], data: ramp(6, 3.) });
        assert_eq!(sd.get("scalar").unwrap(), &Tensor { shape: vec![], data: vec![7.25] });
        assert_eq!(sd.get("empty").unwrap(), &Tensor { shape: vec![0, 5], data: vec![] });
        assert_eq!(sd.get("cuda").unwrap(), &Tensor { shape: vec![2], data: vec![42.0, -42.0] });
        assert_eq!(sd.get("param").unwrap(), &Tensor { shape: vec![2], data: vec![1.0, 2.0] });
        assert!(sd.get("bn.num_batches_tracked").is_none());
        assert!(sd.get("mask").is_none());
    }

    #[test]
    fn fixture_ema_checkpoint() {
        let path = data_dir().join("checkpoint_ema.pt");
        let (sd, how) = super::super::load_torch(&path, None).unwrap();
        assert!(how.starts_with("state dict under top-level key 'ema' (other keys: "), "{how}");
        assert!(how.contains("'model'") && how.contains("'step'"), "{how}");
        assert_eq!(sd.get("w").unwrap().data, vec![2.0, 2.0]);
        let (sd, _) = super::super::load_torch(&path, Some("model")).unwrap();
        assert_eq!(sd.get("w").unwrap().data, vec![1.0, 1.0]);
        // 'u16' and 'f8' (written with `_rebuild_tensor_v3` on an untyped storage) are skipped.
        assert_eq!(sd.len(), 1);
        assert!(super::super::load_torch(&path, Some("step")).is_err());
        // 'meta' holds bytes, torch.Size, torch.device, a dtype, a big int, a set: all parse,
        // but it is not a state dict.
        let e = super::super::load_torch(&path, Some("meta")).unwrap_err();
        assert!(format!("{e:#}").contains("no float tensors"), "{e:#}");
    }

    #[test]
    fn fixture_hostile() {
        let marker = Path::new("/tmp/ddpm_load_test_pwned");
        let e = super::super::load_torch(&data_dir().join("hostile_os_system.pt"), None).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("disallowed global 'os.system'"), "{e}");
        assert!(!marker.exists(), "the hostile payload ran!");
    }

    #[test]
    fn fixture_not_zip() {
        let e = super::super::load_torch(&data_dir().join("legacy_raw_pickle.pt"), None).unwrap_err();
        assert!(format!("{e:#}").contains("not a torch.save zip archive"), "{e:#}");
    }

    #[test]
    fn fixture_truncations_never_panic() {
        let good = std::fs::read(data_dir().join("state_dict.pt")).unwrap();
        // Every prefix of the real fixture (step 1 near the end where the directory lives).
        for n in 0..good.len() {
            let _ = load_bytes(&good[..n], None);
        }
        let mut rng = Rng(0xdead_beef);
        for _ in 0..fuzz_iters(2000) {
            let mut b = good.clone();
            let i = (rng.next() % b.len() as u64) as usize;
            b[i] = rng.next() as u8;
            let _ = load_bytes(&b, None);
        }
    }
}
