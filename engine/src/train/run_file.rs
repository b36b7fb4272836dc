//! The run file of `babelrl train RUN.toml`: `[model]`, `[lora]`, `[optimizer]`, `[schedule]`, the jobs
//! (`[sft]`, `[grpo]` with its `on_error`, `[[reward]]` tables, optional `[router]` and the `[encoder]` and
//! `[reward_model]` serving its plugins, or both: cold-start SFT, then GRPO from the SFT adapter; see
//! [`Stage`]) and `[output]`, read strictly (an unknown key is an error naming it and the file), relative
//! paths resolved against the run file's folder, every range checked with an error naming `[section] key`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::lora::{LoraConfig, Target};
use crate::plugin::RunRewards;
use crate::train::{AdamWConfig, Schedule, SchedulerType};
use crate::{Error, Result};

/// A run file, validated, with every path resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFile {
    /// The run file itself (as given).
    pub path: PathBuf,
    /// SHA-256 of the run file's text, lowercase hex (checkpoints record it).
    pub sha256: String,
    pub model: ModelSection,
    pub lora: LoraSection,
    pub optimizer: AdamWConfig,
    pub schedule: ScheduleSection,
    /// `None` when the file has no `[sft]` section; [`RunFile::sft`] makes that an error.
    pub sft: Option<SftSection>,
    /// `None` when the file has no `[grpo]` section. With both `[sft]` and `[grpo]`, the run trains two
    /// stages ([`RunFile::stages`]).
    pub grpo: Option<GrpoSection>,
    /// `None` when the file has no `[dpo]` section; with `[sft]`, SFT then DPO (a file has `[grpo]` or
    /// `[dpo]`, not both).
    pub dpo: Option<DpoSection>,
    /// `on_error` and the `[[reward]]` tables of a `[grpo]` job (at least one) or of an on-policy `[dpo]`
    /// job (its judge), plugin paths resolved against the run file's folder; `None` otherwise.
    pub rewards: Option<RunRewards>,
    /// `[encoder]` (a `[grpo]` job only): `None` when absent, and then plugins still get the default
    /// encoder on their first `embed`.
    pub encoder: Option<EncoderSection>,
    /// `[reward_model]`: serves a `[grpo]` job's plugins, or ranks a `[dpo]` job's on-policy samples.
    pub reward_model: Option<RewardModelSection>,
    /// LRPO's language router of a `[grpo]` job (`None`: every rollout in the prompt's own language).
    pub router: Option<RouterSection>,
    /// `[reward_model_training]`: a Bradley–Terry reward model (a job of its own).
    pub reward_training: Option<RewardTrainingSection>,
    pub output: OutputSection,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelSection {
    /// A GGUF file or a Hugging Face model folder; `None` for the default model.
    pub path: Option<PathBuf>,
}

/// `[lora]`: a fresh adapter's options, or the adapter folder to start from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSection {
    /// Rank (16).
    pub r: usize,
    /// PEFT's `lora_alpha` (32).
    pub alpha: f64,
    /// `lora_dropout` (0).
    pub dropout: f64,
    /// Scale by alpha / √r (false).
    pub use_rslora: bool,
    /// Adapted projections in [`Target::ALL`] order (all seven).
    pub targets: Vec<Target>,
    /// A PEFT adapter folder to start from instead of a fresh initialisation; its
    /// `adapter_config.json` then sets every option above (the file may not set them too).
    pub init_from: Option<PathBuf>,
    /// Seed of a fresh adapter's A matrices (0).
    pub seed: u64,
}

/// `[schedule]`: transformers' `lr_scheduler_type` and `warmup_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSection {
    /// `linear` (transformers' default), `cosine`, `constant` or `constant_with_warmup`.
    pub lr_scheduler_type: SchedulerType,
    /// At least 1: a number of optimizer steps; below 1: a ratio of the total (0).
    pub warmup_steps: f64,
}

/// How long an SFT run trains: `max_steps` or `epochs` in `[sft]`, exactly one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainLength {
    /// Optimizer steps.
    MaxSteps(u64),
    /// Passes over the data (transformers' `num_train_epochs`; may be fractional).
    Epochs(f64),
}

/// `[sft]`: supervised fine-tuning from a JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct SftSection {
    /// The JSONL data (see [`crate::train::data`]).
    pub data: PathBuf,
    pub length: TrainLength,
    /// Sequences per micro-batch (8).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (1).
    pub gradient_accumulation_steps: usize,
    /// Most tokens of one sequence, prompt and completion together; longer examples are errors
    /// (TRL's default, 1024).
    pub max_length: usize,
    /// Seed of the data order (0).
    pub seed: u64,
    /// Shuffle the examples each epoch (true).
    pub shuffle: bool,
    /// Keep only each layer's input in the forward pass and recompute in the backward (false).
    pub gradient_checkpointing: bool,
    /// This stage's learning rate, in place of `[optimizer] learning_rate` (TRL's `SFTConfig` and
    /// `GRPOConfig` each have their own; a two-stage run usually wants a lower one for GRPO).
    pub learning_rate: Option<f64>,
}

impl SftSection {
    /// Optimizer steps of the run over `examples` examples, as transformers counts them:
    /// ⌈⌈examples / batch_size⌉ / gradient_accumulation_steps⌉ steps per epoch (at least 1), and
    /// ⌈epochs · that⌉ for an `epochs` run.
    pub fn total_steps(&self, examples: usize) -> u64 {
        match self.length {
            TrainLength::MaxSteps(n) => n,
            TrainLength::Epochs(e) => {
                let batches = examples.div_ceil(self.batch_size) as u64;
                let per_epoch = batches.div_ceil(self.gradient_accumulation_steps as u64).max(1);
                (e * per_epoch as f64).ceil() as u64
            }
        }
    }
}

/// `[output]`: where checkpoints and metrics go and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSection {
    /// The run's folder (`runs/<run file stem>` beside the run file by default).
    pub dir: PathBuf,
    /// Save a checkpoint every N optimizer steps, 0 = only at the end (1: a killed run loses at most
    /// the step in flight; raise it where steps are much faster than writing the adapter and moments).
    pub save_steps: u64,
    /// Keep the newest N checkpoints, 0 = keep all (2).
    pub save_total_limit: usize,
    /// Print a progress line every N optimizer steps when stderr is not a terminal (1); metrics.jsonl
    /// gets a line every step.
    pub logging_steps: u64,
}

// The file as written. Options stay `None` when absent, so defaults and conflicts are decided below.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRunFile {
    #[serde(default)]
    model: RawModel,
    #[serde(default)]
    lora: RawLora,
    #[serde(default)]
    optimizer: AdamWConfig,
    #[serde(default)]
    schedule: ScheduleSection,
    sft: Option<RawSft>,
    grpo: Option<grpo::RawGrpo>,
    dpo: Option<dpo::RawDpo>,
    encoder: Option<services::RawEncoder>,
    reward_model: Option<services::RawRewardModel>,
    router: Option<router::RawRouter>,
    reward_model_training: Option<reward::RawRewardTraining>,
    #[serde(default)]
    output: RawOutput,
    // Read by `RunRewards::from_toml`; listed here so they are not unknown keys.
    on_error: Option<toml::Value>,
    reward: Option<toml::Value>,
    rewards: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModel {
    path: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLora {
    r: Option<usize>,
    alpha: Option<f64>,
    dropout: Option<f64>,
    use_rslora: Option<bool>,
    target_modules: Option<TargetModules>,
    init_from: Option<PathBuf>,
    seed: Option<u64>,
}

/// `target_modules`: a list of module names or PEFT's `"all-linear"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TargetModules {
    One(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSft {
    data: Option<PathBuf>,
    max_steps: Option<u64>,
    epochs: Option<f64>,
    batch_size: Option<usize>,
    gradient_accumulation_steps: Option<usize>,
    max_length: Option<usize>,
    seed: Option<u64>,
    shuffle: Option<bool>,
    gradient_checkpointing: Option<bool>,
    learning_rate: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    dir: Option<PathBuf>,
    save_steps: Option<u64>,
    save_total_limit: Option<usize>,
    logging_steps: Option<u64>,
}

impl RunFile {
    /// Reads and validates the run file at `path`.
    pub fn load(path: &Path) -> Result<RunFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates `text`, the contents of the run file at `path` (relative paths in it are
    /// resolved against `path`'s folder; errors name `path`).
    pub fn from_toml(text: &str, path: &Path) -> Result<RunFile> {
        let err = |message: String| Error::Config { path: path.to_path_buf(), message };
        let raw: RawRunFile = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let at_least = |section: &str, key: &str, v: u64, min: u64| -> Result<()> {
            if v < min {
                Err(err(format!("[{section}] {key} = {v}: must be at least {min}")))
            } else {
                Ok(())
            }
        };

        let l = raw.lora;
        if l.init_from.is_some() {
            let set = [
                ("r", l.r.is_some()),
                ("alpha", l.alpha.is_some()),
                ("dropout", l.dropout.is_some()),
                ("use_rslora", l.use_rslora.is_some()),
                ("target_modules", l.target_modules.is_some()),
                ("seed", l.seed.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, given)| *given) {
                return Err(err(format!(
                    "[lora] {key}: with init_from, the adapter's adapter_config.json sets every LoRA \
                     option; remove `{key}` (or init_from, to start a fresh adapter)"
                )));
            }
        }
        let targets = match l.target_modules {
            None => Target::ALL.to_vec(),
            Some(TargetModules::One(s)) if s == "all-linear" => Target::ALL.to_vec(),
            Some(TargetModules::One(s)) => {
                return Err(err(format!(
                    "[lora] target_modules = \"{s}\": give a list of module names (q_proj, k_proj, v_proj, \
                     o_proj, gate_proj, up_proj, down_proj) or \"all-linear\""
                )));
            }
            Some(TargetModules::List(names)) => {
                let mut targets = Vec::with_capacity(names.len());
                for name in &names {
                    targets.push(Target::parse(name).ok_or_else(|| {
                        err(format!(
                            "[lora] target_modules: unknown module `{name}`; babelrl adapts q_proj, k_proj, \
                             v_proj, o_proj, gate_proj, up_proj and down_proj"
                        ))
                    })?);
                }
                if targets.is_empty() {
                    return Err(err("[lora] target_modules is empty: name at least one module".into()));
                }
                targets.sort();
                targets.dedup();
                targets
            }
        };
        let lora = LoraSection {
            r: l.r.unwrap_or(16),
            alpha: l.alpha.unwrap_or(32.0),
            dropout: l.dropout.unwrap_or(0.0),
            use_rslora: l.use_rslora.unwrap_or(false),
            targets,
            init_from: l.init_from.map(resolve),
            seed: l.seed.unwrap_or(0),
        };
        at_least("lora", "r", lora.r as u64, 1)?;
        if !lora.alpha.is_finite() {
            return Err(err(format!("[lora] alpha = {}: must be a finite number", lora.alpha)));
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            return Err(err(format!("[lora] dropout = {}: must lie in [0, 1)", lora.dropout)));
        }

        raw.optimizer.validate().map_err(|e| err(format!("[optimizer] {e}")))?;
        let w = raw.schedule.warmup_steps;
        if !(w >= 0.0 && w.is_finite()) {
            return Err(err(format!(
                "[schedule] warmup_steps = {w}: must be a number of steps (≥ 1) or a ratio in [0, 1)"
            )));
        }

        let sft = match raw.sft {
            None => None,
            Some(s) => {
                let data = s.data.ok_or_else(|| {
                    err("[sft] data is missing: name the JSONL file of training examples".into())
                })?;
                let length = match (s.max_steps, s.epochs) {
                    (Some(_), Some(_)) => {
                        return Err(err(
                            "[sft] max_steps and epochs are both set: give exactly one of them".into()
                        ));
                    }
                    (None, None) => {
                        return Err(err(
                            "[sft] needs max_steps (optimizer steps) or epochs (passes over the data)".into(),
                        ));
                    }
                    (Some(n), None) => {
                        at_least("sft", "max_steps", n, 1)?;
                        TrainLength::MaxSteps(n)
                    }
                    (None, Some(e)) => {
                        if !(e > 0.0 && e.is_finite()) {
                            return Err(err(format!("[sft] epochs = {e}: must be a number above 0")));
                        }
                        TrainLength::Epochs(e)
                    }
                };
                let sft = SftSection {
                    data: resolve(data),
                    length,
                    batch_size: s.batch_size.unwrap_or(8),
                    gradient_accumulation_steps: s.gradient_accumulation_steps.unwrap_or(1),
                    max_length: s.max_length.unwrap_or(1024),
                    seed: s.seed.unwrap_or(0),
                    shuffle: s.shuffle.unwrap_or(true),
                    gradient_checkpointing: s.gradient_checkpointing.unwrap_or(false),
                    learning_rate: s.learning_rate,
                };
                check_learning_rate("sft", sft.learning_rate, err)?;
                at_least("sft", "batch_size", sft.batch_size as u64, 1)?;
                at_least("sft", "gradient_accumulation_steps", sft.gradient_accumulation_steps as u64, 1)?;
                at_least("sft", "max_length", sft.max_length as u64, 2)?;
                Some(sft)
            }
        };

        if raw.grpo.is_some() && raw.dpo.is_some() {
            return Err(err(
                "[grpo] and [dpo] are both set: a run file trains one of them (optionally after \
                            [sft]); split them into two run files"
                    .into(),
            ));
        }
        let dpo = match raw.dpo {
            None => None,
            Some(d) => {
                let plugins = raw.reward.is_some() || raw.rewards.is_some();
                let d = d.validate(raw.reward_model.is_some() || plugins, resolve, err)?;
                check_learning_rate("dpo", d.learning_rate, err)?;
                if !matches!(d.pairs, DpoPairs::OnPolicy { .. }) && raw.reward_model.is_some() {
                    return Err(err(
                        "[reward_model] ranks on-policy samples of a [dpo] job: set [dpo] pairs = \
                                    \"on_policy\" or remove [reward_model]"
                            .into(),
                    ));
                }
                Some(d)
            }
        };
        // An on-policy [dpo] job may rank its samples with reward plugins, as a [grpo] job scores rollouts.
        let on_policy = dpo.as_ref().is_some_and(|d| matches!(d.pairs, DpoPairs::OnPolicy { .. }));
        let plugins = raw.reward.is_some() || raw.rewards.is_some();
        let (grpo, rewards, router) = match raw.grpo {
            None => {
                if let Some(key) = [
                    ("on_error", raw.on_error.is_some() && !(on_policy && plugins)),
                    ("[[reward]]", plugins && !on_policy),
                    ("[encoder]", raw.encoder.is_some() && !on_policy),
                    ("[reward_model]", raw.reward_model.is_some() && dpo.is_none()),
                    ("[router]", raw.router.is_some()),
                ]
                .iter()
                .find_map(|(k, given)| given.then_some(k))
                {
                    return Err(err(format!(
                        "{key} belongs to a [grpo] job (reward plugins score its rollouts, a router picks \
                         their languages, the encoder and reward model serve the plugins); remove it or add \
                         [grpo] (to train a reward model, the section is [reward_model_training])"
                    )));
                }
                let rewards = match on_policy && plugins {
                    true => {
                        let mut rewards = RunRewards::from_toml(text, path)?;
                        for spec in &mut rewards.rewards {
                            spec.path = resolve(std::mem::take(&mut spec.path));
                        }
                        Some(rewards)
                    }
                    false => None,
                };
                (None, rewards, None)
            }
            Some(g) => {
                let g = g.validate(resolve, err)?;
                check_learning_rate("grpo", g.learning_rate, err)?;
                let mut rewards = RunRewards::from_toml(text, path).map_err(|e| match e {
                    Error::Config { message, .. } if message.starts_with("no [[reward]]") => err(
                        "[grpo] needs at least one [[reward]] table (name, path of the plugin's .wasm) to \
                         score its rollouts"
                            .into(),
                    ),
                    e => e,
                })?;
                for spec in &mut rewards.rewards {
                    spec.path = resolve(std::mem::take(&mut spec.path));
                }
                let router = raw.router.map(|r| r.validate(g.num_generations, resolve, err)).transpose()?;
                (Some(g), Some(rewards), router)
            }
        };

        let reward_training = raw.reward_model_training.map(|r| r.validate(resolve, err)).transpose()?;
        if reward_training.is_some() {
            reward::check_alone(path, sft.is_some(), grpo.is_some(), dpo.is_some())?;
        }
        let encoder = raw.encoder.map(|e| e.validate(resolve));
        let reward_model = raw.reward_model.map(|r| r.validate(resolve, err)).transpose()?;

        let o = raw.output;
        let dir = o.dir.unwrap_or_else(|| {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            Path::new("runs").join(stem.unwrap_or_else(|| "run".into()))
        });
        let output = OutputSection {
            dir: resolve(dir),
            save_steps: o.save_steps.unwrap_or(1),
            save_total_limit: o.save_total_limit.unwrap_or(2),
            logging_steps: o.logging_steps.unwrap_or(1),
        };
        at_least("output", "logging_steps", output.logging_steps, 1)?;

        let sha256 = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        Ok(RunFile {
            path: path.to_path_buf(),
            sha256,
            model: ModelSection { path: raw.model.path.map(resolve) },
            lora,
            optimizer: raw.optimizer,
            schedule: raw.schedule,
            sft,
            grpo,
            dpo,
            rewards,
            encoder,
            reward_model,
            router,
            reward_training,
            output,
        })
    }

    /// The `[sft]` section, or an error saying the file lacks one.
    pub fn sft(&self) -> Result<&SftSection> {
        self.sft.as_ref().ok_or_else(|| Error::Config {
            path: self.path.clone(),
            message: "no [sft] section: an SFT run needs [sft] with at least `data` and `max_steps` \
                      (or `epochs`)"
                .into(),
        })
    }

    /// The `[grpo]` section and its rewards, or an error saying the file lacks one.
    pub fn grpo(&self) -> Result<(&GrpoSection, &RunRewards)> {
        match (&self.grpo, &self.rewards) {
            (Some(g), Some(r)) => Ok((g, r)),
            _ => Err(Error::Config {
                path: self.path.clone(),
                message: "no [grpo] section: a GRPO run needs [grpo] with at least `data` and `max_steps`, \
                          and [[reward]] tables"
                    .into(),
            }),
        }
    }

    /// The `[reward_model_training]` section, or an error saying the file lacks one.
    pub fn reward_training(&self) -> Result<&RewardTrainingSection> {
        self.reward_training.as_ref().ok_or_else(|| Error::Config {
            path: self.path.clone(),
            message: "no [reward_model_training] section: a reward-model run needs it with at least `data` \
                      and `max_steps` (or `num_train_epochs`)"
                .into(),
        })
    }

    /// The LoRA config of a fresh adapter (with `init_from`, the adapter folder's config is used
    /// instead: [`crate::lora::Adapter::load_peft`] reads it).
    pub fn lora_config(&self) -> Result<LoraConfig> {
        let l = &self.lora;
        let err = |e: Error| Error::Config { path: self.path.clone(), message: format!("[lora] {e}") };
        let mut cfg = LoraConfig::new(l.r, l.alpha, &l.targets).map_err(err)?;
        cfg.use_rslora = l.use_rslora;
        cfg.dropout = l.dropout;
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// The learning-rate schedule over `total_steps` optimizer steps.
    pub fn schedule(&self, total_steps: u64) -> Result<Schedule> {
        Schedule::new(self.schedule.lr_scheduler_type, self.schedule.warmup_steps, total_steps)
            .map_err(|e| Error::Config { path: self.path.clone(), message: format!("[schedule] {e}") })
    }
}

/// A stage's `learning_rate`, when given: a finite number above 0.
fn check_learning_rate(section: &str, lr: Option<f64>, err: impl Fn(String) -> Error) -> Result<()> {
    match lr {
        Some(lr) if !(lr > 0.0 && lr.is_finite()) => {
            Err(err(format!("[{section}] learning_rate = {lr}: must be a finite number above 0")))
        }
        _ => Ok(()),
    }
}

mod dpo;
mod grpo;
pub mod reward;
mod router;
mod services;
mod stage;
pub use dpo::{DpoPairs, DpoSection};
pub use grpo::GrpoSection;
pub use reward::RewardTrainingSection;
pub use router::RouterSection;
pub use services::{EncoderSection, RewardModelSection};
pub use stage::{SFT_ADAPTER_DIR, Stage, layout_text};

#[cfg(test)]
mod tests;
