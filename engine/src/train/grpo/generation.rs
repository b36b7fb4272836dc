//! A GRPO generation batch laid out for the update: the rollouts of one step split into TRL's
//! micro-batches (`gradient_accumulation_steps` of them, in rollout order), each with its training batch,
//! loss mask, per-sequence lengths and advantages, and the log-probs fixed at generation (the sampling
//! policy's for `num_iterations > 1`, the reference's for `beta ≠ 0`). It is kept for `num_iterations`
//! optimizer steps.

use crate::train::grpo::{completion_lengths, completion_mask};
use crate::train::{TrainBatch, TrainSequence};
use crate::{Error, Result};

use super::trainer::Rollout;

/// One micro-batch: the sequences of a contiguous run of rollouts (empty completions left out).
#[derive(Debug, Clone)]
pub struct MicroBatch {
    pub batch: TrainBatch,
    /// TRL's loss mask per completion token.
    pub mask: Vec<bool>,
    /// Completion tokens per sequence.
    pub lengths: Vec<usize>,
    /// Advantage per sequence.
    pub advantages: Vec<f32>,
    /// The sampling policy's log-probs (computed once after generation when `num_iterations > 1`).
    pub old_logp: Option<Vec<f32>>,
    /// The reference's log-probs (`beta ≠ 0`).
    pub ref_logp: Option<Vec<f32>>,
}

/// What a generation batch's rollouts measured, reported with every optimizer step that uses it.
#[derive(Debug, Clone, Default)]
pub struct RolloutStats {
    pub reward_mean: f64,
    pub reward_std: f64,
    pub generated_tokens: usize,
    pub rollout_seconds: f64,
    pub reward_seconds: f64,
    pub reference_seconds: f64,
}

/// The rollouts of one generation, ready for `num_iterations` updates.
#[derive(Debug, Clone)]
pub struct Generation {
    pub micro: Vec<MicroBatch>,
    /// Active (mask true) tokens of the whole generation batch: `dapo`'s `num_items_in_batch`.
    pub num_items: usize,
    pub stats: RolloutStats,
    /// Optimizer steps already taken on it.
    pub iterations_done: usize,
}

/// How a generation batch is cut and laid out.
pub struct Layout<'a> {
    pub vocab: usize,
    pub max_context: usize,
    pub eos_ids: &'a [u32],
    pub pad_id: Option<u32>,
    pub mask_truncated_completions: bool,
    pub temperature: f32,
    pub micro_batches: usize,
}

impl Generation {
    /// Splits `rollouts` (with `prompts[i]` the prompt of rollout `i` and `adv[i]` its advantage) into
    /// `layout.micro_batches` equal runs of rollouts. Rollouts without a token teach nothing and are left
    /// out; a micro-batch left with none is dropped. Errors if the rollouts do not split evenly or every
    /// rollout is empty.
    pub fn new(
        rollouts: &[Rollout],
        prompts: &[Vec<u32>],
        adv: &[f32],
        stats: RolloutStats,
        layout: &Layout,
    ) -> Result<Generation> {
        let n = rollouts.len();
        let parts = layout.micro_batches;
        if parts == 0 || !n.is_multiple_of(parts) {
            return Err(Error::Input(format!(
                "GRPO: {n} rollouts do not split into gradient_accumulation_steps = {parts} equal micro-batches \
                 (prompts per step × num_generations must be a multiple of it)"
            )));
        }
        let per = n / parts;
        let mut micro = Vec::with_capacity(parts);
        for part in 0..parts {
            let kept: Vec<usize> = (part * per..(part + 1) * per)
                .filter(|&i| !rollouts[i].completion.tokens.is_empty())
                .collect();
            if kept.is_empty() {
                continue;
            }
            let seqs: Vec<TrainSequence> = kept
                .iter()
                .map(|&i| TrainSequence {
                    tokens: [prompts[i].as_slice(), &rollouts[i].completion.tokens].concat(),
                    prompt_len: prompts[i].len(),
                })
                .collect();
            // A group's completions share their prompt: its rows run once (`TrainBatch::shared`).
            let mut batch = TrainBatch::sharing_prompts(&seqs, layout.vocab, layout.max_context)?;
            batch.temperature = layout.temperature;
            let mask = kept
                .iter()
                .flat_map(|&i| {
                    completion_mask(
                        &rollouts[i].completion.tokens,
                        layout.eos_ids,
                        layout.pad_id,
                        layout.mask_truncated_completions,
                    )
                })
                .collect();
            let lengths = completion_lengths(&batch);
            let advantages = kept.iter().map(|&i| adv[i]).collect();
            micro.push(MicroBatch { batch, mask, lengths, advantages, old_logp: None, ref_logp: None });
        }
        if micro.is_empty() {
            return Err(Error::Input("GRPO: every rollout of the step is empty".into()));
        }
        let num_items = micro.iter().map(|m| m.mask.iter().filter(|&&a| a).count()).sum();
        Ok(Generation { micro, num_items, stats, iterations_done: 0 })
    }
}
