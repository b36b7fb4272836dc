//! The stages of a run: `[sft]`, `[grpo]`, `[dpo]`, or SFT then one of the others (cold-start SFT, then
//! GRPO or DPO from the SFT adapter, as the semantic-reward recipe trains); where each stage's checkpoints and final adapter go, its
//! optimizer options, and the check that a checkpoint belongs to the run file's stage layout.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RunFile;
use crate::train::{AdamWConfig, TrainerState};
use crate::{Error, Result};

/// One job of a run file. A file with two runs them in this order (`Sft` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// `[sft]`: supervised fine-tuning.
    Sft,
    /// `[grpo]`: reinforcement learning with plugin rewards.
    Grpo,
    /// `[dpo]`: direct preference optimisation.
    Dpo,
    /// `[reward_model_training]`: a Bradley–Terry reward model (a run file's only job).
    #[serde(rename = "reward_model_training")]
    RewardModel,
}

impl Stage {
    /// The section's name, as in the run file and in checkpoints and metrics (`sft`, `grpo`, `dpo`,
    /// `reward_model_training`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Sft => "sft",
            Stage::Grpo => "grpo",
            Stage::Dpo => "dpo",
            Stage::RewardModel => "reward_model_training",
        }
    }

    /// Every stage, in run order.
    pub const ALL: [Stage; 4] = [Stage::Sft, Stage::Grpo, Stage::Dpo, Stage::RewardModel];

    /// The stage of `name` (one of [`Stage::name`]'s).
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `sft → grpo`, `grpo`, or `one stage` for an empty list (a checkpoint written before stages existed).
pub fn layout_text(stages: &[Stage]) -> String {
    if stages.is_empty() {
        return "one stage (a checkpoint that records no stage)".into();
    }
    stages.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(" then ")
}

/// The folder name of the SFT stage's final adapter in a two-stage run.
pub const SFT_ADAPTER_DIR: &str = "sft-adapter";

impl RunFile {
    /// The file's stages in the order they run: `[sft]`, `[grpo]`, `[dpo]`, or `[sft]` and one other.
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages = Vec::with_capacity(2);
        if self.sft.is_some() {
            stages.push(Stage::Sft);
        }
        if self.grpo.is_some() {
            stages.push(Stage::Grpo);
        }
        if self.dpo.is_some() {
            stages.push(Stage::Dpo);
        }
        if self.reward_training.is_some() {
            stages.push(Stage::RewardModel);
        }
        stages
    }

    /// Whether the file runs cold-start SFT and then GRPO or DPO.
    pub fn is_two_stage(&self) -> bool {
        self.stages().len() == 2
    }

    /// The folder of `stage`'s checkpoints: `[output] dir` itself for a one-stage run; `dir/sft` and
    /// `dir/grpo` (or `dir/dpo`) for a two-stage run (each stage counts its steps from 1).
    pub fn stage_dir(&self, stage: Stage) -> PathBuf {
        if self.is_two_stage() { self.output.dir.join(stage.name()) } else { self.output.dir.clone() }
    }

    /// Where `stage`'s final adapter goes: `dir/adapter`, but for the SFT stage of a two-stage run,
    /// `dir/sft-adapter` (the adapter the GRPO stage starts from, kept so base, SFT and SFT+GRPO can be
    /// compared).
    pub fn stage_adapter_dir(&self, stage: Stage) -> PathBuf {
        if self.is_two_stage() && stage == Stage::Sft {
            self.output.dir.join(SFT_ADAPTER_DIR)
        } else {
            self.output.dir.join("adapter")
        }
    }

    /// `[optimizer]` with the stage's `learning_rate` where its section sets one.
    pub fn optimizer_for(&self, stage: Stage) -> AdamWConfig {
        let lr = match stage {
            Stage::Sft => self.sft.as_ref().and_then(|s| s.learning_rate),
            Stage::Grpo => self.grpo.as_ref().and_then(|g| g.learning_rate),
            Stage::Dpo => self.dpo.as_ref().and_then(|d| d.learning_rate),
            Stage::RewardModel => self.reward_training.as_ref().and_then(|r| r.learning_rate),
        };
        AdamWConfig { learning_rate: lr.unwrap_or(self.optimizer.learning_rate), ..self.optimizer }
    }

    /// The stage the checkpoint in `dir` (with trainer state `state`) continues, after checking that it
    /// was written by a run of this file's stage layout; a checkpoint of another layout (a one-stage run
    /// resumed with a two-stage file, a stage the file no longer has) is an error naming both.
    pub fn resume_stage(&self, state: &TrainerState, dir: &Path) -> Result<Stage> {
        let stages = self.stages();
        let mismatch = |what: String| Error::Config {
            path: self.path.clone(),
            message: format!(
                "{}: {what}; this run file has {}: resume with the run file the checkpoint was trained \
                 with, or set another [output] dir to start a new run",
                dir.display(),
                layout_text(&stages)
            ),
        };
        match (state.stage, state.stages.as_slice()) {
            // Written before stages were recorded: a one-stage run of whichever job the file holds.
            (None, []) if stages.len() == 1 => Ok(stages[0]),
            (None, []) => Err(mismatch("the checkpoint is of a one-stage run".into())),
            (Some(stage), layout) if layout == stages.as_slice() && layout.contains(&stage) => Ok(stage),
            (Some(stage), layout) => Err(mismatch(format!(
                "the checkpoint is of the [{stage}] stage of a run with {}",
                layout_text(layout)
            ))),
            (None, layout) => Err(mismatch(format!(
                "the checkpoint lists the stages {} but not its own",
                layout_text(layout)
            ))),
        }
    }
}
