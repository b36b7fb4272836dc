//! Hugging Face PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors` with PEFT's
//! tensor names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, …). Loading checks
//! every tensor against the config and the model and names the file and tensor of any mismatch; saving
//! writes each file atomically (temporary file, fsync, rename).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::gpu::Gpu;
use crate::lora::adapter::{Adapter, HostPair};
use crate::lora::config::{LoraConfig, Target};
use crate::model::DecoderConfig;
use crate::{Error, Result};

/// PEFT's config file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's weights file name (safetensors).
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// PEFT's name of factor `ab` ("A" or "B") of `target` in `layer`.
pub fn peft_tensor_name(layer: usize, target: Target, ab: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{ab}.weight",
        target.parent(),
        target.peft_name()
    )
}

/// Splits a PEFT tensor name into (layer, target, 'A' | 'B').
fn parse_tensor_name(name: &str) -> Option<(usize, Target, char)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, rest) = rest.split_once(".lora_")?;
    let target = Target::parse(module).filter(|t| module.contains('.') && module.starts_with(t.parent()))?;
    let ab = match rest {
        "A.weight" => 'A',
        "B.weight" => 'B',
        _ => return None,
    };
    Some((layer, target, ab))
}

/// A and B of one (layer, target) as read so far.
type FoundPair = (Option<Vec<f32>>, Option<Vec<f32>>);

fn to_f32(file: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => {
            return Err(Error::format(
                file,
                format!("tensor `{name}` has dtype {other:?}; LoRA weights must be F32, F16 or BF16"),
            ));
        }
    })
}

impl Adapter {
    /// Loads a PEFT adapter folder for `model` onto `gpu`. Wrong ranks or shapes, unknown or missing
    /// tensors, layers the model lacks and unsupported PEFT features are errors naming the file and
    /// the tensor or field.
    pub fn load_peft(gpu: Arc<Gpu>, dir: &Path, model: &DecoderConfig) -> Result<Adapter> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.exists() {
            return Err(Error::io(
                &config_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no PEFT adapter config here"),
            ));
        }
        let config = LoraConfig::from_peft_file(&config_path)?;
        Ok(Self::load_peft_keeping(gpu, dir, config, model, &[])?.0)
    }

    /// [`Adapter::load_peft`] with `config` already read, returning besides the adapter the tensors named
    /// in `keep` (e.g. a sequence-classification adapter's `base_model.model.score.weight`, saved by
    /// PEFT's `modules_to_save`) instead of refusing them, in f32 with their shapes.
    pub(crate) fn load_peft_keeping(
        gpu: Arc<Gpu>,
        dir: &Path,
        config: LoraConfig,
        model: &DecoderConfig,
        keep: &[&str],
    ) -> Result<(Adapter, Vec<(String, crate::model::weights::HostTensor)>)> {
        let path = dir.join(WEIGHTS_FILE);
        if !path.exists() && dir.join("adapter_model.bin").exists() {
            return Err(Error::unsupported(
                dir,
                "adapter weights format",
                "adapter_model.bin (pickle); save the adapter with safe_serialization=True",
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(&path, format!("not a safetensors file: {e}")))?;
        let r = config.r;
        let mut found: HashMap<(usize, Target), FoundPair> = HashMap::new();
        let mut kept = Vec::new();
        for (name, view) in st.iter() {
            if keep.contains(&name) {
                let data = to_f32(&path, name, view.dtype(), view.data())?;
                kept.push((
                    name.to_string(),
                    crate::model::weights::HostTensor { data, shape: view.shape().to_vec() },
                ));
                continue;
            }
            let Some((layer, target, ab)) = parse_tensor_name(name) else {
                return Err(Error::format(
                    &path,
                    format!(
                        "unexpected tensor `{name}`: babelrl reads PEFT LoRA tensors named \
                         base_model.model.model.layers.N.<self_attn|mlp>.<module>.lora_<A|B>.weight"
                    ),
                ));
            };
            if layer >= model.layers {
                return Err(Error::format(
                    &path,
                    format!("tensor `{name}`: layer {layer}, but the model has {} layers", model.layers),
                ));
            }
            if !config.targets_module(target) {
                return Err(Error::format(
                    &path,
                    format!(
                        "tensor `{name}`: {} is not among the target_modules of {CONFIG_FILE}",
                        target.peft_name()
                    ),
                ));
            }
            let (out, inp) = target.shape(model);
            let expected = if ab == 'A' { [r, inp] } else { [out, r] };
            if view.shape() != expected {
                return Err(Error::format(
                    &path,
                    format!(
                        "tensor `{name}` has shape {:?}; rank {r} (from {CONFIG_FILE}) on this model's \
                         {} ({out} × {inp}) needs {expected:?}",
                        view.shape(),
                        target.peft_name()
                    ),
                ));
            }
            let data = to_f32(&path, name, view.dtype(), view.data())?;
            let entry = found.entry((layer, target)).or_default();
            if ab == 'A' { entry.0 = Some(data) } else { entry.1 = Some(data) }
        }
        let mut pairs = Vec::new();
        for layer in 0..model.layers {
            for &target in &config.targets {
                let missing = |ab| {
                    Error::format(
                        &path,
                        format!("tensor `{}` is missing", peft_tensor_name(layer, target, ab)),
                    )
                };
                let (a, b) = found.remove(&(layer, target)).unwrap_or((None, None));
                let a = a.ok_or_else(|| missing('A'))?;
                let b = b.ok_or_else(|| missing('B'))?;
                pairs.push(HostPair { layer, target, a, b });
            }
        }
        Ok((Adapter::from_host(gpu, config, model, &pairs)?, kept))
    }

    /// Writes the adapter as a PEFT folder (created if needed): `adapter_config.json` and
    /// `adapter_model.safetensors` (f32), each through a temporary file that is synced and renamed
    /// into place, so a crash leaves either the old file or the new one.
    pub fn save_peft(&self, dir: &Path) -> Result<()> {
        self.save_peft_with(dir, &[], |_| {})
    }

    /// [`Adapter::save_peft`] with more tensors in the weights file (`(name, shape, data)`, e.g. a
    /// sequence-classification adapter's `base_model.model.score.weight`) and the config edited by
    /// `patch` before it is written (e.g. `task_type`, `modules_to_save`).
    pub fn save_peft_with(
        &self,
        dir: &Path,
        extra: &[(&str, Vec<usize>, &[f32])],
        patch: impl FnOnce(&mut serde_json::Value),
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let host = self.to_host()?;
        let model = self.model_config();
        let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for p in &host {
            let (out, inp) = p.target.shape(model);
            let r = self.config().r;
            named.push((
                peft_tensor_name(p.layer, p.target, 'A'),
                vec![r, inp],
                bytemuck::cast_slice(&p.a).to_vec(),
            ));
            named.push((
                peft_tensor_name(p.layer, p.target, 'B'),
                vec![out, r],
                bytemuck::cast_slice(&p.b).to_vec(),
            ));
        }
        for (name, shape, data) in extra {
            named.push((name.to_string(), shape.clone(), bytemuck::cast_slice(data).to_vec()));
        }
        let views = named
            .iter()
            .map(|(n, shape, data)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (n.as_str(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::format(dir.join(WEIGHTS_FILE), format!("serializing: {e}")))?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::format(dir.join(WEIGHTS_FILE), format!("serializing: {e}")))?;
        let mut config = self.config().to_peft_json();
        patch(&mut config);
        let json = serde_json::to_string_pretty(&config).expect("a JSON value prints");
        write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
        write_atomic(&dir.join(CONFIG_FILE), format!("{json}\n").as_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file beside it (named by process and call, so two
/// writers never share one): written, fsynced, renamed over `path`, and the folder fsynced, so readers
/// see the old contents or the new, never a torn file. The temporary file is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(format!(".tmp-{}-{call}", std::process::id()));
    fn io(p: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |e| Error::io(p, e)
    }
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Persist the rename; opening a folder for fsync is not possible everywhere (Windows): best effort.
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_never_share_a_temporary_file_and_leave_none_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || write_atomic(&path, &vec![i; 1 << 16]))
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        let got = std::fs::read(&path).unwrap();
        assert!(got.len() == 1 << 16 && got.iter().all(|&b| b == got[0]), "a torn or mixed file");
        // A rename that fails (the target is a folder) is an error naming it, and the temporary goes.
        let folder = dir.path().join("sub");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("x"), b"x").unwrap();
        assert!(write_atomic(&folder, b"data").is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "only f.bin and sub/ remain: {left:?}");
    }

    #[test]
    fn tensor_names_parse_back() {
        for t in Target::ALL {
            for ab in ['A', 'B'] {
                assert_eq!(parse_tensor_name(&peft_tensor_name(3, t, ab)), Some((3, t, ab)));
            }
        }
        for bad in [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
            "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
            "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
            "base_model.model.lm_head.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight",
        ] {
            assert_eq!(parse_tensor_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
