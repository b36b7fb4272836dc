//! Parsing of the GGUF header, metadata and tensor infos from bytes, with every length checked.
//!
//! Layout (GGUF v2/v3, little-endian): magic `GGUF`, `version: u32`, `tensor_count: u64`,
//! `kv_count: u64`; `kv_count` × (`key: string`, `type: u32`, value); `tensor_count` ×
//! (`name: string`, `n_dims: u32`, `dims: [u64; n_dims]`, `type: u32`, `offset: u64`); padding to
//! `general.alignment` (default 32); the data section. A string is `len: u64` then UTF-8 bytes; an
//! array is `elem_type: u32`, `len: u64`, then the elements.

use std::collections::HashMap;
use std::path::Path;

use super::value::{GgufValue, type_id, type_name};
use crate::model::quant::GgmlType;
use crate::{Error, Result};

/// Most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted in metadata.
const MAX_ARRAY_DEPTH: usize = 3;

/// One tensor's entry in the GGUF tensor-info table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the innermost (contiguous) one.
    pub dims: Vec<u64>,
    /// Element type.
    pub dtype: GgmlType,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in PyTorch order (GGUF dims reversed): `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Size of the data in bytes (checked when the file is opened).
    pub fn n_bytes(&self) -> u64 {
        self.dtype.bytes_for(self.n_elements()).unwrap_or(0)
    }
}

/// Everything before the data section.
pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, message: String) -> Error {
        Error::format(self.path, message)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated GGUF: {} needs {n} bytes at offset {} but the file has {} bytes",
                what(),
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "{} claims {len} bytes at offset {} but only {} remain (truncated or corrupt)",
                what(),
                self.pos,
                self.remaining()
            )));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format!("{} is not valid UTF-8", what())))
    }

    fn value(&mut self, ty: u32, depth: usize, what: &dyn Fn() -> String) -> Result<GgufValue> {
        Ok(match ty {
            type_id::U8 => GgufValue::U8(self.array::<1>(what)?[0]),
            type_id::I8 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            type_id::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            type_id::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            type_id::U32 => GgufValue::U32(self.u32(what)?),
            type_id::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            type_id::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            type_id::BOOL => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("{}: bool byte {b} is neither 0 nor 1", what()))),
            },
            type_id::STRING => GgufValue::String(self.string(what)?),
            type_id::U64 => GgufValue::U64(self.u64(what)?),
            type_id::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            type_id::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            type_id::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("{}: arrays nested deeper than {MAX_ARRAY_DEPTH}", what())));
                }
                let elem_type = self.u32(&|| format!("element type of {}", what()))?;
                let len = self.u64(&|| format!("length of {}", what()))?;
                let min_size = match elem_type {
                    type_id::U8 | type_id::I8 | type_id::BOOL => 1,
                    type_id::U16 | type_id::I16 => 2,
                    type_id::U32 | type_id::I32 | type_id::F32 => 4,
                    type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
                    type_id::ARRAY => 12,
                    other => {
                        return Err(self.err(format!("{}: unknown array element type {other}", what())));
                    }
                };
                // Guard the allocation: each element needs at least `min_size` bytes of file.
                if len > (self.remaining() / min_size) as u64 {
                    return Err(self.err(format!(
                        "{}: array of {len} {} elements cannot fit in the {} bytes left (truncated or corrupt)",
                        what(),
                        type_name(elem_type),
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(len as usize);
                for i in 0..len {
                    items.push(self.value(elem_type, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                GgufValue::Array { elem_type, items }
            }
            other => return Err(self.err(format!("{}: unknown value type {other}", what()))),
        })
    }
}

/// Parse the header, metadata and tensor infos of a GGUF file held in `buf`, checking that every
/// tensor lies inside the data section.
pub(crate) fn parse(buf: &[u8], path: &Path) -> Result<Parsed> {
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.array::<4>(&|| "magic".into())?;
    if &magic != b"GGUF" {
        return Err(c.err(format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\"")));
    }
    let version = c.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        1 => return Err(Error::unsupported(path, "GGUF version", "v1 (re-convert with a recent llama.cpp)")),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(Error::unsupported(path, "GGUF byte order", "big-endian files are not supported"));
        }
        v => return Err(Error::unsupported(path, "GGUF version", format!("{v} (supported: 2, 3)"))),
    }
    let tensor_count = c.u64(&|| "tensor count".into())?;
    let kv_count = c.u64(&|| "metadata count".into())?;
    // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info 8 + 4 + 4 + 8.
    if kv_count > (c.remaining() / 13) as u64 {
        return Err(c.err(format!(
            "metadata count {kv_count} cannot fit in the {} bytes after the header (truncated or corrupt)",
            c.remaining()
        )));
    }
    if tensor_count > (c.remaining() / 24) as u64 {
        return Err(c.err(format!(
            "tensor count {tensor_count} cannot fit in the {} bytes after the header (truncated or corrupt)",
            c.remaining()
        )));
    }

    let mut metadata = Vec::with_capacity(kv_count as usize);
    let mut seen = HashMap::new();
    for i in 0..kv_count {
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        let ty = c.u32(&|| format!("type of metadata `{key}`"))?;
        let value = c.value(ty, 0, &|| format!("metadata `{key}`"))?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(c.err(format!("metadata key `{key}` appears twice")));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => 32,
        Some((_, v)) => match v.as_int() {
            Some(a) if a > 0 && a <= 1 << 30 && (a as u64).is_power_of_two() => a as u64,
            _ => return Err(c.err(format!("general.alignment = {v} is not a positive power of two"))),
        },
    };

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names = HashMap::new();
    for i in 0..tensor_count {
        let name = c.string(&|| format!("name of tensor {i}"))?;
        let n_dims = c.u32(&|| format!("dimension count of tensor `{name}`"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(c.err(format!("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
        }
        let type_raw = c.u32(&|| format!("type of tensor `{name}`"))?;
        let dtype = GgmlType::from_id(type_raw)
            .ok_or_else(|| c.err(format!("tensor `{name}` has unknown tensor type {type_raw}")))?;
        let offset = c.u64(&|| format!("offset of tensor `{name}`"))?;
        if names.insert(name.clone(), i).is_some() {
            return Err(c.err(format!("tensor `{name}` appears twice")));
        }
        tensors.push(TensorInfo { name, dims, dtype, offset });
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    if data_offset > buf.len() as u64 && !tensors.is_empty() {
        return Err(c.err(format!(
            "truncated GGUF: data section would start at byte {data_offset} but the file has {} bytes",
            buf.len()
        )));
    }
    let data_len = (buf.len() as u64).saturating_sub(data_offset);
    for t in &tensors {
        check_tensor(t, alignment, data_len, &c)?;
    }
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset: data_offset.min(buf.len() as u64) as usize,
    })
}

fn check_tensor(t: &TensorInfo, alignment: u64, data_len: u64, c: &Cursor) -> Result<()> {
    let name = &t.name;
    let mut n: u64 = 1;
    for &d in &t.dims {
        n = n
            .checked_mul(d)
            .ok_or_else(|| c.err(format!("tensor `{name}`: dimensions {:?} overflow", t.dims)))?;
    }
    let (block, _) = t.dtype.block_layout();
    if t.dims.first().is_some_and(|&d0| d0 % block as u64 != 0) {
        return Err(c.err(format!(
            "tensor `{name}`: first dimension {} is not a multiple of the {:?} block size {block}",
            t.dims[0], t.dtype
        )));
    }
    let size = t
        .dtype
        .bytes_for(n)
        .ok_or_else(|| c.err(format!("tensor `{name}`: {n} elements do not fit {:?} blocks", t.dtype)))?;
    if !t.offset.is_multiple_of(alignment) {
        return Err(c.err(format!(
            "tensor `{name}`: offset {} is not a multiple of the alignment {alignment}",
            t.offset
        )));
    }
    match t.offset.checked_add(size) {
        Some(end) if end <= data_len => Ok(()),
        _ => Err(c.err(format!(
            "tensor `{name}`: bytes {}..{} lie outside the {data_len}-byte data section (truncated or corrupt)",
            t.offset,
            t.offset as u128 + size as u128
        ))),
    }
}
