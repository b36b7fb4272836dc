//! `[reward_model_training]` of a run file: a Bradley–Terry reward model trained from preference pairs
//! (see [`crate::train::reward`]), with TRL's `RewardConfig` names, read strictly and range-checked with
//! errors naming `[reward_model_training] key`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TrainLength;
use crate::train::RewardOptions;
use crate::{Error, Result};

/// The section's name in the run file.
pub const SECTION: &str = "reward_model_training";

/// `[reward_model_training]`: the pairs and how the run walks them.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardTrainingSection {
    /// Preference pairs, JSONL or a JSON array (see [`crate::train::pairs`]).
    pub data: PathBuf,
    pub length: TrainLength,
    /// Pairs per micro-batch (`per_device_train_batch_size`, 8); each runs both sides.
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// Most tokens of one side (prompt and answer); a longer pair is an error (1024, TRL's default).
    pub max_length: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub gradient_checkpointing: bool,
    /// In place of `[optimizer] learning_rate`.
    pub learning_rate: Option<f64>,
    /// TRL's `center_rewards_coefficient` (off by default).
    pub center_rewards_coefficient: Option<f64>,
}

impl RewardTrainingSection {
    /// Optimizer steps over `pairs` pairs, counted as transformers counts them (see
    /// [`super::SftSection::total_steps`]).
    pub fn total_steps(&self, pairs: usize) -> u64 {
        match self.length {
            TrainLength::MaxSteps(n) => n,
            TrainLength::Epochs(e) => {
                let batches = pairs.div_ceil(self.batch_size) as u64;
                let per_epoch = batches.div_ceil(self.gradient_accumulation_steps as u64).max(1);
                (e * per_epoch as f64).ceil() as u64
            }
        }
    }

    /// The trainer's options with the model's pad token.
    pub fn options(&self, pad_id: Option<u32>) -> RewardOptions {
        RewardOptions {
            batch_size: self.batch_size,
            gradient_accumulation_steps: self.gradient_accumulation_steps,
            seed: self.seed,
            shuffle: self.shuffle,
            gradient_checkpointing: self.gradient_checkpointing,
            center_rewards_coefficient: self.center_rewards_coefficient,
            pad_id,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRewardTraining {
    data: Option<PathBuf>,
    max_steps: Option<u64>,
    #[serde(alias = "num_train_epochs")]
    epochs: Option<f64>,
    #[serde(alias = "per_device_train_batch_size")]
    batch_size: Option<usize>,
    gradient_accumulation_steps: Option<usize>,
    max_length: Option<usize>,
    seed: Option<u64>,
    shuffle: Option<bool>,
    gradient_checkpointing: Option<bool>,
    learning_rate: Option<f64>,
    center_rewards_coefficient: Option<f64>,
}

impl RawRewardTraining {
    pub(super) fn validate(
        self,
        resolve: impl Fn(PathBuf) -> PathBuf,
        err: impl Fn(String) -> Error,
    ) -> Result<RewardTrainingSection> {
        let s = self;
        let data = s.data.ok_or_else(|| {
            err(format!(
                "[{SECTION}] data is missing: name the file of preference pairs (prompt, chosen, rejected)"
            ))
        })?;
        let length = match (s.max_steps, s.epochs) {
            (Some(_), Some(_)) => {
                return Err(err(format!(
                    "[{SECTION}] max_steps and num_train_epochs are both set: give exactly one of them"
                )));
            }
            (None, None) => {
                return Err(err(format!(
                    "[{SECTION}] needs max_steps (optimizer steps) or num_train_epochs (passes over the pairs)"
                )));
            }
            (Some(0), None) => return Err(err(format!("[{SECTION}] max_steps = 0: must be at least 1"))),
            (Some(n), None) => TrainLength::MaxSteps(n),
            (None, Some(e)) if !(e > 0.0 && e.is_finite()) => {
                return Err(err(format!("[{SECTION}] num_train_epochs = {e}: must be a number above 0")));
            }
            (None, Some(e)) => TrainLength::Epochs(e),
        };
        let section = RewardTrainingSection {
            data: resolve(data),
            length,
            batch_size: s.batch_size.unwrap_or(8),
            gradient_accumulation_steps: s.gradient_accumulation_steps.unwrap_or(1),
            max_length: s.max_length.unwrap_or(1024),
            seed: s.seed.unwrap_or(0),
            shuffle: s.shuffle.unwrap_or(true),
            gradient_checkpointing: s.gradient_checkpointing.unwrap_or(false),
            learning_rate: s.learning_rate,
            center_rewards_coefficient: s.center_rewards_coefficient,
        };
        for (key, v) in [
            ("per_device_train_batch_size", section.batch_size),
            ("gradient_accumulation_steps", section.gradient_accumulation_steps),
            ("max_length", section.max_length),
        ] {
            if v == 0 {
                return Err(err(format!("[{SECTION}] {key} = 0: must be at least 1")));
            }
        }
        if let Some(lr) = section.learning_rate
            && !(lr > 0.0 && lr.is_finite())
        {
            return Err(err(format!("[{SECTION}] learning_rate = {lr}: must be a finite number above 0")));
        }
        if let Some(c) = section.center_rewards_coefficient
            && !(c >= 0.0 && c.is_finite())
        {
            return Err(err(format!(
                "[{SECTION}] center_rewards_coefficient = {c}: must be a finite number ≥ 0 (TRL suggests 0.01)"
            )));
        }
        Ok(section)
    }
}

/// Checks that the run file's other jobs are absent: a reward model trains alone.
pub(super) fn check_alone(path: &Path, sft: bool, grpo: bool, dpo: bool) -> Result<()> {
    if sft || grpo || dpo {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: format!(
                "[{SECTION}] trains a reward model on its own: remove [{}] (train the policy in another run \
                 file, with the reward model in its [reward_model] section)",
                if sft {
                    "sft"
                } else if grpo {
                    "grpo"
                } else {
                    "dpo"
                }
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{RunFile, Stage};
    use super::*;

    fn parse(text: &str) -> Result<RunFile> {
        RunFile::from_toml(text, Path::new("/work/runs/rm.toml"))
    }

    #[test]
    fn trls_reward_config_names_and_defaults() {
        let rf = parse(
            "[reward_model_training]\ndata = \"pairs.jsonl\"\nnum_train_epochs = 2\n\
             per_device_train_batch_size = 4\ncenter_rewards_coefficient = 0.01\nlearning_rate = 1e-4\n",
        )
        .unwrap();
        let r = rf.reward_training().unwrap();
        assert_eq!(r.data, PathBuf::from("/work/runs/pairs.jsonl"));
        assert_eq!((r.length, r.batch_size, r.gradient_accumulation_steps), (TrainLength::Epochs(2.0), 4, 1));
        assert_eq!((r.max_length, r.shuffle, r.center_rewards_coefficient), (1024, true, Some(0.01)));
        assert_eq!(rf.stages(), [Stage::RewardModel]);
        assert_eq!(rf.optimizer_for(Stage::RewardModel).learning_rate, 1e-4);
        // 10 pairs, 4 per batch → 3 batches an epoch, 2 epochs.
        assert_eq!(r.total_steps(10), 6);
        assert_eq!(Stage::parse("reward_model_training"), Some(Stage::RewardModel));
        let short =
            parse("[reward_model_training]\ndata = \"p.jsonl\"\nmax_steps = 3\nbatch_size = 2\n").unwrap();
        assert_eq!(short.reward_training().unwrap().batch_size, 2);
    }

    #[test]
    fn bad_sections_name_the_key() {
        let cases = [
            ("[reward_model_training]\nmax_steps = 3\n", "data is missing"),
            ("[reward_model_training]\ndata = \"p\"\n", "needs max_steps"),
            ("[reward_model_training]\ndata = \"p\"\nmax_steps = 3\nepochs = 1\n", "both set"),
            ("[reward_model_training]\ndata = \"p\"\nmax_steps = 0\n", "max_steps = 0"),
            (
                "[reward_model_training]\ndata = \"p\"\nmax_steps = 1\nper_device_train_batch_size = 0\n",
                "batch_size = 0",
            ),
            (
                "[reward_model_training]\ndata = \"p\"\nmax_steps = 1\ncenter_rewards_coefficient = -1\n",
                "center_rewards",
            ),
            ("[reward_model_training]\ndata = \"p\"\nmax_steps = 1\nbeta = 0.1\n", "unknown field `beta`"),
            (
                "[reward_model_training]\ndata = \"p\"\nmax_steps = 1\n[sft]\ndata = \"x\"\nmax_steps = 1\n",
                "remove [sft]",
            ),
            (
                "[reward_model]\npath = \"rm\"\n[sft]\ndata = \"x\"\nmax_steps = 1\n",
                "[reward_model_training]",
            ),
        ];
        for (text, says) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("rm.toml"), "{text}: {e}");
        }
    }
}
