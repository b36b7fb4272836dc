//! One GRPO optimizer step on the GPU: rollouts with the adapter on (each prompt sampled
//! `num_generations` times), rewards from the caller, group advantages, the training walk at the sampling
//! temperature, TRL's loss and its per-token gradient, backward, AdamW. The first piece of issue 8's
//! trainer: one micro-batch per step, `num_iterations = 1`, `beta = 0` (no reference pass yet).

use std::time::Instant;

use crate::generate::{Completion, SamplingConfig, generate};
use crate::lora::Adapter;
use crate::model::Decoder;
use crate::text::Tokenizer;
use crate::train::grpo::{
    GrpoLossConfig, LossInputs, ScaleRewards, advantages, completion_logp, completion_mask, grpo_loss,
    nll_grad,
};
use crate::train::{
    Activations, AdamW, AdamWConfig, Gradients, LoraGrads, Schedule, TrainBatch, TrainSequence, TrainShape,
};
use crate::{Error, Result};

/// The options of a GRPO step, named as TRL's `GRPOConfig` where it has them.
#[derive(Debug, Clone)]
pub struct GrpoOptions {
    /// Completions per prompt (the group).
    pub num_generations: usize,
    /// Sampling of the rollouts; its temperature also scales the training log-probs, as TRL.
    /// `max_new_tokens` is TRL's `max_completion_length`.
    pub sampling: SamplingConfig,
    pub loss: GrpoLossConfig,
    pub scale_rewards: ScaleRewards,
    pub mask_truncated_completions: bool,
    /// Seed of the rollouts (each step samples with `seed + step`).
    pub seed: u64,
}

/// One rollout: the prompt it answers and the completion.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub prompt: usize,
    pub completion: Completion,
}

/// What one GRPO step did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GrpoStepMetrics {
    pub step: u64,
    pub loss: f64,
    /// Mean and (population) std of the rewards of the step's rollouts.
    pub reward_mean: f64,
    pub reward_std: f64,
    pub grad_norm: f32,
    pub learning_rate: f64,
    pub completion_tokens: usize,
    pub clip_ratio: f64,
    pub rollout_seconds: f64,
    pub update_seconds: f64,
}

/// A GRPO run's trainer: adapter, gradients, optimizer and schedule.
pub struct GrpoTrainer<'m> {
    decoder: &'m Decoder,
    tokenizer: &'m Tokenizer,
    adapter: Adapter,
    grads: LoraGrads,
    optim: AdamW,
    schedule: Schedule,
    options: GrpoOptions,
    buffers: Option<(Activations, Gradients)>,
}

impl<'m> GrpoTrainer<'m> {
    pub fn new(
        decoder: &'m Decoder,
        tokenizer: &'m Tokenizer,
        adapter: Adapter,
        optim: AdamWConfig,
        schedule: Schedule,
        options: GrpoOptions,
    ) -> Result<Self> {
        options.loss.validate()?;
        options.sampling.validate()?;
        if options.num_generations < 2 {
            return Err(Error::Input(
                "GRPO: num_generations must be at least 2 (advantages compare a group)".into(),
            ));
        }
        if options.loss.beta != 0.0 {
            return Err(Error::Input(
                "GRPO: beta ≠ 0 needs the reference pass, which this trainer does not run yet; set beta = 0"
                    .into(),
            ));
        }
        let grads = LoraGrads::new(decoder.gpu(), &adapter)?;
        let optim = AdamW::new(decoder.gpu(), optim, LoraGrads::param_specs(&adapter))?;
        Ok(Self { decoder, tokenizer, adapter, grads, optim, schedule, options, buffers: None })
    }

    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    pub fn step_count(&self) -> u64 {
        self.optim.step_count()
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The optimizer's state, downloaded (for a checkpoint).
    pub fn optimizer_state(&self) -> Result<crate::train::AdamWState> {
        self.optim.state(self.decoder.gpu())
    }

    /// Continues from a checkpoint's optimizer state (moments and step count; the adapter was given to
    /// [`GrpoTrainer::new`]). Nothing changes on an error.
    pub fn restore(&mut self, optimizer: &crate::train::AdamWState) -> Result<()> {
        self.optim.load_state(self.decoder.gpu(), optimizer)
    }

    /// One step on `prompts` (token ids): rollouts, `reward` (one score per rollout, in order; NaN for a
    /// rollout a reward could not score), the update.
    pub fn step(
        &mut self,
        prompts: &[Vec<u32>],
        mut reward: impl FnMut(&[Rollout]) -> Result<Vec<f64>>,
    ) -> Result<GrpoStepMetrics> {
        let start = Instant::now();
        let o = &self.options;
        let g = o.num_generations;
        let step = self.optim.step_count();
        let repeated: Vec<Vec<u32>> =
            prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), g)).collect();
        let sampling = SamplingConfig { seed: o.seed.wrapping_add(step), ..o.sampling.clone() };
        let completions =
            generate(self.decoder.with_adapter(&self.adapter), self.tokenizer, &repeated, &sampling, |_| {})?;
        let rollouts: Vec<Rollout> = completions
            .into_iter()
            .enumerate()
            .map(|(i, completion)| Rollout { prompt: i / g, completion })
            .collect();
        let rollout_seconds = start.elapsed().as_secs_f64();
        let rewards = reward(&rollouts)?;
        if rewards.len() != rollouts.len() {
            return Err(Error::Input(format!(
                "GRPO: {} rewards for {} rollouts",
                rewards.len(),
                rollouts.len()
            )));
        }
        let adv = advantages(&rewards, g, o.scale_rewards)?;
        let update = Instant::now();

        // Rollouts without a token (an empty completion) teach nothing: left out of the pass.
        let kept: Vec<usize> =
            (0..rollouts.len()).filter(|&i| !rollouts[i].completion.tokens.is_empty()).collect();
        if kept.is_empty() {
            return Err(Error::Input("GRPO: every rollout of the step is empty".into()));
        }
        let seqs: Vec<TrainSequence> = kept
            .iter()
            .map(|&i| {
                let r = &rollouts[i];
                let p = &prompts[r.prompt];
                TrainSequence { tokens: [p.as_slice(), &r.completion.tokens].concat(), prompt_len: p.len() }
            })
            .collect();
        let cfg = self.decoder.config();
        let mut batch = TrainBatch::new(&seqs, cfg.vocab, self.decoder.max_context())?;
        batch.temperature = if o.sampling.temperature > 0.0 { o.sampling.temperature } else { 1.0 };
        batch.dropout_seed = crate::gpu::kernels::dropout_seed(o.seed, step, 0, 0, 0);
        let mask: Vec<bool> = kept
            .iter()
            .flat_map(|&i| {
                let tokens = &rollouts[i].completion.tokens;
                completion_mask(
                    tokens,
                    self.tokenizer.eos_ids(),
                    self.tokenizer.pad_id(),
                    o.mask_truncated_completions,
                )
            })
            .collect();
        let lengths = crate::train::grpo::completion_lengths(&batch);
        let seq_adv: Vec<f32> = kept.iter().map(|&i| adv[i]).collect();

        let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
        if !self.buffers.as_ref().is_some_and(|(a, _)| a.shape.holds(&shape)) {
            self.buffers = None;
            let acts = self.decoder.train_activations(shape, &self.adapter, false)?;
            let scratch = self.decoder.train_gradients(shape, &self.adapter)?;
            self.buffers = Some((acts, scratch));
        }
        let (acts, scratch) = self.buffers.as_mut().expect("allocated above");
        let gpu = self.decoder.gpu().clone();
        let mut zero = gpu.batch();
        self.grads.zero(&mut zero);
        zero.submit()?;
        self.decoder.train_forward(acts, &batch, &self.adapter, None)?;
        let nll = gpu.read_words::<f32>(&acts.nll.buffer, 0, batch.len())?;
        let logp = completion_logp(&batch, &nll)?;
        let active = mask.iter().filter(|&&m| m).count();
        let inputs = LossInputs {
            logp: &logp,
            old_logp: None,
            ref_logp: None,
            mask: &mask,
            lengths: &lengths,
            advantages: &seq_adv,
            num_items_in_batch: active.max(1),
        };
        let out = grpo_loss(&inputs, &o.loss)?;
        let token_grad = nll_grad(&batch, &out.dlogp)?;
        self.decoder.train_backward(acts, scratch, &self.adapter, &self.grads, Some(&token_grad))?;
        let lr = self.schedule.lr(self.optim.config().learning_rate, step);
        let mut b = gpu.batch();
        self.optim.step(&mut b, &self.grads.with_params(&self.adapter), lr, 1.0)?;
        b.submit()?;
        let grad_norm = self.optim.read_grad_norm(&gpu)?.norm;
        let finite: Vec<f64> = rewards.iter().copied().filter(|r| r.is_finite()).collect();
        let mean = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
        let std =
            (finite.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / finite.len().max(1) as f64).sqrt();
        Ok(GrpoStepMetrics {
            step: step + 1,
            loss: out.loss,
            reward_mean: mean,
            reward_std: std,
            grad_norm,
            learning_rate: lr,
            completion_tokens: batch.completion_tokens,
            clip_ratio: out.metrics.clip_ratio_region_mean,
            rollout_seconds,
            update_seconds: update.elapsed().as_secs_f64(),
        })
    }
}
