//! The `[reward_model_training]` job of `babelrl train`: a Bradley–Terry reward model (LoRA + scalar
//! head) trained from preference pairs, with the run loop's progress, metrics.jsonl (loss, accuracy,
//! margin), atomic checkpoints (a SEQ_CLS adapter with its head, the optimizer, the data position) and a
//! bit-exact `--resume`; the result is `OUT/reward-model`, a PEFT SEQ_CLS adapter over the base.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use babelrl::gpu::Gpu;
use babelrl::lora::Adapter;
use babelrl::model::weights::{SafetensorsFolder, WeightSource};
use babelrl::model::{Decoder, DecoderConfig, LanguageModel};
use babelrl::text::Tokenizer;
use babelrl::train::reward::initial_head;
use babelrl::train::{
    RewardTrainer, load_reward_adapter, prune_checkpoints, read_pairs, reward_pad_id, save_checkpoint_with,
    save_reward_adapter, tokenize_reward_pairs,
};

use crate::train_cmd::{DataPosition, Session, StepLog};

/// The folder under `[output] dir` the trained reward model is written to.
pub const REWARD_MODEL_DIR: &str = "reward-model";

/// The model's body without its LM head, and its tokenizer: a reward model's base is a Hugging Face
/// folder (the saved adapter names it as `base_model_name_or_path`, which PEFT and babelrl load).
pub fn load_body(gpu: Arc<Gpu>, path: &Path) -> anyhow::Result<LanguageModel> {
    if !path.is_dir() {
        bail!(
            "{}: a reward model trains on a Hugging Face model folder (config.json, safetensors, \
             tokenizer.json), which its adapter names as its base; a GGUF file cannot be that base: write one with `python scripts/gguf_to_hf.py GGUF OUT` (needs transformers and gguf) and set [model] path to OUT",
            path.display()
        );
    }
    let cfg = DecoderConfig::from_hf_file(&path.join("config.json"))?;
    let tokenizer = Tokenizer::from_file(path.join("tokenizer.json"))?;
    let decoder =
        Decoder::load_headless(gpu, &WeightSource::Safetensors(SafetensorsFolder::open(path)?), cfg)?;
    Ok(LanguageModel { decoder, tokenizer: Some(tokenizer), path: path.to_path_buf() })
}

/// The adapter and head to train: the checkpoint's, `[lora] init_from`'s (a SEQ_CLS adapter brings its
/// head; a causal-LM adapter gets a new one), or fresh ones.
fn start(s: &Session, base: &str) -> anyhow::Result<(Adapter, Vec<f32>)> {
    let (gpu, cfg) = (s.gpu.clone(), s.lm.decoder.config());
    if let Some(c) = &s.checkpoint {
        if c.state.base_model != s.fingerprint {
            bail!(
                "{}: the checkpoint was trained on {}, this run loads {}",
                c.dir.display(),
                c.state.base_model,
                s.fingerprint
            );
        }
        return Ok(load_reward_adapter(gpu, &c.adapter_dir, cfg)?);
    }
    let head = || initial_head(&s.lm.path, cfg, s.run.lora.seed);
    if let Some(dir) = &s.run.lora.init_from {
        let config = std::fs::read_to_string(dir.join(babelrl::lora::CONFIG_FILE)).unwrap_or_default();
        if config.contains("\"SEQ_CLS\"") {
            return load_reward_adapter(gpu, dir, cfg)
                .with_context(|| format!("[lora] init_from = {}", dir.display()));
        }
        let a = Adapter::load_peft(gpu, dir, cfg)
            .with_context(|| format!("[lora] init_from = {}", dir.display()))?;
        return Ok((a, head()?));
    }
    let mut lora = s.run.lora_config()?;
    lora.base_model = Some(base.to_string());
    Ok((Adapter::init(gpu, lora, cfg, s.run.lora.seed)?, head()?))
}

pub fn run(s: &Session) -> anyhow::Result<()> {
    let section = s.run.reward_training()?.clone();
    let tok = s.lm.tokenizer()?;
    let pairs = read_pairs(&section.data)?;
    let tokenized = tokenize_reward_pairs(&section.data, &pairs, tok, section.max_length)?;
    if let Some(first) = tokenized.too_long.first() {
        eprintln!(
            "{}: left out {} of {} pairs with a side over max_length = {} tokens, as TRL's RewardTrainer \
             does (the first: {first})",
            section.data.display(),
            tokenized.too_long.len(),
            pairs.len(),
            section.max_length
        );
    }
    let data = tokenized.pairs;
    let n_pairs = data.len();
    let base_path = std::fs::canonicalize(&s.lm.path).unwrap_or_else(|_| s.lm.path.clone());
    let base = base_path.to_string_lossy().into_owned();
    let (adapter, head) = start(s, &base)?;
    let total = section.total_steps(n_pairs);
    let schedule = s.run.schedule(total)?;
    let options = section.options(reward_pad_id(&s.lm.path, tok)?);
    let optimizer = s.run.optimizer_for(s.stage);
    let mut trainer = RewardTrainer::new(&s.lm.decoder, adapter, &head, data, optimizer, schedule, options)?;
    if let Some(c) = &s.checkpoint {
        trainer
            .restore(&c.optimizer, c.state.examples_seen)
            .with_context(|| format!("{}: resuming from this checkpoint", c.dir.display()))?;
        eprintln!("resuming from {} (step {} of {total})", c.dir.display(), c.state.step);
    }
    let mut log = StepLog::open(s, trainer.step_count(), total)?;
    let stop = log.stop;
    let save_every = s.run.output.save_steps;
    let mut last = None;
    while trainer.step_count() < stop {
        let m = trainer.step()?;
        if !m.loss.is_finite() {
            bail!(
                "step {}: the loss is {} (lower the learning rate); the last checkpoint is intact",
                m.step,
                m.loss
            );
        }
        let tok_s = m.tokens as f64 / m.seconds;
        let line = serde_json::json!({
            "step": m.step, "loss": m.loss, "accuracy": m.accuracy, "margin": m.margin,
            "mean_reward": m.mean_reward, "grad_norm": m.grad_norm, "learning_rate": m.lr,
            "tokens": m.tokens, "pairs": m.pairs, "tokens_per_s": tok_s, "seconds": m.seconds, "epoch": m.epoch,
        });
        let message = format!(
            "loss {:.4}  accuracy {:.3}  margin {:.3}  lr {:.3e}  {tok_s:.1} tokens/s",
            m.loss, m.accuracy, m.margin, m.lr
        );
        log.record(m.step, &line, &message)?;
        if (save_every > 0 && m.step.is_multiple_of(save_every)) || m.step == stop {
            let position = DataPosition {
                seed: section.seed,
                examples_seen: trainer.examples_seen(),
                epoch: m.epoch as u64,
            };
            let metrics = serde_json::json!({"loss": m.loss, "accuracy": m.accuracy, "margin": m.margin});
            let state = s.state(m.step, *trainer.schedule(), position, metrics);
            let dir = s.checkpoint_dir();
            let head = trainer.head()?;
            save_checkpoint_with(
                &dir,
                |d| save_reward_adapter(trainer.adapter(), &head, d, Some(&base)),
                &trainer.optimizer_state()?,
                &state,
            )?;
            prune_checkpoints(&dir, s.run.output.save_total_limit)?;
        }
        last = Some(m);
    }
    log.finish();
    let out = s.out.join(REWARD_MODEL_DIR);
    save_atomically(&out, |d| Ok(trainer.save(d, Some(&base))?))?;
    match last {
        Some(m) => println!(
            "trained to step {} of {total}: loss {:.4}, accuracy {:.3}; reward model in {} (try: babelrl eval \
             --reward-model {} --data PAIRS.jsonl)",
            m.step,
            m.loss,
            m.accuracy,
            out.display(),
            out.display()
        ),
        None => println!("nothing to do: the run is at step {} of {stop}", trainer.step_count()),
    }
    Ok(())
}

/// Writes a folder with `write` into a fresh temporary sibling, then renames it over `dir`, so `dir` is
/// always complete (the old one or the new one).
fn save_atomically(dir: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let nonce =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let tmp = parent.join(format!(".tmp-reward-model-{}-{nonce}", std::process::id()));
    write(&tmp)?;
    let old = parent.join(format!(".old-reward-model-{}-{nonce}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving the old {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}
