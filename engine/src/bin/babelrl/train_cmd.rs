//! `babelrl train RUN.toml`: runs the run file's job — `[sft]` here, `[grpo]` in `train_grpo`, `[dpo]` in
//! `train_dpo`, or SFT and then one of the others as two stages (the second from the SFT adapter with a
//! fresh optimizer) — with what they
//! share: the model and adapter, a progress bar, metrics as JSONL (one line per step, naming its stage),
//! atomic checkpoints that record their stage, `--resume` into the right stage, and each stage's final
//! adapter as a PEFT folder.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::lora::Adapter;
use babelrl::model::{LanguageModel, load_language_model};
use babelrl::train::{
    AdamWState, CHECKPOINT_FORMAT, Checkpoint, RunFile, Schedule, SftOptions, SftTrainer, Stage, StepMetrics,
    TrainSequence, TrainerState, latest_checkpoint, load_checkpoint, load_sft_jsonl, prune_checkpoints,
    run_file::layout_text, save_checkpoint_with_files,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The run file (TOML): [model], [lora], [optimizer], [schedule], the job ([sft], [grpo] with
    /// [[reward]] tables, [dpo], or SFT then GRPO or DPO from the SFT adapter; or
    /// [reward_model_training]), [output].
    run_file: PathBuf,
    /// Continue from a checkpoint: a `checkpoint-N` folder, or without a value the newest one in the
    /// run's output folder (of a two-stage run: of its latest stage, `grpo/` or `dpo/`, then `sft/`).
    #[arg(long, num_args = 0..=1)]
    #[allow(clippy::option_option)]
    resume: Option<Option<PathBuf>>,
    /// Stop after this many optimizer steps in all, both stages' together in a two-stage run
    /// (overrides the run file's length; the schedule still follows the run file).
    #[arg(long)]
    stop_at: Option<u64>,
}

/// Test hook: abort the process (as a kill would) right after this step's update, before its
/// checkpoint is written: `STEP` (in any stage) or `STAGE:STEP` (`grpo:2`).
const KILL_AT_STEP: &str = "BABELRL_TEST_KILL_AT_STEP";

/// The kill hook's step for `stage`, if it names one.
fn kill_at(stage: Stage) -> Option<u64> {
    let v = std::env::var(KILL_AT_STEP).ok()?;
    match v.split_once(':') {
        Some((name, step)) => (Stage::parse(name)? == stage).then(|| step.parse().ok()).flatten(),
        None => v.parse().ok(),
    }
}

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

/// The newest checkpoint of the latest of `stages` that has one, with checkpoints in `dir(stage)`.
fn latest_of(stages: &[Stage], dir: impl Fn(Stage) -> PathBuf) -> anyhow::Result<Option<PathBuf>> {
    for stage in stages.iter().rev() {
        if let Some(found) = latest_checkpoint(&dir(*stage))? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The checkpoint to resume from, if any; refuses to start a fresh run over an existing one's output.
/// Checkpoints of the other stage layout (`OUT/checkpoint-N` for a two-stage file, `OUT/sft/…` or
/// `OUT/grpo/…` for a one-stage one) make `--resume` an error that names the layouts.
fn resume_from(args: &TrainArgs, run: &RunFile) -> anyhow::Result<Option<PathBuf>> {
    let out = &run.output.dir;
    let all = Stage::ALL;
    let own = latest_of(&run.stages(), |s| run.stage_dir(s))?;
    let foreign = match run.is_two_stage() {
        true => latest_checkpoint(out)?,
        false => latest_of(&all, |s| out.join(s.name()))?,
    };
    match &args.resume {
        Some(None) => match (own, foreign) {
            (Some(dir), _) => Ok(Some(dir)),
            (None, Some(dir)) => {
                let c = load_checkpoint(&dir)?;
                run.resume_stage(&c.state, &c.dir)?;
                bail!(
                    "--resume: {} holds {}, a checkpoint of another stage layout; this run file has {}",
                    out.display(),
                    dir.display(),
                    layout_text(&run.stages())
                )
            }
            (None, None) => bail!("--resume: no checkpoint in {} to continue from", out.display()),
        },
        Some(Some(dir)) => Ok(Some(dir.clone())),
        None => {
            if let Some(found) = own.or(foreign) {
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

/// Keeps the metrics lines of earlier stages and of `stage`'s steps up to `step` (a resumed run rewrites
/// what came after; a line naming no stage is of `stage`).
fn open_metrics(path: &Path, stage: Stage, step: u64) -> anyhow::Result<std::fs::File> {
    let keep = |v: serde_json::Value| {
        let line_stage = v["stage"].as_str().and_then(Stage::parse).unwrap_or(stage);
        line_stage < stage || (line_stage == stage && v["step"].as_u64().is_some_and(|s| s <= step))
    };
    let kept: Vec<String> = match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().is_some_and(keep))
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

/// What every job loads before training: the run file, its output folder, the stage in progress, the
/// checkpoint to resume from, the model and its fingerprint.
pub struct Session {
    pub run: RunFile,
    /// `[output] dir`: metrics.jsonl and the final adapters (checkpoints: [`Session::checkpoint_dir`]).
    pub out: PathBuf,
    /// The stage being trained.
    pub stage: Stage,
    /// The adapter the stage starts from when not resumed: the SFT stage's, for GRPO after SFT.
    pub start_from: Option<PathBuf>,
    /// Optimizer steps of the stages before this one (`--stop-at` counts them).
    pub steps_before: u64,
    pub checkpoint: Option<Checkpoint>,
    pub gpu: Arc<Gpu>,
    pub lm: LanguageModel,
    pub fingerprint: String,
    pub stop_at: Option<u64>,
}

impl Session {
    fn open(args: &TrainArgs, run: RunFile) -> anyhow::Result<Session> {
        let out = run.output.dir.clone();
        let resume = resume_from(args, &run)?;
        let checkpoint = resume.as_deref().map(load_checkpoint).transpose()?;
        let stage = match &checkpoint {
            Some(c) => run.resume_stage(&c.state, &c.dir)?,
            None => run.stages()[0],
        };
        let second = run.stages().last().copied().unwrap_or(Stage::Grpo);
        let second_dir = run.stage_dir(second);
        if let (Some(c), Stage::Sft, true) = (&checkpoint, stage, run.is_two_stage())
            && let Some(later) = latest_checkpoint(&second_dir)?
        {
            bail!(
                "{} is a checkpoint of the [sft] stage, but {} already holds the [{second}] stage's {}, trained \
                 from the SFT adapter this resume would replace: resume from the newest checkpoint (--resume \
                 without a folder), or remove {} to train [{second}] again",
                c.dir.display(),
                second_dir.display(),
                later.display(),
                second_dir.display()
            );
        }
        let model_path = run.model.path.clone().unwrap_or_else(crate::default_model);
        let gpu = Gpu::new(&GpuOptions::from_env())?;
        let lm = if stage == Stage::RewardModel {
            crate::train_reward::load_body(gpu.clone(), &model_path)
        } else {
            load_language_model(gpu.clone(), &model_path).map_err(anyhow::Error::from)
        }
        .with_context(|| format!("loading the model {}", model_path.display()))?;
        let fingerprint = base_fingerprint(&lm)?;
        let (start_from, steps_before) = (None, 0);
        Ok(Session {
            run,
            out,
            stage,
            start_from,
            steps_before,
            checkpoint,
            gpu,
            lm,
            fingerprint,
            stop_at: args.stop_at,
        })
    }

    /// Where this stage's checkpoints go ([`RunFile::stage_dir`]).
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.run.stage_dir(self.stage)
    }

    /// `"[sft] "`, `"[grpo] "` or `"[dpo] "` before messages in a two-stage run, else nothing.
    pub fn label(&self) -> String {
        if self.run.is_two_stage() { format!("[{}] ", self.stage) } else { String::new() }
    }

    /// The adapter to train: the checkpoint's (checked against the base model and the run file's
    /// rank and modules), the previous stage's, `[lora] init_from`, or a fresh one.
    pub fn adapter(&self) -> anyhow::Result<Adapter> {
        let (run, lm, gpu, fingerprint) = (&self.run, &self.lm, &self.gpu, &self.fingerprint);
        let mut lora = run.lora_config()?;
        lora.base_model = Some(fingerprint.clone());
        if let (None, Some(dir)) = (&self.checkpoint, &self.start_from) {
            return Adapter::load_peft(gpu.clone(), dir, lm.decoder.config()).with_context(|| {
                format!("loading the [sft] stage's adapter {} to start [{}]", dir.display(), self.stage)
            });
        }
        Ok(match (&self.checkpoint, &run.lora.init_from) {
            (Some(c), _) => {
                if &c.state.base_model != fingerprint {
                    bail!(
                        "{}: the checkpoint was trained on {}, this run loads {}",
                        c.dir.display(),
                        c.state.base_model,
                        fingerprint
                    );
                }
                let a = Adapter::load_peft(gpu.clone(), &c.adapter_dir, lm.decoder.config())?;
                if run.lora.init_from.is_none()
                    && (a.config().r, &a.config().targets) != (lora.r, &lora.targets)
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
            (None, None) => Adapter::init(gpu.clone(), lora, lm.decoder.config(), run.lora.seed)?,
        })
    }

    /// The trainer state of a checkpoint after `step`, with the job's data position.
    pub fn state(
        &self,
        step: u64,
        schedule: Schedule,
        data: DataPosition,
        metrics: serde_json::Value,
    ) -> TrainerState {
        TrainerState {
            format: CHECKPOINT_FORMAT.into(),
            step,
            schedule,
            seed: self.run.lora.seed,
            data_seed: data.seed,
            examples_seen: data.examples_seen,
            epoch: data.epoch,
            run_file_sha256: self.run.sha256.clone(),
            base_model: self.fingerprint.clone(),
            stage: Some(self.stage),
            stages: self.run.stages(),
            metrics: serde_json::from_value(metrics).unwrap_or_default(),
        }
    }

    /// Saves a checkpoint after `step` when `[output] save_steps` asks for one (and at the last step).
    pub fn maybe_checkpoint(
        &self,
        step: u64,
        stop: u64,
        adapter: &Adapter,
        optimizer: impl FnOnce() -> babelrl::Result<AdamWState>,
        state: impl FnOnce() -> TrainerState,
    ) -> anyhow::Result<()> {
        self.maybe_checkpoint_with(step, stop, adapter, optimizer, state, || Ok(Vec::new()))
    }

    /// [`Session::maybe_checkpoint`] with the job's own files (`(name, contents)`, e.g. the router
    /// state) in the checkpoint folder, written in the same atomic step.
    pub fn maybe_checkpoint_with(
        &self,
        step: u64,
        stop: u64,
        adapter: &Adapter,
        optimizer: impl FnOnce() -> babelrl::Result<AdamWState>,
        state: impl FnOnce() -> TrainerState,
        files: impl FnOnce() -> anyhow::Result<Vec<(&'static str, Vec<u8>)>>,
    ) -> anyhow::Result<()> {
        let save_every = self.run.output.save_steps;
        if (save_every > 0 && step.is_multiple_of(save_every)) || step == stop {
            let dir = self.checkpoint_dir();
            let files = files()?;
            let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
            save_checkpoint_with_files(&dir, adapter, &optimizer()?, &state(), &files)?;
            prune_checkpoints(&dir, self.run.output.save_total_limit)?;
        }
        Ok(())
    }

    /// Writes the stage's final adapter into `OUT/adapter` (`OUT/sft-adapter` for the SFT stage of a
    /// two-stage run) and returns that folder.
    pub fn finish(&self, adapter: &Adapter) -> anyhow::Result<PathBuf> {
        let dir = self.run.stage_adapter_dir(self.stage);
        save_adapter_dir(adapter, &dir)?;
        Ok(dir)
    }
}

/// Where a job stands in its data, for the trainer state.
pub struct DataPosition {
    pub seed: u64,
    pub examples_seen: u64,
    pub epoch: u64,
}

/// The per-step output of a run: metrics.jsonl, the progress bar (or progress lines when stderr is not
/// a terminal), and the kill hook of the tests.
pub struct StepLog {
    file: std::fs::File,
    path: PathBuf,
    bar: ProgressBar,
    /// A second line under the step bar: where the current step is (e.g. GRPO's rollout tokens).
    pub phase: ProgressBar,
    bar_shown: bool,
    pub stop: u64,
    logging_steps: u64,
    kill_at: Option<u64>,
    stage: Stage,
    label: String,
}

impl StepLog {
    /// Opens `OUT/metrics.jsonl` (keeping the lines of earlier stages and this stage's up to `done`) for
    /// a stage at step `done` of `total`.
    pub fn open(s: &Session, done: u64, total: u64) -> anyhow::Result<StepLog> {
        std::fs::create_dir_all(&s.out).with_context(|| format!("creating {}", s.out.display()))?;
        let path = s.out.join("metrics.jsonl");
        let file = open_metrics(&path, s.stage, done)?;
        let stop = s.stop_at.map_or(total, |n| n.saturating_sub(s.steps_before)).min(total);
        let bars = indicatif::MultiProgress::new();
        let bar = bars.add(progress(stop, done));
        let phase = bars.add(ProgressBar::new(0));
        phase.set_style(
            ProgressStyle::with_template("  {msg} {bar:30.green/white} {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if !std::io::stderr().is_terminal() {
            bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Ok(StepLog {
            file,
            path,
            bar,
            phase,
            bar_shown: std::io::stderr().is_terminal(),
            stop,
            logging_steps: s.run.output.logging_steps.max(1),
            kill_at: kill_at(s.stage),
            stage: s.stage,
            label: s.label(),
        })
    }

    /// Records step `step`: its metrics line (with the stage added), the bar's `message`, a progress
    /// line every `logging_steps` when there is no bar; aborts here when the kill hook names this step.
    pub fn record(&mut self, step: u64, line: &serde_json::Value, message: &str) -> anyhow::Result<()> {
        let mut line = line.clone();
        if let Some(fields) = line.as_object_mut() {
            fields.insert("stage".into(), self.stage.name().into());
        }
        writeln!(self.file, "{line}").with_context(|| format!("writing {}", self.path.display()))?;
        self.bar.set_message(message.to_string());
        self.bar.set_position(step);
        if !self.bar_shown && (step.is_multiple_of(self.logging_steps) || step == self.stop) {
            eprintln!("{}step {step}/{}  {message}", self.label, self.stop);
        }
        if self.kill_at == Some(step) {
            std::process::abort();
        }
        Ok(())
    }

    pub fn finish(&self) {
        self.phase.finish_and_clear();
        self.bar.finish_and_clear();
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let run = RunFile::load(&args.run_file)?;
    if run.stages().is_empty() {
        run.sft()?;
    }
    let mut s = Session::open(&args, run)?;
    if s.stage == Stage::RewardModel {
        return crate::train_reward::run(&s);
    }
    let last = *s.run.stages().last().expect("checked above");
    if s.stage == Stage::Sft {
        match last {
            Stage::Grpo => crate::train_grpo::preflight(&s)?,
            Stage::Dpo => crate::train_dpo::preflight(&s)?,
            _ => {}
        }
        let (done, total) = run_sft(&s)?;
        if done < total || last == Stage::Sft {
            return Ok(());
        }
        // The second stage starts from the SFT stage's final adapter (as written to disk, so an
        // uninterrupted run and one resumed at any point take the same path), with a fresh optimizer and
        // schedule.
        s.stage = last;
        s.checkpoint = None;
        s.start_from = Some(s.run.stage_adapter_dir(Stage::Sft));
        s.steps_before = total;
    } else if s.run.is_two_stage() && s.stop_at.is_some() {
        s.steps_before = s.run.sft()?.total_steps(sft_data(&s)?.len());
    }
    match s.stage {
        Stage::Dpo => crate::train_dpo::run(&s),
        _ => crate::train_grpo::run(&s),
    }
}

/// The `[sft]` examples as training sequences.
fn sft_data(s: &Session) -> anyhow::Result<Vec<TrainSequence>> {
    let sft = s.run.sft()?;
    let examples = load_sft_jsonl(&sft.data, s.lm.tokenizer()?, sft.max_length)?;
    Ok(examples
        .iter()
        .map(|e| TrainSequence {
            tokens: [e.prompt.as_slice(), &e.completion].concat(),
            prompt_len: e.prompt.len(),
        })
        .collect())
}

/// The `[sft]` stage; returns the steps done and the stage's total.
fn run_sft(s: &Session) -> anyhow::Result<(u64, u64)> {
    let sft = s.run.sft()?.clone();
    let adapter = s.adapter()?;
    let data = sft_data(s)?;
    let total = sft.total_steps(data.len());
    let schedule = s.run.schedule(total)?;
    let options = SftOptions {
        batch_size: sft.batch_size,
        gradient_accumulation_steps: sft.gradient_accumulation_steps,
        seed: sft.seed,
        shuffle: sft.shuffle,
        gradient_checkpointing: sft.gradient_checkpointing,
    };
    let optimizer = s.run.optimizer_for(Stage::Sft);
    let mut trainer = SftTrainer::new(&s.lm.decoder, adapter, data, optimizer, schedule, options)?;
    if let Some(c) = &s.checkpoint {
        trainer
            .restore(&c.optimizer, c.state.examples_seen)
            .with_context(|| format!("{}: resuming from this checkpoint", c.dir.display()))?;
        eprintln!("{}resuming from {} (step {} of {total})", s.label(), c.dir.display(), c.state.step);
    }
    let mut log = StepLog::open(s, trainer.step_count(), total)?;
    let stop = log.stop;
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
        let message =
            format!("loss {:.4}  grad norm {:.3}  lr {:.3e}  {tok_s:.1} tokens/s", m.loss, m.grad_norm, m.lr);
        log.record(m.step, &line, &message)?;
        let position =
            DataPosition { seed: sft.seed, examples_seen: trainer.examples_seen(), epoch: m.epoch as u64 };
        let metrics = serde_json::json!({"loss": m.loss, "grad_norm": m.grad_norm});
        s.maybe_checkpoint(
            m.step,
            stop,
            trainer.adapter(),
            || trainer.optimizer_state(),
            || s.state(m.step, *trainer.schedule(), position, metrics),
        )?;
        last = Some(m);
    }
    log.finish();
    let done = trainer.step_count();
    let adapter_dir = s.finish(trainer.adapter())?;
    match last {
        Some(m) => println!(
            "{}trained to step {} of {total}: loss {:.4}; adapter in {} (try: babelrl generate --adapter {} ...)",
            s.label(),
            m.step,
            m.loss,
            adapter_dir.display(),
            adapter_dir.display()
        ),
        None => println!("{}nothing to do: the run is at step {done} of {stop}", s.label()),
    }
    Ok((done, total))
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
