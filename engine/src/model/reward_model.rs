//! Scalar-head reward models on the GPU: a decoder body with `score = Linear(hidden, 1, bias=false)` on
//! the final-normed hidden state of each sequence's last non-pad token, as transformers'
//! `*ForSequenceClassification` (num_labels = 1) computes it. Loaded from the folder such a model is
//! saved in (config.json + model.safetensors with the base weights and `score.weight`), or from a PEFT
//! sequence-classification adapter (LoRA + `score` in `modules_to_save`) over its base model.
//!
//! Input, as TRL's `RewardTrainer` builds a standard (non-conversational) example: the text
//! `prompt + completion + eos_token` (EOS appended unless the completion already ends with it),
//! tokenized with the tokenizer's special tokens (BOS where its post-processor adds one). A chat prompt
//! ([`RmPrompt::Chat`]) is scored as TRL builds a conversational example: the messages with the
//! completion as the assistant's reply, rendered whole with the reward model's chat template.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::gpu::Gpu;
use crate::gpu::cpu_ref::TokenInfo;
use crate::lora::{Adapter, LoraConfig};
use crate::model::config::DecoderConfig;
use crate::model::decoder::{Decoder, MAX_STEP_TOKENS};
use crate::model::weights::{HostTensor, SafetensorsFolder, WeightSource};
use crate::text::{ChatMessage, Tokenizer};
use crate::{Error, Result};

/// Most tokens in one scoring pass (longer batches are split).
const TOKENS_PER_PASS: usize = 8192;
/// Largest attention-score buffer (T · H · longest sequence · 4 bytes) of one pass.
const SCORE_BYTES_PER_PASS: usize = 256 << 20;
/// Names PEFT saves a sequence-classification adapter's `score` head under (`modules_to_save`).
const PEFT_SCORE: [&str; 2] =
    ["base_model.model.score.weight", "base_model.model.score.modules_to_save.default.weight"];

/// What a reward model reads of a prompt.
#[derive(Debug, Clone, Copy)]
pub enum RmPrompt<'a> {
    /// Plain text: the input is `prompt + completion + eos_token`.
    Text(&'a str),
    /// Chat messages: the input is the conversation with the completion as the assistant's reply,
    /// rendered with the reward model's chat template (as its conversational training pairs were).
    Chat(&'a [ChatMessage]),
}

/// A scalar-head reward model resident on the GPU.
pub struct RewardModel {
    decoder: Decoder,
    tokenizer: Tokenizer,
    /// LoRA of a PEFT sequence-classification adapter, applied in every pass.
    adapter: Option<Adapter>,
    /// `score.weight` (hidden).
    head: Vec<f32>,
    /// The token whose rows are skipped when looking for a sequence's last token (`None`: last token).
    pad_id: Option<u32>,
    /// `eos_token` as text, appended to every input.
    eos: String,
    dir: PathBuf,
}

impl std::fmt::Debug for RewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardModel")
            .field("dir", &self.dir)
            .field("arch", &self.decoder.config().arch)
            .field("lora", &self.adapter.as_ref().map(|a| a.config().r))
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Config { path: path.to_path_buf(), message: format!("invalid JSON: {e}") })
}

fn config_err(path: &Path, message: String) -> Error {
    Error::Config { path: path.to_path_buf(), message }
}

/// Checks that config.json describes a one-label sequence-classification model.
fn check_seq_cls(path: &Path, v: &Value) -> Result<()> {
    let archs: Vec<&str> = v["architectures"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !archs.iter().any(|a| a.ends_with("ForSequenceClassification")) {
        return Err(config_err(
            path,
            format!(
                "`architectures` is {archs:?}: a reward model is a scalar-head *ForSequenceClassification \
                 checkpoint (AutoModelForSequenceClassification, num_labels = 1), or a PEFT SEQ_CLS adapter \
                 folder; a causal LM has no score head"
            ),
        ));
    }
    let labels = v["id2label"].as_object().map_or(1, |m| m.len());
    if labels != 1 {
        return Err(config_err(
            path,
            format!("{labels} labels (`id2label`): a reward model has num_labels = 1"),
        ));
    }
    Ok(())
}

/// `score.weight` of shape [1, hidden] as a vector, or an error naming `file` and `name`.
fn head_of(file: &Path, name: &str, t: Option<HostTensor>, hidden: usize) -> Result<Vec<f32>> {
    let t = t.ok_or_else(|| Error::MissingTensor { path: file.to_path_buf(), name: name.to_string() })?;
    if t.shape != [1, hidden] {
        return Err(Error::TensorShape {
            path: file.to_path_buf(),
            name: name.to_string(),
            expected: vec![1, hidden],
            found: t.shape,
        });
    }
    Ok(t.data)
}

/// The folder of a PEFT adapter's `base_model_name_or_path`: as given, or relative to the adapter.
fn resolve_base(dir: &Path, config_path: &Path, base: Option<&str>) -> Result<PathBuf> {
    let base = base.ok_or_else(|| {
        config_err(
            config_path,
            "no `base_model_name_or_path`: the adapter does not say which model it adapts".into(),
        )
    })?;
    let given = PathBuf::from(base);
    let candidates = if given.is_absolute() { vec![given] } else { vec![dir.join(&given), given] };
    candidates.into_iter().find(|p| p.join("config.json").is_file()).ok_or_else(|| {
        config_err(
            config_path,
            format!(
                "`base_model_name_or_path` = {base:?} is not a model folder (config.json) here or beside the \
                 adapter; babelrl does not download models: point it at a local copy"
            ),
        )
    })
}

impl RewardModel {
    /// Loads the reward model in `dir`: a `*ForSequenceClassification` folder, or a PEFT SEQ_CLS adapter
    /// folder (adapter_config.json) whose `base_model_name_or_path` is a local model folder.
    pub fn load(gpu: Arc<Gpu>, dir: &Path) -> Result<RewardModel> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no reward model folder here"),
            ));
        }
        let adapter_config = dir.join(crate::lora::CONFIG_FILE);
        let (body_dir, adapter, head) = if adapter_config.is_file() {
            let mut v = read_json(&adapter_config)?;
            let task = v["task_type"].as_str().unwrap_or("");
            if task != "SEQ_CLS" {
                return Err(config_err(
                    &adapter_config,
                    format!(
                        "task_type {task:?}: a reward model adapter is a PEFT SEQ_CLS adapter (score head in \
                         modules_to_save); this one adapts a causal LM"
                    ),
                ));
            }
            let saved: Vec<String> = v["modules_to_save"]
                .as_array()
                .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            if !saved.iter().any(|m| m == "score") || saved.iter().any(|m| m != "score" && m != "classifier")
            {
                return Err(config_err(
                    &adapter_config,
                    format!(
                        "modules_to_save = {saved:?}: babelrl reads the `score` head (and nothing else) from it"
                    ),
                ));
            }
            // The score head is read below; what is left is a plain LoRA config.
            v["modules_to_save"] = Value::Null;
            let lora = LoraConfig::from_peft_json(&adapter_config, &v)?;
            let base = resolve_base(dir, &adapter_config, lora.base_model.as_deref())?;
            let cfg = DecoderConfig::from_hf_file(&base.join("config.json"))?;
            let (adapter, mut kept) =
                Adapter::load_peft_keeping(Arc::clone(&gpu), dir, lora, &cfg, &PEFT_SCORE)?;
            let weights = dir.join(crate::lora::WEIGHTS_FILE);
            let (name, t) = match kept.pop() {
                Some((n, t)) => (n, Some(t)),
                None => (PEFT_SCORE[0].to_string(), None),
            };
            (base, Some(adapter), head_of(&weights, &name, t, cfg.hidden)?)
        } else {
            let config_path = dir.join("config.json");
            check_seq_cls(&config_path, &read_json(&config_path)?)?;
            let cfg = DecoderConfig::from_hf_file(&config_path)?;
            let st = SafetensorsFolder::open(dir)?;
            let file = st.file_of("score.weight").unwrap_or(&dir.join("model.safetensors")).to_path_buf();
            let head = head_of(&file, "score.weight", st.get("score.weight")?, cfg.hidden)?;
            (dir.to_path_buf(), None, head)
        };
        Self::load_body(gpu, dir, &body_dir, adapter, head)
    }

    fn load_body(
        gpu: Arc<Gpu>,
        dir: &Path,
        body_dir: &Path,
        adapter: Option<Adapter>,
        head: Vec<f32>,
    ) -> Result<RewardModel> {
        let config_path = body_dir.join("config.json");
        let cfg = DecoderConfig::from_hf_file(&config_path)?;
        // The tokenizer saved with the adapter (it may add a pad token), else the base model's.
        let tok_path = [dir, body_dir].iter().map(|d| d.join("tokenizer.json")).find(|p| p.is_file());
        let tok_path = tok_path.ok_or_else(|| {
            Error::Tokenizer(format!("{}: no tokenizer.json (nor in {})", dir.display(), body_dir.display()))
        })?;
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        let eos_id = *tokenizer.eos_ids().first().ok_or_else(|| {
            Error::Tokenizer(format!(
                "{}: no eos_token (tokenizer_config.json): the reward model's input ends with it",
                tok_path.display()
            ))
        })?;
        let eos = tokenizer.id_to_token(eos_id).unwrap_or_default();
        // transformers finds the last token by `pad_token_id` of config.json (None: the last token). A
        // PEFT adapter's training set it on the model (TRL: the tokenizer's pad, else its eos) without
        // saving the base config, so the same fallback applies there.
        let pad_id = match read_json(&config_path)?["pad_token_id"].as_u64() {
            Some(p) => Some(p as u32),
            None if adapter.is_some() => Some(tokenizer.pad_id().unwrap_or(eos_id)),
            None => None,
        };
        let decoder =
            Decoder::load_headless(gpu, &WeightSource::Safetensors(SafetensorsFolder::open(body_dir)?), cfg)?;
        if let Some(a) = &adapter {
            a.check_fits(decoder.gpu(), decoder.config())?;
        }
        log::info!(
            "reward model {}: {:?}, {} layers, hidden {}{}",
            dir.display(),
            decoder.config().arch,
            decoder.config().layers,
            decoder.config().hidden,
            adapter.as_ref().map_or(String::new(), |a| format!(
                ", LoRA r = {} over {}",
                a.config().r,
                body_dir.display()
            ))
        );
        Ok(RewardModel { decoder, tokenizer, adapter, head, pad_id, eos, dir: dir.to_path_buf() })
    }

    /// The folder it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The decoder body (loaded without its LM head).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The tokenizer of the inputs.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The input ids of `(prompt, completion)`: `prompt + completion + eos_token` (EOS appended unless
    /// already there), with the tokenizer's special tokens, as TRL's `RewardTrainer` tokenizes it.
    pub fn input_ids(&self, prompt: &str, completion: &str) -> Result<Vec<u32>> {
        let mut text = format!("{prompt}{completion}");
        if !text.ends_with(&self.eos) {
            text.push_str(&self.eos);
        }
        let ids = self.tokenizer.encode(&text, true)?;
        self.check_length(&ids)?;
        Ok(ids)
    }

    /// The input ids of a chat prompt answered by `completion`: `messages` + the assistant's reply,
    /// rendered with the reward model's chat template and tokenized without adding special tokens, as
    /// TRL tokenizes a conversational reward-model example.
    pub fn chat_input_ids(&self, messages: &[ChatMessage], completion: &str) -> Result<Vec<u32>> {
        let template = self.tokenizer.chat_template_renderer()?.ok_or_else(|| {
            Error::Input(format!(
                "reward model {}: a chat prompt needs the reward model's chat template and its tokenizer \
                 has none: give the prompt as text",
                self.dir.display()
            ))
        })?;
        let mut conversation = messages.to_vec();
        conversation.push(ChatMessage::new("assistant", completion));
        let ids = self.tokenizer.encode(&template.render(&conversation, false)?, false)?;
        self.check_length(&ids)?;
        Ok(ids)
    }

    fn check_length(&self, ids: &[u32]) -> Result<()> {
        let max = self.decoder.max_context();
        if ids.is_empty() || ids.len() > max {
            return Err(Error::Input(format!(
                "reward model {}: an input of {} tokens; it takes 1 to {max}",
                self.dir.display(),
                ids.len()
            )));
        }
        Ok(())
    }

    /// Scores of `(prompts[i], completions[i])`, text or chat prompts, in order.
    pub fn score_prompts(&self, prompts: &[RmPrompt<'_>], completions: &[String]) -> Result<Vec<f32>> {
        if prompts.len() != completions.len() {
            return Err(Error::Input(format!(
                "{} prompts but {} completions to score",
                prompts.len(),
                completions.len()
            )));
        }
        let seqs = prompts
            .iter()
            .zip(completions)
            .map(|(p, c)| match p {
                RmPrompt::Text(p) => self.input_ids(p, c),
                RmPrompt::Chat(m) => self.chat_input_ids(m, c),
            })
            .collect::<Result<Vec<_>>>()?;
        self.score_ids(&seqs)
    }

    /// The row of `ids` the head reads: the rightmost token that is not the pad token (position 0 when
    /// all are), or the last token when there is no pad token, as transformers picks it.
    pub fn score_position(&self, ids: &[u32]) -> usize {
        match self.pad_id {
            Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
            None => ids.len().saturating_sub(1),
        }
    }

    /// Scores of `(prompts[i], completions[i])`, in order.
    pub fn score(&self, prompts: &[String], completions: &[String]) -> Result<Vec<f32>> {
        if prompts.len() != completions.len() {
            return Err(Error::Input(format!(
                "{} prompts but {} completions to score",
                prompts.len(),
                completions.len()
            )));
        }
        let seqs =
            prompts.iter().zip(completions).map(|(p, c)| self.input_ids(p, c)).collect::<Result<Vec<_>>>()?;
        self.score_ids(&seqs)
    }

    /// Scores of token sequences (as [`RewardModel::input_ids`] makes them), in order; all run as flat
    /// batches of at most 8192 tokens ([`RewardModel::pass_ranges`]).
    pub fn score_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let mut out = Vec::with_capacity(seqs.len());
        for range in self.pass_ranges(&lengths) {
            out.extend(self.pass(&seqs[range])?);
        }
        Ok(out)
    }

    /// How [`RewardModel::score_ids`] splits sequences of `lengths` into GPU passes: consecutive ranges,
    /// each as many sequences as fit 8192 tokens, the attention scores' budget and the model's rows per
    /// pass (a group of a few hundred short samples is one pass).
    pub fn pass_ranges(&self, lengths: &[usize]) -> Vec<std::ops::Range<usize>> {
        let heads = self.decoder.config().n_head;
        let mut out = Vec::new();
        let mut start = 0;
        while start < lengths.len() {
            let (mut tokens, mut longest, mut end) = (0, 0, start);
            while end < lengths.len() {
                let (t, l) = (tokens + lengths[end], longest.max(lengths[end]));
                let too_big =
                    t > TOKENS_PER_PASS.min(MAX_STEP_TOKENS) || t * heads * l * 4 > SCORE_BYTES_PER_PASS;
                if end > start && (too_big || end - start >= self.decoder.max_logit_rows()) {
                    break;
                }
                (tokens, longest, end) = (t, l, end + 1);
            }
            out.push(start..end);
            start = end;
        }
        out
    }

    fn pass(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let ctx = seqs.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let cache = self.decoder.new_cache(seqs.len(), ctx)?;
        let (mut tokens, mut info, mut rows) = (Vec::new(), Vec::new(), Vec::with_capacity(seqs.len()));
        for (slot, ids) in seqs.iter().enumerate() {
            if ids.is_empty() {
                return Err(Error::Input("an empty input to the reward model".into()));
            }
            rows.push((tokens.len() + self.score_position(ids)) as u32);
            for (pos, &t) in ids.iter().enumerate() {
                tokens.push(t);
                info.push(TokenInfo { pos: pos as u32, slot: slot as u32, n_keys: pos as u32 + 1 });
            }
        }
        let hidden = self.decoder.forward_hidden(&cache, &tokens, &info, &rows, self.adapter.as_ref())?;
        let h = self.decoder.gpu().read_f32(&hidden)?;
        let d = self.decoder.config().hidden;
        Ok(h.chunks_exact(d)
            .map(|row| {
                row.iter().zip(&self.head).map(|(&x, &w)| f64::from(x) * f64::from(w)).sum::<f64>() as f32
            })
            .collect())
    }
}
