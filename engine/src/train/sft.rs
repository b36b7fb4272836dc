//! Supervised fine-tuning of a LoRA adapter: mean cross-entropy over the completion tokens of each
//! optimizer step (all its micro-batches together, as transformers' `num_items_in_batch`), AdamW with a
//! schedule and clipping, a deterministic data order (a seeded permutation per epoch), and the state a
//! checkpoint needs to continue bit for bit (the adapter, the optimizer, the examples seen).

use std::time::Instant;

use crate::gpu::kernels::dropout_seed;
use crate::lora::Adapter;
use crate::model::Decoder;
use crate::train::grpo::PromptOrder;
use crate::train::{
    Activations, AdamW, AdamWConfig, AdamWState, Gradients, LoraGrads, Schedule, TrainBatch, TrainSequence,
    TrainShape,
};
use crate::{Error, Result};

/// How an SFT run walks its data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftOptions {
    /// Sequences per micro-batch (one forward and backward).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Seed of the data order (and of LoRA dropout's masks).
    pub seed: u64,
    /// Permute the data each epoch (else file order).
    pub shuffle: bool,
    /// Keep only each layer's input in the forward and recompute the rest in the backward.
    pub gradient_checkpointing: bool,
}

impl Default for SftOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            gradient_accumulation_steps: 1,
            seed: 0,
            shuffle: true,
            gradient_checkpointing: false,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StepMetrics {
    /// Optimizer steps done, this one included (1-based).
    pub step: u64,
    /// Mean cross-entropy over the step's completion tokens (before the update).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate the step used.
    pub lr: f64,
    /// Tokens run through the model (prompts and completions).
    pub tokens: usize,
    /// Completion tokens the loss averaged over.
    pub completion_tokens: usize,
    /// Wall time of the step.
    pub seconds: f64,
    /// Epochs done (examples seen / data set size).
    pub epoch: f64,
}

/// GPU memory of a training run by kind, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryReport {
    /// The frozen base model (16-bit weights, norms, RoPE table).
    pub weights: u64,
    /// Saved activations (KV cache included) and the backward's scratch.
    pub activations: u64,
    /// The adapter, its gradients and the optimizer's moments.
    pub lora_and_optimizer: u64,
}

impl MemoryReport {
    /// What a LoRA trainer holds: `decoder`'s weights, its training buffers (activations and backward
    /// scratch, as large as the largest micro-batch so far), the adapter with its gradients and AdamW
    /// state, plus `extra` bytes of trained parameters and their state (a reward model's head).
    pub fn of_trainer(
        decoder: &Decoder,
        buffers: &Option<(Activations, Gradients)>,
        adapter: &Adapter,
        grads: &LoraGrads,
        optim: &AdamW,
        extra: u64,
    ) -> MemoryReport {
        MemoryReport {
            weights: decoder.weight_bytes(),
            activations: buffers.as_ref().map_or(0, |(a, g)| a.bytes() + g.bytes()),
            lora_and_optimizer: adapter.bytes() + grads.bytes() + optim.bytes() + extra,
        }
    }
}

/// An SFT run in progress.
pub struct SftTrainer<'m> {
    decoder: &'m Decoder,
    adapter: Adapter,
    grads: LoraGrads,
    optim: AdamW,
    schedule: Schedule,
    data: Vec<TrainSequence>,
    options: SftOptions,
    examples_seen: u64,
    /// The data order (a permutation per epoch).
    order: PromptOrder,
    buffers: Option<(Activations, Gradients)>,
}

impl<'m> SftTrainer<'m> {
    /// A run training `adapter` on `data` (each sequence must fit the model's context and have a
    /// completion: checked here, naming the example).
    pub fn new(
        decoder: &'m Decoder,
        adapter: Adapter,
        data: Vec<TrainSequence>,
        optim: AdamWConfig,
        schedule: Schedule,
        options: SftOptions,
    ) -> Result<Self> {
        if data.is_empty() {
            return Err(Error::Input("SFT: the data set is empty".into()));
        }
        if options.batch_size == 0 || options.gradient_accumulation_steps == 0 {
            return Err(Error::Input(
                "SFT: batch_size and gradient_accumulation_steps must be at least 1".into(),
            ));
        }
        for (i, s) in data.iter().enumerate() {
            TrainBatch::new(std::slice::from_ref(s), decoder.config().vocab, decoder.max_context())
                .map_err(|e| Error::Input(format!("SFT example {i}: {e}")))?;
        }
        let grads = LoraGrads::new(decoder.gpu(), &adapter)?;
        let optim = AdamW::new(decoder.gpu(), optim, LoraGrads::param_specs(&adapter))?;
        let order = PromptOrder::with_shuffle(data.len(), options.seed, options.shuffle);
        Ok(Self {
            decoder,
            adapter,
            grads,
            optim,
            schedule,
            data,
            options,
            examples_seen: 0,
            order,
            buffers: None,
        })
    }

    /// The adapter being trained.
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// Optimizer steps done.
    pub fn step_count(&self) -> u64 {
        self.optim.step_count()
    }

    /// Examples drawn so far (the position in the data order).
    pub fn examples_seen(&self) -> u64 {
        self.examples_seen
    }

    /// The schedule the run follows.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The optimizer's state, downloaded (for a checkpoint).
    pub fn optimizer_state(&self) -> Result<AdamWState> {
        self.optim.state(self.decoder.gpu())
    }

    /// Continues from a checkpoint: the optimizer's state and the examples seen (the adapter was
    /// given to [`SftTrainer::new`]). Nothing changes on an error.
    pub fn restore(&mut self, optimizer: &AdamWState, examples_seen: u64) -> Result<()> {
        // Each step counts its examples on: a count no run reaches (run files bound steps by i64) would
        // overflow a step later.
        if examples_seen > i64::MAX as u64 {
            return Err(Error::Input(format!(
                "examples_seen = {examples_seen}: more examples than a run can see (at most {}); the \
                 trainer state is corrupt",
                i64::MAX
            )));
        }
        self.optim.load_state(self.decoder.gpu(), optimizer)?;
        self.examples_seen = examples_seen;
        Ok(())
    }

    /// GPU memory by kind, with the activations as allocated so far (after the first step: the
    /// largest batch's).
    pub fn memory(&self) -> MemoryReport {
        MemoryReport::of_trainer(self.decoder, &self.buffers, &self.adapter, &self.grads, &self.optim, 0)
    }

    /// One optimizer step: `gradient_accumulation_steps` micro-batches of `batch_size` examples in the
    /// data order, their gradients summed, then clipping and the AdamW update at the schedule's rate.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let o = self.options;
        let mut micro = Vec::with_capacity(o.gradient_accumulation_steps);
        for _ in 0..o.gradient_accumulation_steps {
            let mut seqs = Vec::with_capacity(o.batch_size);
            for _ in 0..o.batch_size {
                let i = self.order.at(self.examples_seen);
                self.examples_seen += 1;
                seqs.push(self.data[i].clone());
            }
            let cfg = self.decoder.config();
            let mut batch = TrainBatch::new(&seqs, cfg.vocab, self.decoder.max_context())?;
            let (step, index) = (self.optim.step_count(), micro.len() as u64);
            batch.dropout_seed = dropout_seed(o.seed, step, index, 0, 0);
            micro.push(batch);
        }
        let denominator: usize = micro.iter().map(|b| b.completion_tokens).sum();
        let gpu = self.decoder.gpu().clone();
        let mut zero = gpu.batch();
        self.grads.zero(&mut zero);
        zero.submit()?;
        let mut loss_sum = 0.0f64;
        for batch in &micro {
            let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
            let checkpointing = self.options.gradient_checkpointing;
            let (acts, scratch) =
                self.decoder.grow_train_buffers(&mut self.buffers, shape, &self.adapter, checkpointing)?;
            let grad = batch.mean_grad(denominator);
            self.decoder.train_forward(acts, batch, &self.adapter, Some(&grad))?;
            self.decoder.train_backward(acts, scratch, &self.adapter, &self.grads, None)?;
            let nll = gpu.read_words::<f32>(&acts.nll.buffer, 0, batch.len())?;
            loss_sum += nll.iter().map(|&v| v as f64).sum::<f64>();
        }
        let step = self.optim.step_count();
        let lr = self.schedule.lr(self.optim.config().learning_rate, step);
        let mut b = gpu.batch();
        self.optim.step(&mut b, &self.grads.with_params(&self.adapter), lr, 1.0)?;
        b.submit()?;
        let grad_norm = self.optim.read_grad_norm(&gpu)?.norm;
        Ok(StepMetrics {
            step: step + 1,
            loss: loss_sum / denominator as f64,
            grad_norm,
            lr,
            tokens: micro.iter().map(|b| b.len()).sum(),
            completion_tokens: denominator,
            seconds: start.elapsed().as_secs_f64(),
            epoch: self.examples_seen as f64 / self.data.len() as f64,
        })
    }
}
