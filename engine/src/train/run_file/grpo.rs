//! `[grpo]` of a run file: a GRPO job's data, rollout and loss options under TRL's `GRPOConfig` names,
//! read strictly and range-checked with errors naming `[grpo] key`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::generate::SamplingConfig;
use crate::train::grpo::{GrpoLossConfig, LossType, ScaleRewards};

/// `[grpo]`: reinforcement learning with group-relative advantages from a JSONL file of prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoSection {
    /// The JSONL prompts (see [`crate::train::grpo::data`]).
    pub data: PathBuf,
    /// Completions sampled per prompt, the group (TRL's default, 8).
    pub num_generations: usize,
    /// Prompts per generation batch (1). TRL's `per_device_train_batch_size` counts the completions of
    /// one micro-batch instead: it may be given in its place, and then `per_device_train_batch_size ×
    /// gradient_accumulation_steps` must be a multiple of `num_generations`.
    pub prompts_per_step: usize,
    /// Micro-batches per optimizer step (1): the generation batch is split into this many, in order.
    pub gradient_accumulation_steps: usize,
    /// Optimizer steps per generation batch (TRL's μ, 1).
    pub num_iterations: usize,
    /// Optimizer steps of the run.
    pub max_steps: u64,
    /// Most tokens of a rendered prompt; a longer prompt is an error naming its line (512).
    pub max_prompt_length: usize,
    /// Most tokens sampled per completion (256).
    pub max_completion_length: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// 0: no top-k filter (TRL's `None`).
    pub top_k: usize,
    /// Seed of the data order and of the rollouts (step `s` samples with `seed + s`) (0).
    pub seed: u64,
    pub loss_type: LossType,
    /// Weight of the KL to the base model (0: no reference pass).
    pub beta: f64,
    pub epsilon: f64,
    pub epsilon_high: Option<f64>,
    pub scale_rewards: ScaleRewards,
    pub mask_truncated_completions: bool,
    /// This stage's learning rate, in place of `[optimizer] learning_rate` (as TRL's `GRPOConfig` has
    /// its own; see [`super::RunFile::optimizer_for`]).
    pub learning_rate: Option<f64>,
}

impl GrpoSection {
    /// The rollouts' sampling (the step's seed is set by the trainer).
    pub fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            max_new_tokens: self.max_completion_length,
            ..SamplingConfig::default()
        }
    }

    /// The trainer's options: [`Self::sampling`], [`Self::loss`] and the section's other keys.
    pub fn options(&self) -> crate::train::grpo::GrpoOptions {
        crate::train::grpo::GrpoOptions {
            num_generations: self.num_generations,
            sampling: self.sampling(),
            loss: self.loss(),
            scale_rewards: self.scale_rewards,
            mask_truncated_completions: self.mask_truncated_completions,
            num_iterations: self.num_iterations,
            seed: self.seed,
        }
    }

    /// The loss's options.
    pub fn loss(&self) -> GrpoLossConfig {
        GrpoLossConfig {
            loss_type: self.loss_type,
            beta: self.beta,
            epsilon: self.epsilon,
            epsilon_high: self.epsilon_high,
            max_completion_length: self.max_completion_length,
            gradient_accumulation_steps: self.gradient_accumulation_steps,
            ..GrpoLossConfig::default()
        }
    }
}

/// TRL's `scale_rewards`: `true` (= `group`), `false` (= `none`) or a name.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawScale {
    Flag(bool),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrpo {
    data: Option<PathBuf>,
    num_generations: Option<usize>,
    prompts_per_step: Option<usize>,
    per_device_train_batch_size: Option<usize>,
    gradient_accumulation_steps: Option<usize>,
    num_iterations: Option<usize>,
    max_steps: Option<u64>,
    max_prompt_length: Option<usize>,
    max_completion_length: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    loss_type: Option<LossType>,
    beta: Option<f64>,
    epsilon: Option<f64>,
    epsilon_high: Option<f64>,
    scale_rewards: Option<RawScale>,
    mask_truncated_completions: Option<bool>,
    learning_rate: Option<f64>,
}

impl RawGrpo {
    /// The section, validated; `resolve` makes `data` absolute, `err` names the file.
    pub(super) fn validate(
        self,
        resolve: impl Fn(PathBuf) -> PathBuf,
        err: impl Fn(String) -> crate::Error,
    ) -> crate::Result<GrpoSection> {
        let data =
            self.data.ok_or_else(|| err("[grpo] data is missing: name the JSONL file of prompts".into()))?;
        let max_steps = self
            .max_steps
            .ok_or_else(|| err("[grpo] max_steps is missing: give the number of optimizer steps".into()))?;
        let num_generations = self.num_generations.unwrap_or(8);
        if num_generations < 2 {
            return Err(err(format!(
                "[grpo] num_generations = {num_generations}: must be at least 2 (advantages compare the \
                 completions of a group)"
            )));
        }
        let ga = self.gradient_accumulation_steps.unwrap_or(1);
        let prompts_per_step = match (self.prompts_per_step, self.per_device_train_batch_size) {
            (Some(_), Some(_)) => {
                return Err(err("[grpo] prompts_per_step and per_device_train_batch_size are both set: \
                                give one (the second counts completions, as TRL)"
                    .into()));
            }
            (Some(p), None) => p,
            (None, Some(b)) if b == 0 || !(b * ga).is_multiple_of(num_generations) => {
                return Err(err(format!(
                    "[grpo] per_device_train_batch_size = {b}: counts the completions of a micro-batch, so \
                     per_device_train_batch_size × gradient_accumulation_steps ({ga}) must be a positive \
                     multiple of num_generations = {num_generations}"
                )));
            }
            (None, Some(b)) => b * ga / num_generations,
            (None, None) => 1,
        };
        let scale_rewards = match self.scale_rewards {
            None | Some(RawScale::Flag(true)) => ScaleRewards::Group,
            Some(RawScale::Flag(false)) => ScaleRewards::None,
            Some(RawScale::Name(s)) => match s.as_str() {
                "group" => ScaleRewards::Group,
                "batch" => ScaleRewards::Batch,
                "none" => ScaleRewards::None,
                _ => {
                    return Err(err(format!(
                        "[grpo] scale_rewards = \"{s}\": expected \"group\", \"batch\", \"none\", true or false"
                    )));
                }
            },
        };
        let s = GrpoSection {
            data: resolve(data),
            num_generations,
            prompts_per_step,
            gradient_accumulation_steps: ga,
            num_iterations: self.num_iterations.unwrap_or(1),
            max_steps,
            max_prompt_length: self.max_prompt_length.unwrap_or(512),
            max_completion_length: self.max_completion_length.unwrap_or(256),
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            seed: self.seed.unwrap_or(0),
            loss_type: self.loss_type.unwrap_or_default(),
            beta: self.beta.unwrap_or(0.0),
            epsilon: self.epsilon.unwrap_or(0.2),
            epsilon_high: self.epsilon_high,
            scale_rewards,
            mask_truncated_completions: self.mask_truncated_completions.unwrap_or(false),
            learning_rate: self.learning_rate,
        };
        for (key, v) in [
            ("prompts_per_step", s.prompts_per_step as u64),
            ("gradient_accumulation_steps", s.gradient_accumulation_steps as u64),
            ("num_iterations", s.num_iterations as u64),
            ("max_steps", s.max_steps),
            ("max_prompt_length", s.max_prompt_length as u64),
            ("max_completion_length", s.max_completion_length as u64),
        ] {
            if v < 1 {
                return Err(err(format!("[grpo] {key} = {v}: must be at least 1")));
            }
        }
        if !(s.prompts_per_step * s.num_generations).is_multiple_of(s.gradient_accumulation_steps) {
            return Err(err(format!(
                "[grpo] gradient_accumulation_steps = {}: the {} completions of a step (prompts_per_step × \
                 num_generations) must split into that many equal micro-batches",
                s.gradient_accumulation_steps,
                s.prompts_per_step * s.num_generations
            )));
        }
        if !s.max_steps.is_multiple_of(s.num_iterations as u64) {
            return Err(err(format!(
                "[grpo] max_steps = {} is not a multiple of num_iterations = {}: each generation batch serves \
                 num_iterations optimizer steps",
                s.max_steps, s.num_iterations
            )));
        }
        if !(s.beta >= 0.0 && s.beta.is_finite()) {
            return Err(err(format!(
                "[grpo] beta = {}: must be a finite number ≥ 0 (0 = no KL term)",
                s.beta
            )));
        }
        if !(s.temperature > 0.0 && s.temperature.is_finite()) {
            return Err(err(format!(
                "[grpo] temperature = {}: must be above 0 (GRPO needs different completions per group)",
                s.temperature
            )));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(err(format!("[grpo] top_p = {}: must lie in (0, 1]", s.top_p)));
        }
        s.loss().validate().map_err(|e| err(format!("[grpo] {e}")))?;
        Ok(s)
    }
}
