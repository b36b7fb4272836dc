//! Where weights come from: Hugging Face safetensors (one file or shards; f32, f16, bf16) or a GGUF
//! file (dequantized on load). Tensors are asked for by their Hugging Face names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::gpu::PackedHost;
use crate::model::gguf::Gguf;
use crate::model::quant::pack_blocks;
use crate::{Error, Result};

/// A tensor on the host: f32 values and a row-major shape.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

/// The rows of several matrices stacked into one (fused q|k|v or gate|up weights and their biases).
pub fn concat_rows(parts: &[&HostTensor]) -> Vec<f32> {
    parts.iter().flat_map(|t| t.data.iter().copied()).collect()
}

/// Memory-mapped safetensors shards of one model.
pub struct SafetensorsFolder {
    dir: PathBuf,
    shards: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name → shard index.
    index: HashMap<String, usize>,
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only; the engine never writes model files while they are mapped.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

impl SafetensorsFolder {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`, in `dir`.
    pub fn open(dir: &Path) -> Result<SafetensorsFolder> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(&index_path, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(&index_path, "no `weight_map` object"))?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            names.iter().map(|n| dir.join(n)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(Error::format(
                    dir,
                    "no model.safetensors or model.safetensors.index.json in this folder",
                ));
            }
            vec![single]
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let map = map_file(&path)?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                Error::format(&path, format!("not a valid safetensors file (truncated or corrupt?): {e}"))
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            drop(st);
            shards.push((path, map));
        }
        Ok(SafetensorsFolder { dir: dir.to_path_buf(), shards, index })
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A tensor converted to f32, or `None` if absent.
    pub fn get(&self, name: &str) -> Result<Option<HostTensor>> {
        let Some(&i) = self.index.get(name) else { return Ok(None) };
        let (path, map) = &self.shards[i];
        let st = SafeTensors::deserialize(map).map_err(|e| Error::format(path, e.to_string()))?;
        let view = st.tensor(name).map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => {
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Dtype::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => {
                bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => {
                return Err(Error::unsupported(
                    path,
                    "tensor dtype",
                    format!("`{name}` is {other:?}; babelrl loads f32, f16 and bf16 safetensors"),
                ));
            }
        };
        Ok(Some(HostTensor { data, shape: view.shape().to_vec() }))
    }

    /// The shard file that holds tensor `name`, if any does.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.shards[i].0.as_path())
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A source of decoder weights by Hugging Face name.
pub enum WeightSource {
    Safetensors(SafetensorsFolder),
    Gguf { file: Gguf, n_head: usize, n_kv_head: usize, permuted_qk: bool },
}

/// The GGUF tensor name for a Hugging Face decoder tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let direct = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

impl WeightSource {
    /// The file or folder the weights come from.
    pub fn path(&self) -> &Path {
        match self {
            WeightSource::Safetensors(s) => s.dir(),
            WeightSource::Gguf { file, .. } => file.path(),
        }
    }

    /// A tensor by Hugging Face name, in Hugging Face layout, or `None` if the source lacks it.
    pub fn get(&self, name: &str) -> Result<Option<HostTensor>> {
        match self {
            WeightSource::Safetensors(s) => s.get(name),
            WeightSource::Gguf { file, n_head, n_kv_head, permuted_qk } => {
                let Some(g) = gguf_name(name) else { return Ok(None) };
                if file.tensor_info(&g).is_err() {
                    return Ok(None);
                }
                let (mut data, shape) = file.tensor_f32(&g)?;
                // llama.cpp's converter permutes q and k rows for interleaved RoPE; undo it so the
                // rotate-half kernel (Hugging Face layout) applies.
                if *permuted_qk && (g.ends_with("attn_q.weight") || g.ends_with("attn_k.weight")) {
                    let heads = if g.ends_with("attn_q.weight") { *n_head } else { *n_kv_head };
                    let &[rows, cols] = shape.as_slice() else {
                        return Err(Error::format(
                            file.path(),
                            format!("tensor `{g}` has shape {shape:?}; a q/k projection is a matrix"),
                        ));
                    };
                    data = crate::model::gguf::unpermute_llama_qk(&data, heads, rows, cols)
                        .map_err(|e| Error::format(file.path(), format!("tensor `{g}`: {e}")))?;
                }
                Ok(Some(HostTensor { data, shape }))
            }
        }
    }

    /// A `shape` = [rows, cols] matrix as packed blocks ([`crate::model::quant::pack_blocks`], q/k rows
    /// unpermuted as [`WeightSource::get`] does): `None` unless the source is a GGUF file whose tensor
    /// is Q4_0, Q4_1 or Q8_0. Errors like [`WeightSource::require`] when the tensor is missing or has
    /// another shape.
    pub fn get_packed(&self, name: &str, shape: [usize; 2]) -> Result<Option<PackedHost>> {
        let WeightSource::Gguf { file, n_head, n_kv_head, permuted_qk } = self else { return Ok(None) };
        let g = gguf_name(name).ok_or_else(|| Error::MissingTensor {
            path: file.path().to_path_buf(),
            name: name.to_string(),
        })?;
        let info = file.tensor_info(&g)?;
        if info.shape() != shape {
            return Err(Error::TensorShape {
                path: file.path().to_path_buf(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape(),
            });
        }
        let [rows, cols] = shape;
        let fail = |m: String| Error::format(file.path(), format!("tensor `{g}`: {m}"));
        let Some(mut w) = pack_blocks(info.dtype, file.tensor_bytes(&g)?, rows, cols).map_err(fail)? else {
            return Ok(None);
        };
        if *permuted_qk && (g.ends_with("attn_q.weight") || g.ends_with("attn_k.weight")) {
            let heads = if g.ends_with("attn_q.weight") { *n_head } else { *n_kv_head };
            let per_row = cols / crate::gpu::PACKED_BLOCK;
            let unpermute = |data: &[u32], words: usize| {
                crate::model::gguf::unpermute_llama_qk(data, heads, rows, words)
                    .map_err(|e| Error::format(file.path(), format!("tensor `{g}`: {e}")))
            };
            w.quants = unpermute(&w.quants, per_row * w.format.quant_words())?;
            w.scales = unpermute(&w.scales, per_row)?;
        }
        Ok(Some(w))
    }

    /// A tensor that must exist, with the expected shape.
    pub fn require(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.get(name)?.ok_or_else(|| Error::MissingTensor {
            path: self.path().to_path_buf(),
            name: name.to_string(),
        })?;
        if t.shape != shape {
            let path = match self {
                WeightSource::Safetensors(s) => s.file_of(name).unwrap_or(s.dir()),
                WeightSource::Gguf { file, .. } => file.path(),
            };
            return Err(Error::TensorShape {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        Ok(t)
    }
}
