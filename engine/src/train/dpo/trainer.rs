//! The DPO trainer: preference pairs in a seeded order (as SFT walks its examples), each micro-batch one
//! training batch of its chosen sequences then its rejected ones; the reference's summed log-probs from a
//! forward with the adapter off (per micro-batch, or once for the whole data set with
//! `precompute_ref_log_probs`), the policy's from the training forward, TRL's loss ([`super::dpo_loss`])
//! and its per-sequence coefficient handed to the training backward on every completion token (the path
//! GRPO's per-token gradients take), AdamW. Checkpoints need the adapter, the optimizer and the pairs seen.

use std::time::Instant;

use super::loss::{DpoLossConfig, DpoLossInputs, DpoLossOutput, DpoMetrics, dpo_loss};
use crate::gpu::kernels::dropout_seed;
use crate::lora::Adapter;
use crate::model::Decoder;
use crate::train::grpo::PromptOrder;
use crate::train::grpo::{completion_lengths, completion_logp, nll_grad};
use crate::train::{
    Activations, AdamW, AdamWConfig, AdamWState, Gradients, LoraGrads, Schedule, TrainBatch, TrainSequence,
    TrainShape,
};
use crate::{Error, Result};

/// One preference pair as token ids: the prompt and the two completions that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpoPair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl DpoPair {
    /// The chosen and rejected training sequences, each cut to its first `max_length` tokens (TRL's
    /// `truncation_mode = "keep_start"`); `None` when the prompt alone fills `max_length` (TRL drops such
    /// pairs).
    pub fn sequences(&self, max_length: Option<usize>) -> Option<(TrainSequence, TrainSequence)> {
        let cut = |c: &[u32]| {
            let mut tokens = [self.prompt.as_slice(), c].concat();
            if let Some(n) = max_length {
                tokens.truncate(n);
            }
            TrainSequence { tokens, prompt_len: self.prompt.len() }
        };
        if max_length.is_some_and(|n| self.prompt.len() >= n) {
            return None;
        }
        Some((cut(&self.chosen), cut(&self.rejected)))
    }
}

/// How a DPO run walks its pairs (TRL's `DPOConfig` names where it has them).
#[derive(Debug, Clone, PartialEq)]
pub struct DpoOptions {
    /// beta, loss_type, label_smoothing, gradient_accumulation_steps.
    pub loss: DpoLossConfig,
    /// Pairs per micro-batch (`per_device_train_batch_size`).
    pub batch_size: usize,
    /// Most tokens of prompt + completion (TRL's `max_length`, keep_start truncation); `None`: no limit but
    /// the model's context.
    pub max_length: Option<usize>,
    /// Compute every pair's reference log-probs once, before the first step (TRL's
    /// `precompute_ref_log_probs`), instead of a reference forward in every micro-batch.
    pub precompute_ref_log_probs: bool,
    /// Seed of the pair order and of LoRA dropout's masks.
    pub seed: u64,
    /// Permute the pairs each epoch (else file order).
    pub shuffle: bool,
    pub gradient_checkpointing: bool,
}

impl Default for DpoOptions {
    fn default() -> Self {
        Self {
            loss: DpoLossConfig::default(),
            batch_size: 8,
            max_length: Some(1024),
            precompute_ref_log_probs: false,
            seed: 0,
            shuffle: true,
            gradient_checkpointing: false,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DpoStepMetrics {
    pub step: u64,
    /// The step's loss (the micro-batches' means, averaged).
    pub loss: f64,
    pub grad_norm: f32,
    pub learning_rate: f64,
    /// TRL's rewards/* and logps/* (means over the step's micro-batches).
    #[serde(flatten)]
    pub dpo: DpoMetrics,
    /// Tokens run through the policy (prompts and completions, both sides).
    pub tokens: usize,
    pub seconds: f64,
    /// Time in reference forwards (0 with precomputed reference log-probs, after the first step).
    pub reference_seconds: f64,
    /// Epochs done (pairs seen / pairs).
    pub epoch: f64,
}

/// The reference log-probs of a micro-batch: `[chosen, rejected]`, one sum per pair each.
pub type RefLogps = [Vec<f64>; 2];

/// A micro-batch to run: its pairs as (chosen, rejected) sequences, and their reference log-probs when
/// already known.
type MicroBatch = (Vec<(TrainSequence, TrainSequence)>, Option<RefLogps>);

/// A micro-batch's loss and the reference log-probs it used.
#[derive(Debug, Clone, PartialEq)]
pub struct PairPass {
    pub loss: DpoLossOutput,
    pub reference: RefLogps,
}

/// The training batch of `pairs`: the chosen sequences in order, then the rejected ones, each pair's
/// prompt laid out once (`TrainBatch::sharing_prompts`: the rejected side follows the chosen one).
pub fn pair_batch(pairs: &[(TrainSequence, TrainSequence)], decoder: &Decoder) -> Result<TrainBatch> {
    let seqs: Vec<TrainSequence> =
        pairs.iter().map(|p| p.0.clone()).chain(pairs.iter().map(|p| p.1.clone())).collect();
    TrainBatch::sharing_prompts(&seqs, decoder.config().vocab, decoder.max_context())
}

/// Each sequence's summed completion log-prob (`−Σ nll` over its target rows), from the walk's `nll`.
pub fn sequence_logps(batch: &TrainBatch, nll: &[f32]) -> Result<Vec<f64>> {
    let logp = completion_logp(batch, nll)?;
    let mut at = 0;
    Ok(completion_lengths(batch)
        .into_iter()
        .map(|n| {
            let s = logp[at..at + n].iter().map(|&v| f64::from(v)).sum();
            at += n;
            s
        })
        .collect())
}

/// The reference's summed log-probs of `batch` (a [`pair_batch`]): the walk with the adapter off.
pub fn reference_logps(
    decoder: &Decoder,
    adapter: &Adapter,
    buffers: &mut Option<(Activations, Gradients)>,
    batch: &TrainBatch,
    checkpointing: bool,
) -> Result<RefLogps> {
    let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
    let (acts, _) = decoder.grow_train_buffers(buffers, shape, adapter, checkpointing)?;
    decoder.reference_forward(acts, batch)?;
    let nll = decoder.gpu().read_words::<f32>(&acts.nll.buffer, 0, batch.len())?;
    let mut sums = sequence_logps(batch, &nll)?;
    let rejected = sums.split_off(batch.slots / 2);
    Ok([sums, rejected])
}

/// One micro-batch of DPO on `batch` (a [`pair_batch`] of P pairs): the reference log-probs (computed here
/// with the adapter off unless given), the policy's forward, the loss, and its backward into `grads`
/// (added to what they hold): every completion token of chosen sequence i gets `d loss / d c_i`, of
/// rejected sequence i `d loss / d r_i`.
#[allow(clippy::too_many_arguments)]
pub fn pair_pass(
    decoder: &Decoder,
    adapter: &Adapter,
    grads: &LoraGrads,
    buffers: &mut Option<(Activations, Gradients)>,
    batch: &TrainBatch,
    reference: Option<RefLogps>,
    config: &DpoLossConfig,
    checkpointing: bool,
) -> Result<PairPass> {
    if !batch.slots.is_multiple_of(2) {
        return Err(Error::Input(format!(
            "dpo: a pair batch holds chosen then rejected sequences, {} is odd",
            batch.slots
        )));
    }
    let reference = match reference {
        Some(r) => r,
        None => reference_logps(decoder, adapter, buffers, batch, checkpointing)?,
    };
    let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
    let (acts, scratch) = decoder.grow_train_buffers(buffers, shape, adapter, checkpointing)?;
    decoder.train_forward(acts, batch, adapter, None)?;
    let nll = decoder.gpu().read_words::<f32>(&acts.nll.buffer, 0, batch.len())?;
    let mut policy = sequence_logps(batch, &nll)?;
    let rejected = policy.split_off(batch.slots / 2);
    let inputs = DpoLossInputs {
        chosen_logp: &policy,
        rejected_logp: &rejected,
        ref_chosen_logp: &reference[0],
        ref_rejected_logp: &reference[1],
    };
    let loss = dpo_loss(&inputs, config)?;
    let coefficients = loss.dchosen.iter().chain(&loss.drejected);
    let dlogp: Vec<f32> = completion_lengths(batch)
        .into_iter()
        .zip(coefficients)
        .flat_map(|(n, &c)| std::iter::repeat_n(c as f32, n))
        .collect();
    let token_grad = nll_grad(batch, &dlogp)?;
    decoder.train_backward(acts, scratch, adapter, grads, Some(&token_grad))?;
    Ok(PairPass { loss, reference })
}

/// A DPO run in progress.
pub struct DpoTrainer<'m> {
    decoder: &'m Decoder,
    adapter: Adapter,
    grads: LoraGrads,
    optim: AdamW,
    schedule: Schedule,
    pairs: Vec<(TrainSequence, TrainSequence)>,
    options: DpoOptions,
    pairs_seen: u64,
    order: PromptOrder,
    buffers: Option<(Activations, Gradients)>,
    /// Every pair's reference log-probs, with `precompute_ref_log_probs` (filled at the first step).
    reference: Option<Vec<(f64, f64)>>,
}

impl<'m> DpoTrainer<'m> {
    /// A run training `adapter` on `pairs`. Pairs whose prompt fills `max_length` are dropped (as TRL
    /// drops them; a warning counts them); an error names the pair whose chosen and rejected sequences are
    /// the same, or which does not fit the model.
    pub fn new(
        decoder: &'m Decoder,
        adapter: Adapter,
        pairs: &[DpoPair],
        optim: AdamWConfig,
        schedule: Schedule,
        options: DpoOptions,
    ) -> Result<Self> {
        options.loss.validate()?;
        if options.batch_size == 0 {
            return Err(Error::Input("dpo: `per_device_train_batch_size` must be at least 1".into()));
        }
        let mut kept = Vec::with_capacity(pairs.len());
        for (i, p) in pairs.iter().enumerate() {
            let Some((c, r)) = p.sequences(options.max_length) else { continue };
            if c.tokens == r.tokens {
                return Err(Error::Input(format!(
                    "dpo pair {i}: chosen and rejected are the same {} tokens{}: the pair teaches nothing",
                    c.tokens.len(),
                    if options.max_length.is_some() { " (after max_length truncation)" } else { "" }
                )));
            }
            for (side, s) in [("chosen", &c), ("rejected", &r)] {
                TrainBatch::new(std::slice::from_ref(s), decoder.config().vocab, decoder.max_context())
                    .map_err(|e| Error::Input(format!("dpo pair {i} ({side}): {e}")))?;
            }
            kept.push((c, r));
        }
        if kept.len() < pairs.len() {
            log::warn!(
                "dpo: {} of {} pairs dropped: their prompt alone fills max_length = {}",
                pairs.len() - kept.len(),
                pairs.len(),
                options.max_length.unwrap_or(0)
            );
        }
        if kept.is_empty() {
            return Err(Error::Input(format!(
                "dpo: no pairs to train on ({} given; a pair whose prompt fills max_length is dropped)",
                pairs.len()
            )));
        }
        Self::with_pairs(decoder, adapter, kept, optim, schedule, options)
    }

    /// A run whose pairs the caller gives at every step ([`DpoTrainer::step_pairs`]): on-policy DPO.
    pub fn on_policy(
        decoder: &'m Decoder,
        adapter: Adapter,
        optim: AdamWConfig,
        schedule: Schedule,
        options: DpoOptions,
    ) -> Result<Self> {
        options.loss.validate()?;
        if options.precompute_ref_log_probs {
            return Err(Error::Input(
                "dpo: precompute_ref_log_probs needs a fixed data set; on-policy pairs are new every step"
                    .into(),
            ));
        }
        Self::with_pairs(decoder, adapter, Vec::new(), optim, schedule, options)
    }

    fn with_pairs(
        decoder: &'m Decoder,
        adapter: Adapter,
        kept: Vec<(TrainSequence, TrainSequence)>,
        optim: AdamWConfig,
        schedule: Schedule,
        options: DpoOptions,
    ) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(Error::Input("dpo: `per_device_train_batch_size` must be at least 1".into()));
        }
        let grads = LoraGrads::new(decoder.gpu(), &adapter)?;
        let optim = AdamW::new(decoder.gpu(), optim, LoraGrads::param_specs(&adapter))?;
        let order = PromptOrder::with_shuffle(kept.len(), options.seed, options.shuffle);
        Ok(Self {
            decoder,
            adapter,
            grads,
            optim,
            schedule,
            pairs: kept,
            options,
            pairs_seen: 0,
            order,
            buffers: None,
            reference: None,
        })
    }

    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// GPU memory by kind, with the activations as allocated so far (after the first step: the
    /// largest micro-batch's, the reference pass sharing them).
    pub fn memory(&self) -> crate::train::MemoryReport {
        let (decoder, buffers) = (self.decoder, &self.buffers);
        crate::train::MemoryReport::of_trainer(decoder, buffers, &self.adapter, &self.grads, &self.optim, 0)
    }

    pub fn step_count(&self) -> u64 {
        self.optim.step_count()
    }

    /// Pairs drawn so far (the position in the data order).
    pub fn pairs_seen(&self) -> u64 {
        self.pairs_seen
    }

    /// Pairs kept for training (after max_length's drops).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the trainer has no pairs of its own (an on-policy trainer).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn optimizer_state(&self) -> Result<AdamWState> {
        self.optim.state(self.decoder.gpu())
    }

    /// Continues from a checkpoint: the optimizer's state and the pairs seen (the adapter was given to
    /// [`DpoTrainer::new`]). Nothing changes on an error.
    pub fn restore(&mut self, optimizer: &AdamWState, pairs_seen: u64) -> Result<()> {
        if pairs_seen > i64::MAX as u64 {
            return Err(Error::Input(format!(
                "pairs seen = {pairs_seen}: more than a run can see; the trainer state is corrupt"
            )));
        }
        self.optim.load_state(self.decoder.gpu(), optimizer)?;
        self.pairs_seen = pairs_seen;
        Ok(())
    }

    /// Every pair's reference log-probs, in file order and micro-batches of `batch_size` (so a resumed
    /// run computes exactly the same values).
    fn precompute(&mut self) -> Result<()> {
        let mut all = Vec::with_capacity(self.pairs.len());
        let ckpt = self.options.gradient_checkpointing;
        for chunk in self.pairs.chunks(self.options.batch_size) {
            let batch = pair_batch(chunk, self.decoder)?;
            let [c, r] = reference_logps(self.decoder, &self.adapter, &mut self.buffers, &batch, ckpt)?;
            all.extend(c.into_iter().zip(r));
        }
        self.reference = Some(all);
        Ok(())
    }

    /// One optimizer step: `gradient_accumulation_steps` micro-batches of `batch_size` pairs in the data
    /// order, their gradients summed (each micro-batch's mean loss divided by the accumulation steps),
    /// then clipping and AdamW at the schedule's rate.
    pub fn step(&mut self) -> Result<DpoStepMetrics> {
        let start = Instant::now();
        if self.pairs.is_empty() {
            return Err(Error::Input("dpo: this trainer has no pairs of its own; use step_pairs".into()));
        }
        if self.options.precompute_ref_log_probs && self.reference.is_none() {
            self.precompute()?;
        }
        let precomputed = start.elapsed().as_secs_f64();
        let mut micro = Vec::with_capacity(self.options.loss.gradient_accumulation_steps);
        for _ in 0..self.options.loss.gradient_accumulation_steps {
            let idx: Vec<usize> = (0..self.options.batch_size)
                .map(|_| {
                    let i = self.order.at(self.pairs_seen);
                    self.pairs_seen += 1;
                    i
                })
                .collect();
            let reference = self.reference.as_ref().map(|all| {
                [idx.iter().map(|&i| all[i].0).collect(), idx.iter().map(|&i| all[i].1).collect()]
            });
            micro.push((idx.iter().map(|&i| self.pairs[i].clone()).collect(), reference));
        }
        let mut m = self.update(micro, start)?;
        m.reference_seconds += precomputed;
        Ok(m)
    }

    /// One optimizer step on `pairs` given by the caller (on-policy pairs sampled from the current
    /// policy), split into `gradient_accumulation_steps` micro-batches in order (the last may be smaller);
    /// the reference log-probs come from a forward with the adapter off. The data position does not move.
    pub fn step_pairs(&mut self, pairs: &[DpoPair]) -> Result<DpoStepMetrics> {
        let start = Instant::now();
        let mut seqs = Vec::with_capacity(pairs.len());
        for (i, p) in pairs.iter().enumerate() {
            let (c, r) = p.sequences(self.options.max_length).ok_or_else(|| {
                Error::Input(format!(
                    "dpo pair {i}: its prompt of {} tokens fills max_length = {}",
                    p.prompt.len(),
                    self.options.max_length.unwrap_or(0)
                ))
            })?;
            if c.tokens == r.tokens {
                return Err(Error::Input(format!("dpo pair {i}: chosen and rejected are the same tokens")));
            }
            seqs.push((c, r));
        }
        if seqs.is_empty() {
            return Err(Error::Input("dpo: step_pairs needs at least one pair".into()));
        }
        let per = seqs.len().div_ceil(self.options.loss.gradient_accumulation_steps);
        let micro = seqs.chunks(per).map(|c| (c.to_vec(), None)).collect();
        self.update(micro, start)
    }

    /// Zeroes the gradients, runs every micro-batch (reference log-probs given or computed), and steps
    /// the optimizer.
    fn update(&mut self, micro: Vec<MicroBatch>, start: Instant) -> Result<DpoStepMetrics> {
        let gpu = self.decoder.gpu().clone();
        let mut zero = gpu.batch();
        self.grads.zero(&mut zero);
        zero.submit()?;
        let step = self.optim.step_count();
        let ckpt = self.options.gradient_checkpointing;
        let (mut loss, mut tokens, mut parts, mut reference_seconds) = (0.0, 0, Vec::new(), 0.0);
        for (k, (chunk, reference)) in micro.into_iter().enumerate() {
            let mut batch = pair_batch(&chunk, self.decoder)?;
            batch.dropout_seed = dropout_seed(self.options.seed, step, k as u64, 0, 0);
            let reference = match reference {
                Some(r) => r,
                None => {
                    let ref_start = Instant::now();
                    let r = reference_logps(self.decoder, &self.adapter, &mut self.buffers, &batch, ckpt)?;
                    reference_seconds += ref_start.elapsed().as_secs_f64();
                    r
                }
            };
            let pass = pair_pass(
                self.decoder,
                &self.adapter,
                &self.grads,
                &mut self.buffers,
                &batch,
                Some(reference),
                &self.options.loss,
                ckpt,
            )?;
            loss += pass.loss.loss;
            tokens += batch.len();
            parts.push(pass.loss.metrics);
        }
        let lr = self.schedule.lr(self.optim.config().learning_rate, step);
        let mut b = gpu.batch();
        self.optim.step(&mut b, &self.grads.with_params(&self.adapter), lr, 1.0)?;
        b.submit()?;
        let grad_norm = self.optim.read_grad_norm(&gpu)?.norm;
        Ok(DpoStepMetrics {
            step: step + 1,
            loss,
            grad_norm,
            learning_rate: lr,
            dpo: DpoMetrics::mean(&parts),
            tokens,
            seconds: start.elapsed().as_secs_f64(),
            reference_seconds,
            epoch: if self.pairs.is_empty() { 0.0 } else { self.pairs_seen as f64 / self.pairs.len() as f64 },
        })
    }
}
