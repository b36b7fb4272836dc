//! `[dpo]` of a run file: a DPO job under TRL's `DPOConfig` names — its pairs (a preference file, or
//! on-policy pairs a reward model picks from the policy's own samples), loss and batching — read strictly and
//! range-checked with errors naming `[dpo] key`.

use std::path::PathBuf;

use serde::Deserialize;

use super::TrainLength;
use crate::train::dpo::{DpoLossConfig, DpoLossType, DpoOptions};

/// Where a DPO job's pairs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DpoPairs {
    /// `pairs = "file"` (the default): `data` is a preference file (prompt / chosen / rejected).
    File,
    /// `pairs = "on_policy"`: `data` is a prompt file (as `[grpo]` reads); every step samples
    /// `num_generations` completions per prompt with the current policy, the judge scores them — the
    /// `[[reward]]` plugins if the file has any, else the `[reward_model]` — and the best and worst make the
    /// pair (prompts whose samples all score the same are skipped).
    OnPolicy {
        num_generations: usize,
        max_completion_length: usize,
        max_prompt_length: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
    },
}

/// `[dpo]`: direct preference optimisation.
#[derive(Debug, Clone, PartialEq)]
pub struct DpoSection {
    pub data: PathBuf,
    pub pairs: DpoPairs,
    /// `max_steps`, or `num_train_epochs` (file pairs only).
    pub length: TrainLength,
    /// Pairs (on-policy: prompts) per micro-batch, TRL's `per_device_train_batch_size` (8).
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// TRL's defaults: 0.1, `sigmoid`, 0.
    pub beta: f64,
    pub loss_type: DpoLossType,
    pub label_smoothing: f64,
    /// Most tokens of prompt + completion, cut from the end (TRL's `max_length`, 1024).
    pub max_length: usize,
    pub precompute_ref_log_probs: bool,
    pub seed: u64,
    pub shuffle: bool,
    pub gradient_checkpointing: bool,
    /// This stage's learning rate, in place of `[optimizer] learning_rate`.
    pub learning_rate: Option<f64>,
}

impl DpoSection {
    pub fn loss(&self) -> DpoLossConfig {
        DpoLossConfig {
            beta: self.beta,
            loss_type: self.loss_type,
            label_smoothing: self.label_smoothing,
            gradient_accumulation_steps: self.gradient_accumulation_steps,
        }
    }

    /// The trainer's options.
    pub fn options(&self) -> DpoOptions {
        DpoOptions {
            loss: self.loss(),
            batch_size: self.per_device_train_batch_size,
            max_length: Some(self.max_length),
            precompute_ref_log_probs: self.precompute_ref_log_probs,
            seed: self.seed,
            shuffle: self.shuffle,
            gradient_checkpointing: self.gradient_checkpointing,
        }
    }

    /// Optimizer steps over `pairs` file pairs, as transformers counts them (see
    /// [`super::SftSection::total_steps`]).
    pub fn total_steps(&self, pairs: usize) -> u64 {
        match self.length {
            TrainLength::MaxSteps(n) => n,
            TrainLength::Epochs(e) => {
                let batches = pairs.div_ceil(self.per_device_train_batch_size.max(1));
                let per_epoch = (batches.div_ceil(self.gradient_accumulation_steps.max(1)) as u64).max(1);
                (e * per_epoch as f64).ceil() as u64
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDpo {
    data: Option<PathBuf>,
    pairs: Option<String>,
    max_steps: Option<u64>,
    num_train_epochs: Option<f64>,
    per_device_train_batch_size: Option<usize>,
    gradient_accumulation_steps: Option<usize>,
    beta: Option<f64>,
    loss_type: Option<String>,
    label_smoothing: Option<f64>,
    max_length: Option<usize>,
    max_prompt_length: Option<usize>,
    precompute_ref_log_probs: Option<bool>,
    seed: Option<u64>,
    shuffle: Option<bool>,
    gradient_checkpointing: Option<bool>,
    learning_rate: Option<f64>,
    num_generations: Option<usize>,
    max_completion_length: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
}

impl RawDpo {
    /// The section, validated; `has_judge`: the file has `[reward_model]` or `[[reward]]` tables (on-policy
    /// pairs need one).
    pub(super) fn validate(
        self,
        has_judge: bool,
        resolve: impl Fn(PathBuf) -> PathBuf,
        err: impl Fn(String) -> crate::Error,
    ) -> crate::Result<DpoSection> {
        let on_policy = match self.pairs.as_deref() {
            None | Some("file") => false,
            Some("on_policy") => true,
            Some(other) => {
                return Err(err(format!(
                    "[dpo] pairs = \"{other}\": expected \"file\" (a preference file in `data`) or \
                     \"on_policy\" (pairs sampled from the policy and ranked by [reward_model])"
                )));
            }
        };
        let data = self.data.ok_or_else(|| {
            err(if on_policy {
                "[dpo] data is missing: name the JSONL file of prompts to sample pairs from".into()
            } else {
                "[dpo] data is missing: name the preference file (prompt, chosen, rejected)".into()
            })
        })?;
        let sampling_keys = [
            ("num_generations", self.num_generations.is_some()),
            ("max_completion_length", self.max_completion_length.is_some()),
            ("temperature", self.temperature.is_some()),
            ("top_p", self.top_p.is_some()),
            ("top_k", self.top_k.is_some()),
        ];
        let pairs = if on_policy {
            if !has_judge {
                return Err(err(
                    "[dpo] pairs = \"on_policy\" needs a judge to pick each prompt's chosen and rejected \
                     samples: a [reward_model] section (path = the reward model) or [[reward]] plugin tables"
                        .into(),
                ));
            }
            let p = DpoPairs::OnPolicy {
                num_generations: self.num_generations.unwrap_or(4),
                max_completion_length: self.max_completion_length.unwrap_or(256),
                max_prompt_length: self.max_prompt_length.unwrap_or(512),
                temperature: self.temperature.unwrap_or(1.0),
                top_p: self.top_p.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0),
            };
            let DpoPairs::OnPolicy {
                num_generations,
                max_completion_length,
                max_prompt_length,
                temperature,
                top_p,
                ..
            } = &p
            else {
                unreachable!("built above")
            };
            if *num_generations < 2 {
                return Err(err(format!(
                    "[dpo] num_generations = {num_generations}: on-policy pairs need at least 2 samples per \
                     prompt"
                )));
            }
            if *max_completion_length == 0 || *max_prompt_length == 0 {
                return Err(err(
                    "[dpo] max_completion_length and max_prompt_length must be at least 1".into()
                ));
            }
            if !(*temperature > 0.0 && temperature.is_finite()) {
                return Err(err(format!(
                    "[dpo] temperature = {temperature}: must be above 0 (the samples of a prompt must differ)"
                )));
            }
            if !(*top_p > 0.0 && *top_p <= 1.0) {
                return Err(err(format!("[dpo] top_p = {top_p}: must lie in (0, 1]")));
            }
            p
        } else {
            if let Some((key, _)) = sampling_keys.iter().find(|(_, given)| *given) {
                return Err(err(format!(
                    "[dpo] {key} is an on-policy sampling option: set pairs = \"on_policy\" or remove it"
                )));
            }
            if self.max_prompt_length.is_some() {
                return Err(err(
                    "[dpo] max_prompt_length: TRL 1.16's DPOConfig has none for preference files; \
                                max_length bounds prompt + completion (cut from the end)"
                        .into(),
                ));
            }
            DpoPairs::File
        };
        let length = match (self.max_steps, self.num_train_epochs) {
            (Some(_), Some(_)) => {
                return Err(
                    err("[dpo] max_steps and num_train_epochs are both set: give exactly one".into()),
                );
            }
            (None, None) => {
                return Err(err(
                    "[dpo] needs max_steps (optimizer steps) or num_train_epochs (passes over the pairs)"
                        .into(),
                ));
            }
            (Some(n), None) => TrainLength::MaxSteps(n),
            (None, Some(_)) if on_policy => {
                return Err(err(
                    "[dpo] num_train_epochs: on-policy pairs are sampled anew every step; give \
                                max_steps"
                        .into(),
                ));
            }
            (None, Some(e)) if !(e > 0.0 && e.is_finite()) => {
                return Err(err(format!("[dpo] num_train_epochs = {e}: must be a number above 0")));
            }
            (None, Some(e)) => TrainLength::Epochs(e),
        };
        let loss_type = match self.loss_type.as_deref() {
            None | Some("sigmoid") => DpoLossType::Sigmoid,
            Some("robust") => DpoLossType::Robust,
            Some(other) => {
                return Err(err(format!(
                    "[dpo] loss_type = \"{other}\": babelrl implements \"sigmoid\" (TRL's default) and \
                     \"robust\""
                )));
            }
        };
        let s = DpoSection {
            data: resolve(data),
            pairs,
            length,
            per_device_train_batch_size: self.per_device_train_batch_size.unwrap_or(8),
            gradient_accumulation_steps: self.gradient_accumulation_steps.unwrap_or(1),
            beta: self.beta.unwrap_or(0.1),
            loss_type,
            label_smoothing: self.label_smoothing.unwrap_or(0.0),
            max_length: self.max_length.unwrap_or(1024),
            precompute_ref_log_probs: self.precompute_ref_log_probs.unwrap_or(false),
            seed: self.seed.unwrap_or(0),
            shuffle: self.shuffle.unwrap_or(true),
            gradient_checkpointing: self.gradient_checkpointing.unwrap_or(false),
            learning_rate: self.learning_rate,
        };
        for (key, v, min) in [
            ("max_steps", if let TrainLength::MaxSteps(n) = s.length { n } else { 1 }, 1),
            ("per_device_train_batch_size", s.per_device_train_batch_size as u64, 1),
            ("gradient_accumulation_steps", s.gradient_accumulation_steps as u64, 1),
            ("max_length", s.max_length as u64, 2),
        ] {
            if v < min {
                return Err(err(format!("[dpo] {key} = {v}: must be at least {min}")));
            }
        }
        if on_policy && s.precompute_ref_log_probs {
            return Err(err("[dpo] precompute_ref_log_probs: on-policy pairs are new every step, so their \
                            reference log-probs cannot be computed up front; remove it"
                .into()));
        }
        s.loss().validate().map_err(|e| err(format!("[dpo] {e}")))?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::train::run_file::{RunFile, Stage};

    const PATH: &str = "/work/runs/dpo.toml";

    fn parse(text: &str) -> crate::Result<RunFile> {
        RunFile::from_toml(text, Path::new(PATH))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_dpo_file_takes_trls_names_and_defaults() {
        let rf = parse("[dpo]\ndata = \"pairs.jsonl\"\nmax_steps = 10\n").unwrap();
        let d = rf.dpo.clone().unwrap();
        assert_eq!(d.data, Path::new("/work/runs/pairs.jsonl"));
        assert_eq!((d.pairs.clone(), d.length), (DpoPairs::File, TrainLength::MaxSteps(10)));
        assert_eq!((d.beta, d.loss_type, d.label_smoothing), (0.1, DpoLossType::Sigmoid, 0.0));
        assert_eq!(
            (d.per_device_train_batch_size, d.gradient_accumulation_steps, d.max_length),
            (8, 1, 1024)
        );
        assert!(!d.precompute_ref_log_probs && d.shuffle);
        assert_eq!(rf.stages(), [Stage::Dpo]);
        assert_eq!(rf.stage_dir(Stage::Dpo), Path::new("/work/runs/runs/dpo"));
        let rf = parse(
            "[dpo]\ndata = \"p.jsonl\"\nnum_train_epochs = 2.0\nper_device_train_batch_size = 2\n\
             gradient_accumulation_steps = 2\nloss_type = \"robust\"\nlabel_smoothing = 0.1\nbeta = 0.5\n\
             learning_rate = 5e-6\nprecompute_ref_log_probs = true\n",
        )
        .unwrap();
        let d = rf.dpo.clone().unwrap();
        assert_eq!(d.total_steps(9), 6, "⌈9/2⌉ = 5 micro-batches, ⌈5/2⌉ = 3 steps an epoch, 2 epochs");
        assert_eq!(d.loss().label_smoothing, 0.1);
        assert_eq!(rf.optimizer_for(Stage::Dpo).learning_rate, 5e-6);
        let two =
            parse("[sft]\ndata = \"s.jsonl\"\nmax_steps = 2\n[dpo]\ndata = \"p.jsonl\"\nmax_steps = 2\n")
                .unwrap();
        assert_eq!(two.stages(), [Stage::Sft, Stage::Dpo]);
        assert!(two.is_two_stage());
        assert!(two.stage_dir(Stage::Dpo).ends_with("dpo"));
    }

    #[test]
    fn on_policy_pairs_need_a_reward_model_and_take_sampling_options() {
        let text = "[dpo]\ndata = \"prompts.jsonl\"\npairs = \"on_policy\"\nmax_steps = 3\n";
        let e = error(text);
        assert!(e.contains("needs a judge") && e.contains("[reward_model]") && e.contains(PATH), "{e}");
        let plugins = parse(&format!(
            "on_error = \"skip\"\n{text}[[reward]]\nname = \"len\"\npath = \"plugins/length_guard.wasm\"\n"
        ))
        .unwrap();
        let rewards = plugins.rewards.unwrap();
        assert_eq!(rewards.rewards[0].path, Path::new("/work/runs/plugins/length_guard.wasm"));
        let e =
            error("[dpo]\ndata = \"p.jsonl\"\nmax_steps = 1\n[[reward]]\nname = \"x\"\npath = \"x.wasm\"\n");
        assert!(e.contains("[[reward]] belongs to a [grpo] job"), "{e}");
        let rf =
            parse(&format!("{text}num_generations = 6\ntemperature = 0.7\n[reward_model]\npath = \"rm\"\n"))
                .unwrap();
        match rf.dpo.unwrap().pairs {
            DpoPairs::OnPolicy { num_generations, temperature, max_completion_length, .. } => {
                assert_eq!((num_generations, temperature, max_completion_length), (6, 0.7, 256))
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(rf.reward_model.unwrap().path, Path::new("/work/runs/rm"));
    }

    #[test]
    fn bad_dpo_files_are_clear_errors() {
        let base = "[dpo]\ndata = \"p.jsonl\"\n";
        let cases = [
            ("max_steps = 1\npairs = \"both\"", "pairs = \"both\""),
            ("", "needs max_steps"),
            ("max_steps = 1\nnum_train_epochs = 1.0", "both set"),
            ("max_steps = 0", "[dpo] max_steps = 0"),
            ("max_steps = 1\nbeta = 0.0", "`beta`"),
            ("max_steps = 1\nloss_type = \"ipo\"", "loss_type = \"ipo\""),
            ("max_steps = 1\nlabel_smoothing = 0.2", "robust"),
            ("max_steps = 1\nloss_type = \"robust\"\nlabel_smoothing = 0.5", "[0, 0.5)"),
            ("max_steps = 1\nmax_prompt_length = 10", "max_prompt_length"),
            ("max_steps = 1\nnum_generations = 4", "on-policy sampling option"),
            ("max_steps = 1\nmax_length = 1", "max_length = 1"),
            ("max_steps = 1\nper_device_train_batch_size = 0", "per_device_train_batch_size = 0"),
            ("max_steps = 1\n[reward_model]\npath = \"rm\"", "[reward_model] ranks on-policy samples"),
            ("max_steps = 1\n[grpo]\ndata = \"q.jsonl\"\nmax_steps = 1", "[grpo] and [dpo] are both set"),
            ("max_steps = 1\nbogus = 1", "bogus"),
        ];
        for (extra, want) in cases {
            let e = error(&format!("{base}{extra}\n"));
            assert!(e.contains(want) && e.contains(PATH), "{extra:?}: {e}");
        }
        assert!(error("[dpo]\nmax_steps = 1\n").contains("[dpo] data is missing"));
        let e = error(
            "[dpo]\ndata = \"p.jsonl\"\npairs = \"on_policy\"\nnum_train_epochs = 1.0\n\
             [reward_model]\npath = \"rm\"\n",
        );
        assert!(e.contains("give max_steps"), "{e}");
        let e = error(
            "[dpo]\ndata = \"p.jsonl\"\npairs = \"on_policy\"\nmax_steps = 1\n\
             precompute_ref_log_probs = true\n[reward_model]\npath = \"rm\"\n",
        );
        assert!(e.contains("precompute_ref_log_probs"), "{e}");
        let e = error(
            "[dpo]\ndata = \"p.jsonl\"\npairs = \"on_policy\"\nmax_steps = 1\nnum_generations = 1\n\
             [reward_model]\npath = \"rm\"\n",
        );
        assert!(e.contains("num_generations = 1"), "{e}");
    }
}
