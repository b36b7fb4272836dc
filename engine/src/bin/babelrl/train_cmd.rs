//! `babelrl train RUN.toml`: runs the run file's `[sft]` job — progress bar, metrics as JSONL (one
//! line per step), atomic checkpoints, `--resume`, and the trained adapter as a PEFT folder.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::lora::Adapter;
use babelrl::model::{LanguageModel, load_language_model};
use babelrl::train::{
    CHECKPOINT_FORMAT, RunFile, SftOptions, SftTrainer, StepMetrics, TrainSequence, TrainerState,
    latest_checkpoint, load_checkpoint, load_sft_jsonl, prune_checkpoints, save_checkpoint,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The run file (TOML): [model], [lora], [optimizer], [schedule], [sft], [output].
    run_file: PathBuf,
    /// Continue from a checkpoint: a `checkpoint-N` folder, or without a value the newest one in the
    /// run's output folder.
    #[arg(long, num_args = 0..=1)]
    #[allow(clippy::option_option)]
    resume: Option<Option<PathBuf>>,
    /// Stop after this many optimizer steps in all (overrides the run file's length; the schedule
    /// still follows the run file).
    #[arg(long)]
    stop_at: Option<u64>,
}

/// Test hook: abort the process (as a kill would) right after this step's update, before its
/// checkpoint is written.
const KILL_AT_STEP: &str = "BABELRL_TEST_KILL_AT_STEP";

/// A fingerprint of the base model a checkpoint was trained on: its file name and the sha256 of the
/// file (of a folder: of config.json and each weight file's name and size), so a resume on other
/// weights is refused.
fn base_fingerprint(lm: &LanguageModel) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let path = &lm.path;
    if path.is_file() {
        let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    } else {
        h.update(std::fs::read(path.join("config.json")).unwrap_or_default());
        let mut files: Vec<_> = std::fs::read_dir(path)?.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "safetensors")) {
            h.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            h.update(std::fs::metadata(f).map_or(0, |m| m.len()).to_le_bytes());
        }
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{name} (sha256 {hex})"))
}

/// The checkpoint to resume from, if any; refuses to start a fresh run over an existing one's output.
fn resume_from(args: &TrainArgs, out: &Path) -> anyhow::Result<Option<PathBuf>> {
    match &args.resume {
        Some(None) => match latest_checkpoint(out)? {
            Some(dir) => Ok(Some(dir)),
            None => bail!("--resume: no checkpoint in {} to continue from", out.display()),
        },
        Some(Some(dir)) => Ok(Some(dir.clone())),
        None => {
            if let Some(found) = latest_checkpoint(out)? {
                bail!(
                    "{} already holds a run ({}): pass --resume to continue it, or set another [output] dir \
                     (nothing was changed)",
                    out.display(),
                    found.display()
                );
            }
            Ok(None)
        }
    }
}

/// Keeps the metrics lines of steps up to `step` (a resumed run rewrites what came after).
fn open_metrics(path: &Path, step: u64) -> anyhow::Result<std::fs::File> {
    let kept: Vec<String> = match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(str::to_owned)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    babelrl::lora::write_atomic(path, text.as_bytes())?;
    let file = std::fs::OpenOptions::new().append(true).open(path);
    file.with_context(|| format!("opening {}", path.display()))
}

fn progress(total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_position(done);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} step {pos}/{len}  {msg}  [{elapsed_precise}, ETA {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let run = RunFile::load(&args.run_file)?;
    let sft = run.sft()?.clone();
    let out = run.output.dir.clone();
    let resume = resume_from(&args, &out)?;
    let checkpoint = resume.as_deref().map(load_checkpoint).transpose()?;

    let model_path = run.model.path.clone().unwrap_or_else(crate::default_model);
    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let lm = load_language_model(gpu.clone(), &model_path)
        .with_context(|| format!("loading the model {}", model_path.display()))?;
    let fingerprint = base_fingerprint(&lm)?;
    let mut lora = run.lora_config()?;
    lora.base_model = Some(fingerprint.clone());

    let adapter = match (&checkpoint, &run.lora.init_from) {
        (Some(c), _) => {
            if c.state.base_model != fingerprint {
                bail!(
                    "{}: the checkpoint was trained on {}, this run loads {}",
                    c.dir.display(),
                    c.state.base_model,
                    fingerprint
                );
            }
            let a = Adapter::load_peft(gpu.clone(), &c.adapter_dir, lm.decoder.config())?;
            if run.lora.init_from.is_none() && (a.config().r, &a.config().targets) != (lora.r, &lora.targets)
            {
                bail!(
                    "{}: the checkpoint's adapter has rank {} on {:?}, the run file asks for rank {} on {:?}",
                    c.dir.display(),
                    a.config().r,
                    a.config().targets,
                    lora.r,
                    lora.targets
                );
            }
            a
        }
        (None, Some(dir)) => Adapter::load_peft(gpu.clone(), dir, lm.decoder.config())
            .with_context(|| format!("[lora] init_from = {}", dir.display()))?,
        (None, None) => Adapter::init(gpu.clone(), lora.clone(), lm.decoder.config(), run.lora.seed)?,
    };
    let examples = load_sft_jsonl(&sft.data, lm.tokenizer()?, sft.max_length)?;
    let data: Vec<TrainSequence> = examples
        .iter()
        .map(|e| TrainSequence {
            tokens: [e.prompt.as_slice(), &e.completion].concat(),
            prompt_len: e.prompt.len(),
        })
        .collect();
    let total = sft.total_steps(data.len());
    let schedule = run.schedule(total)?;
    let options = SftOptions {
        batch_size: sft.batch_size,
        gradient_accumulation_steps: sft.gradient_accumulation_steps,
        seed: sft.seed,
        shuffle: sft.shuffle,
        gradient_checkpointing: sft.gradient_checkpointing,
    };
    let mut trainer = SftTrainer::new(&lm.decoder, adapter, data, run.optimizer, schedule, options)?;
    if let Some(c) = &checkpoint {
        trainer
            .restore(&c.optimizer, c.state.examples_seen)
            .with_context(|| format!("{}: resuming from this checkpoint", c.dir.display()))?;
        eprintln!("resuming from {} (step {} of {total})", c.dir.display(), c.state.step);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = open_metrics(&metrics_path, trainer.step_count())?;
    let stop = args.stop_at.unwrap_or(total).min(total);
    let kill_at: Option<u64> = std::env::var(KILL_AT_STEP).ok().and_then(|v| v.parse().ok());
    let bar = progress(stop, trainer.step_count());
    let bar_shown = std::io::stderr().is_terminal();
    let mut last: Option<StepMetrics> = None;
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
            "step": m.step, "loss": m.loss, "grad_norm": m.grad_norm, "learning_rate": m.lr,
            "tokens": m.tokens, "completion_tokens": m.completion_tokens, "tokens_per_s": tok_s,
            "seconds": m.seconds, "epoch": m.epoch,
        });
        writeln!(metrics, "{line}").with_context(|| format!("writing {}", metrics_path.display()))?;
        bar.set_message(format!("loss {:.4}  {tok_s:.1} tokens/s", m.loss));
        bar.set_position(m.step);
        if !bar_shown && (m.step % run.output.logging_steps.max(1) == 0 || m.step == stop) {
            eprintln!(
                "step {}/{stop}  loss {:.4}  grad norm {:.3}  lr {:.3e}  {tok_s:.1} tokens/s",
                m.step, m.loss, m.grad_norm, m.lr
            );
        }
        if kill_at == Some(m.step) {
            std::process::abort();
        }
        let save_every = run.output.save_steps;
        if (save_every > 0 && m.step.is_multiple_of(save_every)) || m.step == stop {
            let state = TrainerState {
                format: CHECKPOINT_FORMAT.into(),
                step: m.step,
                schedule: *trainer.schedule(),
                seed: run.lora.seed,
                data_seed: sft.seed,
                examples_seen: trainer.examples_seen(),
                epoch: m.epoch as u64,
                run_file_sha256: run.sha256.clone(),
                base_model: fingerprint.clone(),
                metrics: serde_json::from_value(
                    serde_json::json!({"loss": m.loss, "grad_norm": m.grad_norm}),
                )
                .unwrap_or_default(),
            };
            save_checkpoint(&out, trainer.adapter(), &trainer.optimizer_state()?, &state)?;
            prune_checkpoints(&out, run.output.save_total_limit)?;
        }
        last = Some(m);
    }
    bar.finish_and_clear();
    let adapter_dir = out.join("adapter");
    save_adapter_dir(trainer.adapter(), &adapter_dir)?;
    match last {
        Some(m) => println!(
            "trained to step {} of {total}: loss {:.4}; adapter in {} (try: babelrl generate --adapter {} ...)",
            m.step,
            m.loss,
            adapter_dir.display(),
            adapter_dir.display()
        ),
        None => println!("nothing to do: the run is at step {} of {stop}", trainer.step_count()),
    }
    Ok(())
}

/// Writes the adapter as a PEFT folder: into a fresh temporary sibling, then renamed over `dir`, so
/// `dir` is always a complete adapter (the old one or the new one).
fn save_adapter_dir(adapter: &Adapter, dir: &Path) -> anyhow::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let nonce =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let tmp = parent.join(format!(".tmp-adapter-{}-{nonce}", std::process::id()));
    adapter.save_peft(&tmp)?;
    let old = parent.join(format!(".old-adapter-{}-{nonce}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving the old {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}
