//! Best-of-n: sample `n` completions of each prompt in one batched generation, score them with a judge —
//! a reward model ([`RewardModel`]) or reward plugins ([`RewardSet`], each prompt's n completions scored as
//! one group, as GRPO scores its rollouts) — and keep the best. Ties go to the earliest sample; a
//! completion the judge could not score (no plugin scored it, or a NaN) is never the best.

use super::{Completion, SamplingConfig, generate};
use crate::lora::Adapted;
use crate::model::{RewardModel, RmPrompt};
use crate::plugin::{RewardSet, Sample};
use crate::text::ChatMessage;
use crate::text::Tokenizer;
use crate::{Error, Result};

/// What scores the completions.
pub enum Judge<'a> {
    /// A scalar-head reward model: `prompt + completion` as text, or a chat prompt's messages with the
    /// completion as the assistant's reply (see [`BestOfPrompt::messages`]).
    RewardModel(&'a RewardModel),
    /// Reward plugins with weights: the weighted sum of the plugins that scored a completion.
    Plugins(&'a mut RewardSet),
}

/// One prompt to answer: its token ids and what the judge sees of it (`completion` is filled in per
/// sample; `reference`, `language` and `fields` go to the plugins as they are).
#[derive(Debug, Clone)]
pub struct BestOfPrompt {
    pub tokens: Vec<u32>,
    pub sample: Sample,
    /// The messages of a chat prompt: a reward-model judge then scores the conversation with the
    /// completion as the assistant's reply, rendered with its own chat template (`None`: text).
    pub messages: Option<Vec<ChatMessage>>,
}

/// A prompt's n completions, their scores and the best.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BestOf {
    pub completions: Vec<Completion>,
    /// The judge's score of each completion (`None`: not scored).
    pub scores: Vec<Option<f32>>,
    /// Each plugin's raw scores (plugin order; empty for a reward model).
    pub per_plugin: Vec<Vec<Option<f32>>>,
    /// The index of the best completion.
    pub best: usize,
}

impl BestOf {
    /// The best completion.
    pub fn best(&self) -> &Completion {
        &self.completions[self.best]
    }
}

/// The index of the highest score (the first on a tie), ignoring `None` and NaN.
pub fn argmax(scores: &[Option<f32>]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, s) in scores.iter().enumerate() {
        if let Some(v) = s.filter(|v| !v.is_nan())
            && best.is_none_or(|(_, b)| v > b)
        {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Samples `n` completions of every prompt with `cfg` (all prompts × n in one batch; `cfg.seed` seeds the
/// whole batch), scores each prompt's group with `judge` and keeps the best. An error names the prompt
/// none of whose completions got a score.
pub fn best_of_n<'m>(
    model: impl Into<Adapted<'m>>,
    tokenizer: &Tokenizer,
    prompts: &[BestOfPrompt],
    n: usize,
    cfg: &SamplingConfig,
    mut judge: Judge<'_>,
) -> Result<Vec<BestOf>> {
    if n == 0 {
        return Err(Error::Input("best-of-n: n must be at least 1".into()));
    }
    let repeated: Vec<Vec<u32>> =
        prompts.iter().flat_map(|p| std::iter::repeat_n(p.tokens.clone(), n)).collect();
    let mut done = generate(model, tokenizer, &repeated, cfg, |_| {})?.into_iter();
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let completions: Vec<Completion> = done.by_ref().take(n).collect();
        let group: Vec<Sample> =
            completions.iter().map(|c| Sample { completion: c.text.clone(), ..p.sample.clone() }).collect();
        let (scores, per_plugin): (Vec<Option<f32>>, _) = match &mut judge {
            Judge::RewardModel(rm) => {
                let prompt = match &p.messages {
                    Some(m) => RmPrompt::Chat(m),
                    None => RmPrompt::Text(&p.sample.prompt),
                };
                let texts: Vec<String> = group.iter().map(|s| s.completion.clone()).collect();
                let prompts = vec![prompt; texts.len()];
                (rm.score_prompts(&prompts, &texts)?.into_iter().map(Some).collect(), Vec::new())
            }
            Judge::Plugins(set) => {
                let scored = set.score(&group)?;
                let scores = (0..group.len())
                    .map(|k| scored.per_plugin.iter().any(|s| s[k].is_some()).then_some(scored.total[k]))
                    .collect();
                (scores, scored.per_plugin)
            }
        };
        let best = argmax(&scores).ok_or_else(|| {
            Error::Input(format!(
                "best-of-n: none of the {n} completions of prompt {i} got a score from the judge (does the \
                 prompt lack a column a plugin needs, e.g. `reference`?)"
            ))
        })?;
        out.push(BestOf { completions, scores, per_plugin, best });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn the_best_is_the_first_highest_finite_score() {
        assert_eq!(argmax(&[Some(0.5), Some(2.0), None, Some(2.0)]), Some(1));
        assert_eq!(argmax(&[None, Some(f32::NAN), Some(-3.0)]), Some(2));
        assert_eq!(argmax(&[None, Some(f32::NAN)]), None);
        assert_eq!(argmax(&[Some(f32::NEG_INFINITY), Some(-1e30)]), Some(1));
    }
}
