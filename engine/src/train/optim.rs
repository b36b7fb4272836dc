//! AdamW on the GPU with `torch.optim.AdamW`'s semantics, global-norm clipping as
//! `torch.nn.utils.clip_grad_norm_`, gradient-accumulation scaling, and the optimizer state (step count
//! and moments) that checkpoints save and restore.
//!
//! One [`AdamW::step`] records, into the caller's [`Batch`] (one submit with the backward pass if the
//! caller likes): the sum of squares of every gradient buffer, reduced on the GPU to the global norm and
//! the clip coefficient (nothing is read back), then the update of every parameter. The norm can be read
//! afterwards for metrics ([`AdamW::read_grad_norm`], one 8-byte readback).

use serde::{Deserialize, Serialize};

use crate::gpu::kernels_optim::{AdamwScalars, SUM_PARTIALS_PER_WORKGROUP, sum_squares_groups};
use crate::gpu::{Batch, Gpu, Tensor};
use crate::{Error, Result};

/// The optimizer options of a run file, named and defaulted as transformers' `TrainingArguments`
/// (torch's own AdamW defaults differ: `weight_decay` 0.01 and lr 1e-3; see [`AdamWConfig::torch`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Base learning rate (the schedule multiplies it). TrainingArguments: 5e-5.
    pub learning_rate: f64,
    /// β1 (torch's `betas[0]`). 0.9.
    pub adam_beta1: f64,
    /// β2 (torch's `betas[1]`). 0.999.
    pub adam_beta2: f64,
    /// ε, added outside the square root (torch's `eps`). 1e-8.
    pub adam_epsilon: f64,
    /// Decoupled weight decay (torch's `weight_decay`), for the parameters that take it. 0.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off. 1.0.
    pub max_grad_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-5,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

impl AdamWConfig {
    /// `torch.optim.AdamW()`'s defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01),
    /// without clipping.
    pub fn torch() -> Self {
        Self { learning_rate: 1e-3, weight_decay: 0.01, max_grad_norm: 0.0, ..Self::default() }
    }

    /// Checks the ranges torch checks (and a finite, non-negative clip norm), naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, v: f64, want: &str| {
            Err(Error::Input(format!("optimizer option `{name}` = {v}: must be {want}")))
        };
        if !(self.learning_rate >= 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate", self.learning_rate, "a finite number ≥ 0");
        }
        for (name, v) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(name, v, "in [0, 1)");
            }
        }
        if !(self.adam_epsilon >= 0.0 && self.adam_epsilon.is_finite()) {
            return bad("adam_epsilon", self.adam_epsilon, "a finite number ≥ 0");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", self.weight_decay, "a finite number ≥ 0");
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return bad("max_grad_norm", self.max_grad_norm, "a finite number ≥ 0 (0 turns clipping off)");
        }
        Ok(())
    }

    /// The clip norm, or `None` when clipping is off (`max_grad_norm` 0, as transformers).
    pub fn clip_norm(&self) -> Option<f32> {
        (self.max_grad_norm > 0.0).then_some(self.max_grad_norm as f32)
    }
}

/// One trainable parameter the optimizer keeps moments for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// A name for errors and checkpoints (e.g. PEFT's tensor name).
    pub name: String,
    /// Number of f32 elements.
    pub len: usize,
    /// Whether decoupled weight decay applies (transformers exempts biases and norm weights).
    pub weight_decay: bool,
}

/// The global gradient norm of a step (of the gradients after accumulation scaling, before clipping)
/// and the clip coefficient applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradNorm {
    pub norm: f32,
    pub coef: f32,
}

/// Moments of one parameter, as torch's `state[p]["exp_avg"]` / `["exp_avg_sq"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamState {
    pub name: String,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

/// Everything AdamW needs to continue exactly: the number of steps taken and every moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWState {
    pub step: u64,
    pub params: Vec<ParamState>,
}

/// Metadata key of [`AdamWState::to_safetensors`]: the step count.
const STEP_KEY: &str = "step";
/// Metadata key of [`AdamWState::to_safetensors`]: the parameter names in order (a JSON list).
const PARAMS_KEY: &str = "params";
/// Metadata key and value that mark an optimizer-state file.
const FORMAT_KEY: &str = "format";
const FORMAT: &str = "babelrl-adamw-1";

impl AdamWState {
    /// The state as a safetensors file: f32 tensors `NAME.exp_avg` and `NAME.exp_avg_sq`, the step
    /// count and the parameter order in the metadata. Exact (no text round trip) and compact.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut views = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            for (what, v) in [("exp_avg", &p.exp_avg), ("exp_avg_sq", &p.exp_avg_sq)] {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![v.len()],
                    bytemuck::cast_slice(v),
                )
                .map_err(|e| Error::Input(format!("optimizer state `{}.{what}`: {e}", p.name)))?;
                views.push((format!("{}.{what}", p.name), view));
            }
        }
        let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        let meta = std::collections::HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT.to_string()),
            (STEP_KEY.to_string(), self.step.to_string()),
            (PARAMS_KEY.to_string(), serde_json::to_string(&names).unwrap_or_default()),
        ]);
        safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Input(format!("serialising the optimizer state: {e}")))
    }

    /// Reads a file written by [`AdamWState::to_safetensors`]; `path` names it in errors.
    pub fn from_safetensors(bytes: &[u8], path: &std::path::Path) -> Result<Self> {
        let bad = |message: String| Error::Format { path: path.to_path_buf(), message };
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "not a babelrl optimizer state (metadata `{FORMAT_KEY}` is not `{FORMAT}`)"
            )));
        }
        let step = meta
            .get(STEP_KEY)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad(format!("metadata `{STEP_KEY}` is missing or not a step count")))?;
        let names: Vec<String> = meta
            .get(PARAMS_KEY)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad(format!("metadata `{PARAMS_KEY}` is missing or not a list of names")))?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| bad(format!("tensor `{name}` is missing")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
            }
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        // Each name's moments are copied out of the file: a name listed twice would copy them again (a
        // small file could ask for any amount of memory), and a run never trains one parameter twice.
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(bad(format!("metadata `{PARAMS_KEY}` lists the parameter `{twice}` twice")));
        }
        let mut params = Vec::with_capacity(names.len());
        for name in names {
            let exp_avg = read(&format!("{name}.exp_avg"))?;
            let exp_avg_sq = read(&format!("{name}.exp_avg_sq"))?;
            params.push(ParamState { name, exp_avg, exp_avg_sq });
        }
        Ok(Self { step, params })
    }
}

/// AdamW with its moments on the GPU, for a fixed list of parameters.
pub struct AdamW {
    config: AdamWConfig,
    specs: Vec<ParamSpec>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: u64,
    /// Ping-pong scratch of the norm reduction.
    partial: [Tensor; 2],
    /// (norm, coef) of the last recorded step.
    clip: Tensor,
}

impl AdamW {
    /// An optimizer for `params` with zero moments and step 0.
    pub fn new(gpu: &Gpu, config: AdamWConfig, params: Vec<ParamSpec>) -> Result<Self> {
        config.validate()?;
        if params.is_empty() {
            return Err(Error::Input("AdamW needs at least one trainable parameter".into()));
        }
        let mut exp_avg = Vec::with_capacity(params.len());
        let mut exp_avg_sq = Vec::with_capacity(params.len());
        for p in &params {
            exp_avg.push(gpu.zeros(&format!("{}.exp_avg", p.name), &[p.len])?);
            exp_avg_sq.push(gpu.zeros(&format!("{}.exp_avg_sq", p.name), &[p.len])?);
        }
        let partials: usize =
            params.iter().map(|p| sum_squares_groups(p.len) * SUM_PARTIALS_PER_WORKGROUP).sum();
        let second = sum_squares_groups(partials) * SUM_PARTIALS_PER_WORKGROUP;
        let partial =
            [gpu.zeros("grad norm partials", &[partials])?, gpu.zeros("grad norm partials'", &[second])?];
        let clip = gpu.zeros("grad norm and clip coefficient", &[2])?;
        Ok(Self { config, specs: params, exp_avg, exp_avg_sq, step: 0, partial, clip })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn params(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Bytes of GPU memory the moments and the norm's scratch hold.
    pub fn bytes(&self) -> u64 {
        let all = self.exp_avg.iter().chain(&self.exp_avg_sq).chain(&self.partial).chain([&self.clip]);
        all.map(|t| t.buffer.size()).sum()
    }

    /// Optimizer steps recorded so far (torch's `state[p]["step"]`).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Records one optimizer step at learning rate `lr` (the schedule's, for this step) into `batch`:
    /// `params` are (parameter, gradient) pairs in the order of [`AdamW::params`]; the gradients hold the
    /// sum over micro-batches and are scaled by `grad_scale` (1 / accumulation steps, or 1 / items) before
    /// the norm, the clipping and the update, as if the loss had been divided by it. Gradients are not
    /// modified; zero them before the next accumulation. The step count advances when recorded.
    pub fn step(
        &mut self,
        batch: &mut Batch,
        params: &[(&Tensor, &Tensor)],
        lr: f64,
        grad_scale: f32,
    ) -> Result<()> {
        if params.len() != self.specs.len() {
            return Err(Error::Input(format!(
                "AdamW step: {} parameters given, the optimizer was built for {}",
                params.len(),
                self.specs.len()
            )));
        }
        if !(lr >= 0.0 && lr.is_finite() && grad_scale.is_finite()) {
            return Err(Error::Input(format!(
                "AdamW step: bad learning rate {lr} or gradient scale {grad_scale}"
            )));
        }
        for (spec, (p, g)) in self.specs.iter().zip(params) {
            for (what, t) in [("parameter", p), ("gradient", g)] {
                if t.len() != spec.len {
                    return Err(Error::Shape {
                        name: format!("{} ({what})", spec.name),
                        expected: vec![spec.len],
                        found: t.shape.clone(),
                    });
                }
            }
        }
        // Global norm: partial sums of squares of every gradient, reduced until one workgroup's remain.
        let mut count = 0;
        for (spec, (_, g)) in self.specs.iter().zip(params) {
            batch.sum_squares_partial(g, spec.len, true, &self.partial[0], count)?;
            count += sum_squares_groups(spec.len) * SUM_PARTIALS_PER_WORKGROUP;
        }
        let mut cur = 0;
        while count > SUM_PARTIALS_PER_WORKGROUP {
            batch.sum_squares_partial(&self.partial[cur], count, false, &self.partial[1 - cur], 0)?;
            count = sum_squares_groups(count) * SUM_PARTIALS_PER_WORKGROUP;
            cur = 1 - cur;
        }
        batch.clip_coefficient(&self.partial[cur], count, self.config.clip_norm(), grad_scale, &self.clip)?;

        self.step += 1;
        let c = &self.config;
        for (i, (spec, (p, g))) in self.specs.iter().zip(params).enumerate() {
            let wd = if spec.weight_decay { c.weight_decay } else { 0.0 };
            let scalars =
                AdamwScalars::new(lr, c.adam_beta1, c.adam_beta2, c.adam_epsilon, wd, self.step, grad_scale);
            batch.adamw_step(p, g, &self.exp_avg[i], &self.exp_avg_sq[i], &self.clip, &scalars)?;
        }
        Ok(())
    }

    /// The gradient norm and clip coefficient of the last step, once its batch has been submitted.
    pub fn read_grad_norm(&self, gpu: &Gpu) -> Result<GradNorm> {
        let v: Vec<f32> = gpu.read_words(&self.clip.buffer, 0, 2)?;
        Ok(GradNorm { norm: v[0], coef: v[1] })
    }

    /// Downloads the step count and every moment (for a checkpoint).
    pub fn state(&self, gpu: &Gpu) -> Result<AdamWState> {
        let mut params = Vec::with_capacity(self.specs.len());
        for (i, spec) in self.specs.iter().enumerate() {
            params.push(ParamState {
                name: spec.name.clone(),
                exp_avg: gpu.read_f32(&self.exp_avg[i])?,
                exp_avg_sq: gpu.read_f32(&self.exp_avg_sq[i])?,
            });
        }
        Ok(AdamWState { step: self.step, params })
    }

    /// Restores a state saved by [`AdamW::state`]; the parameters must match by name, order and size.
    /// Nothing changes when they do not.
    pub fn load_state(&mut self, gpu: &Gpu, state: &AdamWState) -> Result<()> {
        if state.params.len() != self.specs.len() {
            return Err(Error::Input(format!(
                "optimizer state has {} parameters, this run trains {}",
                state.params.len(),
                self.specs.len()
            )));
        }
        for (spec, s) in self.specs.iter().zip(&state.params) {
            if s.name != spec.name {
                return Err(Error::Input(format!(
                    "optimizer state holds `{}` where this run trains `{}`",
                    s.name, spec.name
                )));
            }
            for (what, v) in [("exp_avg", &s.exp_avg), ("exp_avg_sq", &s.exp_avg_sq)] {
                if v.len() != spec.len {
                    return Err(Error::Shape {
                        name: format!("{}.{what} (optimizer state)", spec.name),
                        expected: vec![spec.len],
                        found: vec![v.len()],
                    });
                }
            }
        }
        for (i, s) in state.params.iter().enumerate() {
            gpu.write_f32(&self.exp_avg[i], &s.exp_avg);
            gpu.write_f32(&self.exp_avg_sq[i], &s.exp_avg_sq);
        }
        self.step = state.step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_training_arguments_and_names_are_its_names() {
        let c: AdamWConfig = toml::from_str("").unwrap();
        assert_eq!(c, AdamWConfig::default());
        assert_eq!((c.learning_rate, c.weight_decay, c.max_grad_norm), (5e-5, 0.0, 1.0));
        let c: AdamWConfig = toml::from_str(
            "learning_rate = 2e-4\nadam_beta1 = 0.8\nadam_beta2 = 0.99\nadam_epsilon = 1e-6\n\
             weight_decay = 0.01\nmax_grad_norm = 0.0",
        )
        .unwrap();
        assert_eq!(c.clip_norm(), None);
        assert_eq!((c.learning_rate, c.adam_beta1, c.adam_beta2, c.adam_epsilon), (2e-4, 0.8, 0.99, 1e-6));
        let err = toml::from_str::<AdamWConfig>("adam_beta3 = 0.5").unwrap_err().to_string();
        assert!(err.contains("adam_beta3"), "{err}");
        assert_eq!(AdamWConfig::torch().weight_decay, 0.01);
    }

    #[test]
    fn out_of_range_options_are_named() {
        for (c, name) in [
            (AdamWConfig { adam_beta1: 1.0, ..Default::default() }, "adam_beta1"),
            (AdamWConfig { adam_beta2: -0.1, ..Default::default() }, "adam_beta2"),
            (AdamWConfig { learning_rate: f64::NAN, ..Default::default() }, "learning_rate"),
            (AdamWConfig { adam_epsilon: -1.0, ..Default::default() }, "adam_epsilon"),
            (AdamWConfig { weight_decay: -0.1, ..Default::default() }, "weight_decay"),
            (AdamWConfig { max_grad_norm: f64::INFINITY, ..Default::default() }, "max_grad_norm"),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn state_round_trips_through_safetensors_and_bad_files_are_errors() {
        let state = AdamWState {
            step: 7,
            params: vec![
                ParamState {
                    name: "z.lora_A".into(),
                    exp_avg: vec![1.5, -2.0, 1e-30],
                    exp_avg_sq: vec![0.0, 4.0, 1e-38],
                },
                ParamState { name: "a.lora_B".into(), exp_avg: vec![], exp_avg_sq: vec![] },
            ],
        };
        let bytes = state.to_safetensors().unwrap();
        let path = std::path::Path::new("ckpt/optimizer.safetensors");
        assert_eq!(AdamWState::from_safetensors(&bytes, path).unwrap(), state);
        let err = AdamWState::from_safetensors(b"garbage", path).unwrap_err().to_string();
        assert!(err.contains("ckpt/optimizer.safetensors") && err.contains("not a safetensors"), "{err}");
        let other = safetensors::serialize(
            [(
                "w",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4]).unwrap(),
            )],
            None,
        )
        .unwrap();
        let err = AdamWState::from_safetensors(&other, path).unwrap_err().to_string();
        assert!(err.contains("not a babelrl optimizer state"), "{err}");
    }

    #[test]
    fn step_scalars_follow_torch() {
        // Step 1 at lr 1e-3, wd 0.1: decay 1 − 1e-4, step size lr / (1 − 0.9), bc2 sqrt(1 − 0.999).
        let s = AdamwScalars::new(1e-3, 0.9, 0.999, 1e-8, 0.1, 1, 0.5);
        assert_eq!(s.decay, (1.0f64 - 1e-4) as f32);
        assert_eq!(s.neg_step_size, (-1e-3f64 / (1.0 - 0.9)) as f32);
        assert_eq!(s.bc2_sqrt, (1.0f64 - 0.999).sqrt() as f32);
        assert_eq!((s.lerp_weight, s.eps, s.grad_scale), ((1.0f64 - 0.9) as f32, 1e-8, 0.5));
        assert_eq!(AdamwScalars::new(1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 1.0).decay, 1.0);
    }
}
