//! `[encoder]` and `[reward_model]` of a run file: the models behind the host services `embed` and
//! `reward-model-score` that a `[grpo]` job's plugins may call.

use std::path::PathBuf;

use serde::Deserialize;

/// `[encoder]`: the sentence encoder serving `embed`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EncoderSection {
    /// A BERT / XLM-R folder, loaded (and checked) before any rollout; `None`: the cached
    /// multilingual-e5-small ([`crate::plugin::default_encoder_dir`]), loaded when a plugin first calls
    /// `embed`.
    pub path: Option<PathBuf>,
}

/// `[reward_model]`: the scalar-head reward model serving `reward-model-score`, loaded before any rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardModelSection {
    /// A `*ForSequenceClassification` folder or a PEFT SEQ_CLS adapter folder
    /// ([`crate::model::RewardModel::load`]).
    pub path: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncoder {
    path: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRewardModel {
    path: Option<PathBuf>,
}

impl RawEncoder {
    pub(super) fn validate(self, resolve: impl Fn(PathBuf) -> PathBuf) -> EncoderSection {
        EncoderSection { path: self.path.map(resolve) }
    }
}

impl RawRewardModel {
    pub(super) fn validate(
        self,
        resolve: impl Fn(PathBuf) -> PathBuf,
        err: impl Fn(String) -> crate::Error,
    ) -> crate::Result<RewardModelSection> {
        let path = self.path.ok_or_else(|| {
            err("[reward_model] path is missing: name the reward model's folder (a *ForSequenceClassification \
                 checkpoint or a PEFT SEQ_CLS adapter)"
                .into())
        })?;
        Ok(RewardModelSection { path: resolve(path) })
    }
}
