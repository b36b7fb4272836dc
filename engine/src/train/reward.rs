//! Bradley–Terry reward-model training, as TRL's `RewardTrainer`: the decoder with a LoRA adapter and a
//! scalar head `score = Linear(hidden, 1, bias=false)` on each sequence's last non-pad token; per pair,
//! `L = −log σ(r_c − r_r)` plus `center_rewards_coefficient · (r_c + r_r)²` when set, averaged over the
//! pairs of an optimizer step (all its micro-batches, as transformers scales accumulated losses).
//!
//! A micro-batch of B pairs is one training pass of 2B sequences (the chosen sides, then the rejected):
//! the forward stops at the final-normed hidden states, `r = h · w` is taken on the host at the score
//! rows, and the backward starts from `dL/dh = dL/dr · w` at those rows only; the head's gradient
//! `Σ dL/dr · h` joins the LoRA gradients in one AdamW (clipping over all of them, weight decay on the
//! head as transformers applies it to `score.weight`). The result is saved as PEFT saves a SEQ_CLS
//! adapter: LoRA plus `base_model.model.score.weight` (`modules_to_save = ["classifier", "score"]`), which
//! [`crate::model::RewardModel::load`] and PEFT's `AutoModelForSequenceClassification` + `PeftModel` read.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};

use crate::gpu::cpu_ref::TokenInfo;
use crate::gpu::kernels::{XENT_IGNORE, dropout_seed};
use crate::gpu::{Gpu, Tensor};
use crate::lora::{Adapter, LoraConfig};
use crate::model::Decoder;
use crate::model::config::DecoderConfig;
use crate::model::weights::SafetensorsFolder;
use crate::text::Tokenizer;
use crate::train::grpo::PromptOrder;
use crate::train::pairs::{PairOrigin, PreferencePair, render_pairs};
use crate::train::{
    Activations, AdamW, AdamWConfig, AdamWState, Gradients, LoraGrads, ParamSpec, Schedule, TrainBatch,
    TrainShape,
};
use crate::{Error, Result};

/// The name PEFT saves a SEQ_CLS adapter's score head under.
pub const PEFT_SCORE_WEIGHT: &str = "base_model.model.score.weight";

/// One tokenized pair: the reward model's two inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardPair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub language: Option<String>,
    pub origin: PairOrigin,
}

/// The reward model's input ids of `prompt + completion` as text (as [`crate::model::RewardModel`]
/// and TRL's `RewardTrainer` build a standard example): `eos_text` appended unless the text already
/// ends with it, tokenized with the tokenizer's special tokens. A chat-rendered text is tokenized as
/// it is (the template placed the special tokens), as TRL tokenizes a conversational example.
pub fn reward_input_ids(
    tok: &Tokenizer,
    eos_text: &str,
    prompt: &str,
    completion: &str,
    chat: bool,
) -> Result<Vec<u32>> {
    let mut text = format!("{prompt}{completion}");
    if chat {
        return tok.encode(&text, false);
    }
    if !text.ends_with(eos_text) {
        text.push_str(eos_text);
    }
    tok.encode(&text, true)
}

/// Pairs tokenized for a reward model, and where the ones left out were.
#[derive(Debug, Clone)]
pub struct TokenizedPairs {
    pub pairs: Vec<RewardPair>,
    /// The pairs with a side over `max_length` tokens, left out as TRL's `RewardTrainer` filters them.
    pub too_long: Vec<PairOrigin>,
}

/// Tokenizes `pairs` (read from `path`) for a reward model: chat pairs rendered with `tok`'s chat
/// template. A pair with a side longer than `max_length` tokens is left out (TRL's `RewardTrainer`
/// filters them; nothing is truncated) and listed in `too_long`; an error names the file when every
/// pair is. A pair whose two sides tokenize the same is an error naming the file and line.
pub fn tokenize_reward_pairs(
    path: &Path,
    pairs: &[PreferencePair],
    tok: &Tokenizer,
    max_length: usize,
) -> Result<TokenizedPairs> {
    let eos_id = *tok.eos_ids().first().ok_or_else(|| {
        Error::Tokenizer(format!(
            "{}: the tokenizer has no EOS token, which ends a reward model's input",
            path.display()
        ))
    })?;
    let eos = tok.id_to_token(eos_id).unwrap_or_default();
    let texts = render_pairs(path, pairs, tok)?;
    let mut out = TokenizedPairs { pairs: Vec::with_capacity(pairs.len()), too_long: Vec::new() };
    for (p, t) in pairs.iter().zip(texts) {
        let chosen = reward_input_ids(tok, &eos, &t.prompt, &t.chosen, t.chat)?;
        let rejected = reward_input_ids(tok, &eos, &t.prompt, &t.rejected, t.chat)?;
        if chosen == rejected {
            return Err(Error::format(
                path,
                format!(
                    "{}: `chosen` and `rejected` tokenize the same: there is nothing to prefer",
                    p.origin
                ),
            ));
        }
        if chosen.len().max(rejected.len()) > max_length {
            out.too_long.push(p.origin);
            continue;
        }
        out.pairs.push(RewardPair { chosen, rejected, language: p.language.clone(), origin: p.origin });
    }
    if out.pairs.is_empty() && !out.too_long.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "every pair has a side over max_length = {max_length} tokens (TRL's RewardTrainer leaves such \
                 pairs out): raise max_length or shorten the pairs"
            ),
        ));
    }
    Ok(out)
}

/// The row of `ids` a reward head reads: the rightmost token that is not `pad` (0 when all are), or the
/// last token without a pad token, as transformers' `*ForSequenceClassification` picks it.
pub fn score_position(ids: &[u32], pad: Option<u32>) -> usize {
    match pad {
        Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
        None => ids.len().saturating_sub(1),
    }
}

/// The Bradley–Terry loss of a batch, TRL's `RewardTrainer.compute_loss`: the sum over pairs of
/// `−log σ(r_c − r_r) + center · (r_c + r_r)²`, divided by `denominator` (the pairs of the optimizer
/// step), and its gradient wrt each reward (chosen, rejected).
pub fn bradley_terry(
    chosen: &[f64],
    rejected: &[f64],
    center: Option<f64>,
    denominator: usize,
) -> (f64, Vec<f64>, Vec<f64>) {
    let n = denominator.max(1) as f64;
    let c = center.unwrap_or(0.0);
    let (mut loss, mut dc, mut dr) =
        (0.0, Vec::with_capacity(chosen.len()), Vec::with_capacity(chosen.len()));
    for (&rc, &rr) in chosen.iter().zip(rejected) {
        let m = rc - rr;
        // −log σ(m) = softplus(−m), computed without overflow; dσ: −σ(−m).
        let softplus = if m > 0.0 { (-m).exp().ln_1p() } else { -m + m.exp().ln_1p() };
        let sig_neg = 1.0 / (1.0 + m.exp());
        let s = rc + rr;
        loss += softplus + c * s * s;
        dc.push((-sig_neg + 2.0 * c * s) / n);
        dr.push((sig_neg + 2.0 * c * s) / n);
    }
    (loss / n, dc, dr)
}

/// How a reward-model run walks its data (TRL `RewardConfig` names where they exist).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardOptions {
    /// Pairs per micro-batch (`per_device_train_batch_size`); a micro-batch runs 2× as many sequences.
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// Seed of the data order and of LoRA dropout's masks.
    pub seed: u64,
    pub shuffle: bool,
    pub gradient_checkpointing: bool,
    /// `center_rewards_coefficient`: adds `coef · mean((r_c + r_r)²)` (None: off, TRL's default).
    pub center_rewards_coefficient: Option<f64>,
    /// The pad token the score position skips ([`score_position`]).
    pub pad_id: Option<u32>,
}

impl Default for RewardOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            gradient_accumulation_steps: 1,
            seed: 0,
            shuffle: true,
            gradient_checkpointing: false,
            center_rewards_coefficient: None,
            pad_id: None,
        }
    }
}

/// What one optimizer step did (TRL logs the same names).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RewardStepMetrics {
    pub step: u64,
    /// The step's loss (before the update).
    pub loss: f64,
    /// Share of the step's pairs with r_c > r_r.
    pub accuracy: f64,
    /// Mean r_c − r_r.
    pub margin: f64,
    /// Mean reward over both sides.
    pub mean_reward: f64,
    pub grad_norm: f32,
    pub lr: f64,
    /// Tokens run through the model.
    pub tokens: usize,
    pub pairs: usize,
    pub seconds: f64,
    /// Epochs done (pairs seen / data set size).
    pub epoch: f64,
}

/// The scalar head to start from: `score.weight` of a `*ForSequenceClassification` base folder, else
/// transformers' initialisation of a new `Linear(hidden, 1)` (normal, std = `initializer_range` of
/// config.json, 0.02 by default), drawn from `seed`.
pub fn initial_head(base_dir: &Path, cfg: &DecoderConfig, seed: u64) -> Result<Vec<f32>> {
    let st = SafetensorsFolder::open(base_dir)?;
    if let Some(t) = st.get("score.weight")? {
        if t.shape != [1, cfg.hidden] {
            return Err(Error::TensorShape {
                path: base_dir.to_path_buf(),
                name: "score.weight".into(),
                expected: vec![1, cfg.hidden],
                found: t.shape,
            });
        }
        return Ok(t.data);
    }
    let config_path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config { path: config_path.clone(), message: format!("invalid JSON: {e}") })?;
    let std = v["initializer_range"].as_f64().unwrap_or(0.02);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5C0E_5C0E);
    Ok((0..cfg.hidden)
        .map(|_| {
            // Box–Muller.
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect())
}

/// The pad token a trained reward model's score position skips, as [`crate::model::RewardModel`] reads
/// it for an adapter: `pad_token_id` of the base's config.json, else the tokenizer's pad token, else its
/// EOS (TRL's fallback).
pub fn reward_pad_id(base_dir: &Path, tok: &Tokenizer) -> Result<Option<u32>> {
    let config_path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config { path: config_path.clone(), message: format!("invalid JSON: {e}") })?;
    Ok(v["pad_token_id"].as_u64().map(|p| p as u32).or(tok.pad_id()).or(tok.eos_ids().first().copied()))
}

/// Writes `adapter` and `head` as a PEFT SEQ_CLS adapter folder (LoRA + `score` in `modules_to_save`),
/// with `base_model` as its `base_model_name_or_path` when given (else the adapter config's).
pub fn save_reward_adapter(
    adapter: &Adapter,
    head: &[f32],
    dir: &Path,
    base_model: Option<&str>,
) -> Result<()> {
    let hidden = adapter.model_config().hidden;
    if head.len() != hidden {
        return Err(Error::Input(format!("a score head of {} values for hidden size {hidden}", head.len())));
    }
    adapter.save_peft_with(dir, &[(PEFT_SCORE_WEIGHT, vec![1, hidden], head)], |c| {
        c["task_type"] = serde_json::json!("SEQ_CLS");
        c["modules_to_save"] = serde_json::json!(["classifier", "score"]);
        if let Some(base) = base_model {
            c["base_model_name_or_path"] = serde_json::json!(base);
        }
    })
}

/// Reads a PEFT SEQ_CLS adapter folder back for training: the adapter and its score head. A folder
/// without a head (a causal-LM adapter) is an error saying so.
pub fn load_reward_adapter(gpu: Arc<Gpu>, dir: &Path, model: &DecoderConfig) -> Result<(Adapter, Vec<f32>)> {
    let config_path = dir.join(crate::lora::CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config { path: config_path.clone(), message: format!("invalid JSON: {e}") })?;
    if v["task_type"].as_str() != Some("SEQ_CLS") {
        return Err(Error::Config {
            path: config_path,
            message: format!(
                "task_type {}: a reward model's adapter is a SEQ_CLS adapter with a `score` head; this one has \
                 no head",
                v["task_type"]
            ),
        });
    }
    v["modules_to_save"] = serde_json::Value::Null;
    let lora = LoraConfig::from_peft_json(&config_path, &v)?;
    let (adapter, kept) = Adapter::load_peft_keeping(gpu, dir, lora, model, &[PEFT_SCORE_WEIGHT])?;
    let weights = dir.join(crate::lora::WEIGHTS_FILE);
    let (_, t) = kept
        .into_iter()
        .next()
        .ok_or_else(|| Error::MissingTensor { path: weights.clone(), name: PEFT_SCORE_WEIGHT.into() })?;
    if t.shape != [1, model.hidden] {
        return Err(Error::TensorShape {
            path: weights,
            name: PEFT_SCORE_WEIGHT.into(),
            expected: vec![1, model.hidden],
            found: t.shape,
        });
    }
    Ok((adapter, t.data))
}

/// A flat pass of `seqs` (no targets: the head reads hidden states) and the flat row of each score.
fn score_batch(
    seqs: &[&[u32]],
    pad: Option<u32>,
    vocab: usize,
    max_context: usize,
) -> Result<(TrainBatch, Vec<u32>)> {
    let total = seqs.iter().map(|s| s.len()).sum();
    let mut b = TrainBatch {
        tokens: Vec::with_capacity(total),
        info: Vec::with_capacity(total),
        targets: vec![XENT_IGNORE; total],
        starts: Vec::with_capacity(seqs.len() + 1),
        slots: seqs.len(),
        span: 0,
        completion_tokens: 0,
        dropout_seed: 0,
        temperature: 1.0,
        shared: Vec::new(),
    };
    let mut rows = Vec::with_capacity(seqs.len());
    for (s, ids) in seqs.iter().enumerate() {
        if ids.is_empty() || ids.len() > max_context {
            return Err(Error::Input(format!(
                "reward model input {s}: {} tokens; the model takes 1 to {max_context}",
                ids.len()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!(
                "reward model input {s}: token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        b.starts.push(b.tokens.len());
        rows.push((b.tokens.len() + score_position(ids, pad)) as u32);
        for (pos, &t) in ids.iter().enumerate() {
            b.tokens.push(t);
            b.info.push(TokenInfo { pos: pos as u32, slot: s as u32, n_keys: pos as u32 + 1 });
        }
        b.span = b.span.max(ids.len());
    }
    b.starts.push(b.tokens.len());
    Ok((b, rows))
}

/// `h · w` of each row of `hidden` (R, d), accumulated in f64 as [`crate::model::RewardModel`] does.
fn dot_rows(hidden: &[f32], w: &[f32]) -> Vec<f64> {
    hidden
        .chunks_exact(w.len())
        .map(|h| h.iter().zip(w).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum())
        .collect()
}

/// What one pass over a micro-batch gave.
struct PassOutput {
    /// Rewards of the chosen sides, then of the rejected.
    chosen: Vec<f64>,
    rejected: Vec<f64>,
    /// The head's gradient (zero without a backward).
    dhead: Vec<f64>,
    tokens: usize,
}

/// A reward-model run in progress.
pub struct RewardTrainer<'m> {
    decoder: &'m Decoder,
    adapter: Adapter,
    grads: LoraGrads,
    /// `score.weight` (1, hidden), trained.
    head: Tensor,
    /// Its gradient, summed over a step's micro-batches on the host and uploaded before the update.
    head_grad: Tensor,
    optim: AdamW,
    schedule: Schedule,
    data: Vec<RewardPair>,
    options: RewardOptions,
    examples_seen: u64,
    order: PromptOrder,
    buffers: Option<(Activations, Gradients)>,
}

impl<'m> RewardTrainer<'m> {
    /// A run training `adapter` and the scalar head `head` (hidden) on `data`.
    pub fn new(
        decoder: &'m Decoder,
        adapter: Adapter,
        head: &[f32],
        data: Vec<RewardPair>,
        optim: AdamWConfig,
        schedule: Schedule,
        options: RewardOptions,
    ) -> Result<Self> {
        if data.is_empty() {
            return Err(Error::Input("reward model: the data set is empty".into()));
        }
        if options.batch_size == 0 || options.gradient_accumulation_steps == 0 {
            return Err(Error::Input(
                "reward model: batch_size and gradient_accumulation_steps must be at least 1".into(),
            ));
        }
        let cfg = decoder.config();
        if head.len() != cfg.hidden {
            return Err(Error::Input(format!(
                "a score head of {} values for hidden size {}",
                head.len(),
                cfg.hidden
            )));
        }
        for p in &data {
            score_batch(&[&p.chosen, &p.rejected], options.pad_id, cfg.vocab, decoder.max_context())
                .map_err(|e| Error::Input(format!("reward pair at {}: {e}", p.origin)))?;
        }
        let gpu = decoder.gpu();
        let grads = LoraGrads::new(gpu, &adapter)?;
        let mut specs = LoraGrads::param_specs(&adapter);
        specs.push(ParamSpec { name: PEFT_SCORE_WEIGHT.into(), len: cfg.hidden, weight_decay: true });
        let optim = AdamW::new(gpu, optim, specs)?;
        let head_t = gpu.upload_f32("score.weight", head, &[1, cfg.hidden])?;
        let head_grad = gpu.zeros("grad.score.weight", &[1, cfg.hidden])?;
        let order = PromptOrder::with_shuffle(data.len(), options.seed, options.shuffle);
        Ok(Self {
            decoder,
            adapter,
            grads,
            head: head_t,
            head_grad,
            optim,
            schedule,
            data,
            options,
            examples_seen: 0,
            order,
            buffers: None,
        })
    }

    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// The score head, downloaded.
    pub fn head(&self) -> Result<Vec<f32>> {
        self.decoder.gpu().read_f32(&self.head)
    }

    /// GPU memory by kind, with the activations as allocated so far (after the first step: the
    /// largest micro-batch's); the head and its gradient count with the LoRA.
    pub fn memory(&self) -> crate::train::MemoryReport {
        let head = 2 * 4 * self.decoder.config().hidden as u64;
        let (decoder, buffers) = (self.decoder, &self.buffers);
        crate::train::MemoryReport::of_trainer(
            decoder,
            buffers,
            &self.adapter,
            &self.grads,
            &self.optim,
            head,
        )
    }

    pub fn step_count(&self) -> u64 {
        self.optim.step_count()
    }

    pub fn examples_seen(&self) -> u64 {
        self.examples_seen
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The data set size (pairs).
    pub fn pairs(&self) -> usize {
        self.data.len()
    }

    pub fn optimizer_state(&self) -> Result<AdamWState> {
        self.optim.state(self.decoder.gpu())
    }

    /// Continues from a checkpoint: the optimizer's state and the pairs seen (the adapter and head were
    /// given to [`RewardTrainer::new`]).
    pub fn restore(&mut self, optimizer: &AdamWState, examples_seen: u64) -> Result<()> {
        if examples_seen > i64::MAX as u64 {
            return Err(Error::Input(format!(
                "examples_seen = {examples_seen}: the trainer state is corrupt"
            )));
        }
        self.optim.load_state(self.decoder.gpu(), optimizer)?;
        self.examples_seen = examples_seen;
        Ok(())
    }

    /// Saves the adapter and head as a PEFT SEQ_CLS adapter in `dir` (`base_model`: see
    /// [`save_reward_adapter`]).
    pub fn save(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        save_reward_adapter(&self.adapter, &self.head()?, dir, base_model)
    }

    /// The rewards (chosen, rejected) of `pairs` with the current adapter and head, and, with `grad`, the
    /// backward of the Bradley–Terry loss over `denominator` pairs (LoRA gradients added into the
    /// trainer's, the head's returned).
    fn pass(
        &mut self,
        pairs: &[usize],
        head: &[f32],
        seed: u64,
        denominator: Option<usize>,
    ) -> Result<PassOutput> {
        let cfg = self.decoder.config();
        let seqs: Vec<&[u32]> = pairs
            .iter()
            .map(|&i| self.data[i].chosen.as_slice())
            .chain(pairs.iter().map(|&i| self.data[i].rejected.as_slice()))
            .collect();
        let (mut batch, rows) =
            score_batch(&seqs, self.options.pad_id, cfg.vocab, self.decoder.max_context())?;
        batch.dropout_seed = seed;
        let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
        let (acts, scratch) = self.decoder.grow_train_buffers(
            &mut self.buffers,
            shape,
            &self.adapter,
            self.options.gradient_checkpointing,
        )?;
        let hidden = self.decoder.train_forward_hidden(acts, &batch, &self.adapter, &rows)?;
        let r = dot_rows(&hidden, head);
        let (rc, rr) = (r[..pairs.len()].to_vec(), r[pairs.len()..].to_vec());
        let mut dhead = vec![0.0f64; head.len()];
        if let Some(n) = denominator {
            let (_, dc, dr) = bradley_terry(&rc, &rr, self.options.center_rewards_coefficient, n);
            let dreward: Vec<f64> = dc.into_iter().chain(dr).collect();
            let d = head.len();
            let mut drows = vec![0.0f32; rows.len() * d];
            for (j, &g) in dreward.iter().enumerate() {
                let h = &hidden[j * d..(j + 1) * d];
                for k in 0..d {
                    drows[j * d + k] = (g * f64::from(head[k])) as f32;
                    dhead[k] += g * f64::from(h[k]);
                }
            }
            self.decoder.train_backward_hidden(acts, scratch, &self.adapter, &self.grads, &rows, &drows)?;
        }
        Ok(PassOutput { chosen: rc, rejected: rr, dhead, tokens: batch.len() })
    }

    /// The rewards of pairs `indices` of the data with the current adapter and head (no update).
    pub fn rewards(&mut self, indices: &[usize]) -> Result<(Vec<f64>, Vec<f64>)> {
        let head = self.head()?;
        let out = self.pass(indices, &head, 0, None)?;
        Ok((out.chosen, out.rejected))
    }

    /// The loss, the head's gradient and the LoRA gradients (left in the trainer's gradient buffers,
    /// see [`RewardTrainer::lora_grads`]) of pairs `indices` as one step, without updating anything.
    pub fn loss_and_grads(&mut self, indices: &[usize]) -> Result<(f64, Vec<f64>)> {
        let head = self.head()?;
        let mut zero = self.decoder.gpu().batch();
        self.grads.zero(&mut zero);
        zero.submit()?;
        let out = self.pass(indices, &head, 0, Some(indices.len()))?;
        let c = self.options.center_rewards_coefficient;
        let (loss, _, _) = bradley_terry(&out.chosen, &out.rejected, c, indices.len());
        Ok((loss, out.dhead))
    }

    /// The LoRA gradients of the last step or [`RewardTrainer::loss_and_grads`].
    pub fn lora_grads(&self) -> &LoraGrads {
        &self.grads
    }

    /// One optimizer step: `gradient_accumulation_steps` micro-batches of `batch_size` pairs in the data
    /// order, gradients summed, then clipping and the AdamW update at the schedule's rate.
    pub fn step(&mut self) -> Result<RewardStepMetrics> {
        let start = Instant::now();
        let o = self.options;
        let denominator = o.batch_size * o.gradient_accumulation_steps;
        let head = self.head()?;
        let gpu = self.decoder.gpu().clone();
        let mut zero = gpu.batch();
        self.grads.zero(&mut zero);
        zero.submit()?;
        let step = self.optim.step_count();
        let (mut all_c, mut all_r) = (Vec::with_capacity(denominator), Vec::with_capacity(denominator));
        let mut dhead = vec![0.0f64; head.len()];
        let mut tokens = 0;
        for micro in 0..o.gradient_accumulation_steps {
            let mut idx = Vec::with_capacity(o.batch_size);
            for _ in 0..o.batch_size {
                let i = self.order.at(self.examples_seen);
                self.examples_seen += 1;
                idx.push(i);
            }
            let seed = dropout_seed(o.seed, step, micro as u64, 0, 0);
            let out = self.pass(&idx, &head, seed, Some(denominator))?;
            for (a, b) in dhead.iter_mut().zip(out.dhead) {
                *a += b;
            }
            all_c.extend(out.chosen);
            all_r.extend(out.rejected);
            tokens += out.tokens;
        }
        let (loss, _, _) = bradley_terry(&all_c, &all_r, o.center_rewards_coefficient, denominator);
        let dhead: Vec<f32> = dhead.iter().map(|&v| v as f32).collect();
        gpu.write_f32(&self.head_grad, &dhead);
        let lr = self.schedule.lr(self.optim.config().learning_rate, step);
        let mut params = self.grads.with_params(&self.adapter);
        params.push((&self.head, &self.head_grad));
        let mut b = gpu.batch();
        self.optim.step(&mut b, &params, lr, 1.0)?;
        b.submit()?;
        let grad_norm = self.optim.read_grad_norm(&gpu)?.norm;
        let n = denominator as f64;
        let margins = all_c.iter().zip(&all_r).map(|(c, r)| c - r);
        Ok(RewardStepMetrics {
            step: step + 1,
            loss,
            accuracy: all_c.iter().zip(&all_r).filter(|(c, r)| c > r).count() as f64 / n,
            margin: margins.sum::<f64>() / n,
            mean_reward: all_c.iter().chain(&all_r).sum::<f64>() / (2.0 * n),
            grad_norm,
            lr,
            tokens,
            pairs: denominator,
            seconds: start.elapsed().as_secs_f64(),
            epoch: self.examples_seen as f64 / self.data.len() as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bradley_terry_matches_its_formula_and_finite_differences() {
        let (c, r) = (vec![0.3, -1.2, 40.0], vec![0.1, 2.0, -45.0]);
        for center in [None, Some(0.01)] {
            let (loss, dc, dr) = bradley_terry(&c, &r, center, 4);
            let k = center.unwrap_or(0.0);
            let want: f64 = c
                .iter()
                .zip(&r)
                .map(|(a, b)| -(1.0 / (1.0 + (-(a - b)).exp())).ln() + k * (a + b) * (a + b))
                .sum::<f64>()
                / 4.0;
            assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
            for i in 0..c.len() {
                let h = 1e-6;
                let mut cp = c.clone();
                cp[i] += h;
                let fd = (bradley_terry(&cp, &r, center, 4).0 - loss) / h;
                assert!((fd - dc[i]).abs() < 1e-5, "dchosen[{i}] {} vs {fd}", dc[i]);
                let mut rp = r.clone();
                rp[i] += h;
                let fd = (bradley_terry(&c, &rp, center, 4).0 - loss) / h;
                assert!((fd - dr[i]).abs() < 1e-5, "drejected[{i}] {} vs {fd}", dr[i]);
            }
        }
    }

    #[test]
    fn the_score_sits_on_the_last_non_pad_token() {
        assert_eq!(score_position(&[5, 6, 7, 0, 0], Some(0)), 2);
        assert_eq!(score_position(&[0, 0], Some(0)), 0);
        assert_eq!(score_position(&[5, 6, 0], None), 2);
    }
}
