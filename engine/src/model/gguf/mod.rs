//! GGUF (v2/v3) model files: a memory-mapped reader for metadata and tensors, with dequantization.
//!
//! ```no_run
//! # fn main() -> babelrl::Result<()> {
//! let g = babelrl::model::gguf::Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let n_layer = g.get_u32(&format!("{}.block_count", g.arch()?))?;
//! let (embed, shape) = g.tensor_f32("token_embd.weight")?; // shape = [vocab, hidden]
//! # Ok(()) }
//! ```

mod reader;
mod value;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::f16;

pub use reader::{MAX_DIMS, TensorInfo};
pub use value::GgufValue;

use crate::model::quant::{GgmlType, dequantize};
use crate::{Error, Result};

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open GGUF file: metadata parsed, tensor data left in the memory map until asked for.
pub struct Gguf {
    path: PathBuf,
    storage: Storage,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: usize,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-map and parse the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not
            // being truncated by another process while it is open.
            Storage::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
        };
        Self::from_storage(path.to_path_buf(), storage)
    }

    /// Parse a GGUF file already in memory; `path` is only used in messages.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(path.into(), Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<Self> {
        let p = reader::parse(storage.bytes(), &path)?;
        let key_index = p.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = p.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Gguf {
            path,
            storage,
            version: p.version,
            metadata: p.metadata,
            key_index,
            tensors: p.tensors,
            tensor_index,
            alignment: p.alignment,
            data_offset: p.data_offset,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value of metadata `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn missing(&self, key: &str) -> Error {
        Error::format(&self.path, format!("metadata key `{key}` is missing"))
    }

    fn wrong(&self, key: &str, v: &GgufValue, expected: &str) -> Error {
        Error::format(&self.path, format!("metadata `{key}` is {} {v}, expected {expected}", v.type_desc()))
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key).ok_or_else(|| self.missing(key))
    }

    /// String value of `key`.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, v, "a string"))
    }

    /// Integer value of `key` (any GGUF integer type) that fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, v, "an integer in u32 range"))
    }

    /// Integer value of `key` (any GGUF integer type) that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, v, "an integer in u64 range"))
    }

    /// Integer value of `key` (any GGUF integer type) that fits in `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| i64::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, v, "an integer in i64 range"))
    }

    /// Float value of `key` (`f32` or `f64`).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_float().map(|f| f as f32).ok_or_else(|| self.wrong(key, v, "a float"))
    }

    /// Boolean value of `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong(key, v, "a bool"))
    }

    /// Array of strings at `key`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| self.wrong(key, v, "an array of strings"))?;
        items.iter().map(|x| x.as_str().ok_or_else(|| self.wrong(key, v, "an array of strings"))).collect()
    }

    /// Array of integers at `key` (any integer element type that fits in `i32`).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        let v = self.require(key)?;
        let bad = || self.wrong(key, v, "an array of integers in i32 range");
        let items = v.as_array().ok_or_else(bad)?;
        items.iter().map(|x| x.as_int().and_then(|i| i32::try_from(i).ok()).ok_or_else(bad)).collect()
    }

    /// Array of floats at `key` (`f32` or `f64` elements).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| self.wrong(key, v, "an array of floats"))?;
        items
            .iter()
            .map(|x| x.as_float().map(|f| f as f32).ok_or_else(|| self.wrong(key, v, "an array of floats")))
            .collect()
    }

    /// Like [`Gguf::get_str`], but `Ok(None)` when the key is absent (still an error on a wrong type).
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|_| self.get_str(key)).transpose()
    }

    /// Like [`Gguf::get_u32`], but `Ok(None)` when the key is absent.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|_| self.get_u32(key)).transpose()
    }

    /// Like [`Gguf::get_f32`], but `Ok(None)` when the key is absent.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key).map(|_| self.get_f32(key)).transpose()
    }

    /// Like [`Gguf::get_bool`], but `Ok(None)` when the key is absent.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|_| self.get_bool(key)).transpose()
    }

    /// The model architecture, `general.architecture` (e.g. `llama`, `qwen2`).
    pub fn arch(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`, or `Error::MissingTensor`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.to_string() })
    }

    /// The raw (possibly quantized) bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor_info(name)?;
        // Bounds were checked when the file was parsed.
        let start = self.data_offset + t.offset as usize;
        Ok(&self.storage.bytes()[start..start + t.n_bytes() as usize])
    }

    /// Tensor `name` dequantized to f32, with its shape in PyTorch order (GGUF dims reversed).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let t = self.tensor_info(name)?;
        let bytes = self.tensor_bytes(name)?;
        if !t.dtype.can_dequantize() {
            return Err(Error::unsupported(
                &self.path,
                "tensor type",
                format!("tensor `{name}` is {:?}, which this engine cannot dequantize", t.dtype),
            ));
        }
        let mut out = vec![0f32; t.n_elements() as usize];
        dequantize(t.dtype, bytes, &mut out)
            .map_err(|m| Error::format(&self.path, format!("tensor `{name}`: {m}")))?;
        Ok((out, t.shape()))
    }

    /// Tensor `name` as IEEE f16 bits (F16 tensors are copied as stored; other types go through f32,
    /// so values beyond the f16 range become ±inf), with its shape in PyTorch order.
    pub fn tensor_f16(&self, name: &str) -> Result<(Vec<u16>, Vec<usize>)> {
        let t = self.tensor_info(name)?;
        if t.dtype == GgmlType::F16 {
            let bytes = self.tensor_bytes(name)?;
            let bits = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
            return Ok((bits, t.shape()));
        }
        let (data, shape) = self.tensor_f32(name)?;
        Ok((data.into_iter().map(|x| f16::from_f32(x).to_bits()).collect(), shape))
    }
}

/// Undo llama.cpp's row permutation of `attn_q.weight` / `attn_k.weight`, giving back the
/// Hugging Face (rotate-half RoPE) row order.
///
/// `data` is a row-major `[rows, cols]` matrix (PyTorch order, as [`Gguf::tensor_f32`] returns it)
/// with `rows = n_head · head_dim`. Pass `n_head = head_count` for Q and `n_head = head_count_kv`
/// for K. llama.cpp's `convert_hf_to_gguf.py` wrote
///
/// ```text
/// permute(w, n_head) = w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
/// ```
///
/// i.e. HF row `h·hd + i·(hd/2) + j` (`i ∈ {0,1}`, `j < hd/2`) became GGUF row `h·hd + 2j + i`.
/// This function applies the inverse: `out[h·hd + i·(hd/2) + j] = data[h·hd + 2j + i]`.
pub fn unpermute_llama_qk<T: Copy>(data: &[T], n_head: usize, rows: usize, cols: usize) -> Result<Vec<T>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || data.len() != rows * cols {
        return Err(Error::Input(format!(
            "unpermute_llama_qk: {} values with rows = {rows}, cols = {cols}, n_head = {n_head} \
             (rows must be a multiple of 2·n_head and values = rows·cols)",
            data.len()
        )));
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let src = h * hd + 2 * j + i;
                out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}
