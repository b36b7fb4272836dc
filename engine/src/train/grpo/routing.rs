//! LRPO's language routing of a GRPO step (`[router]`): per question, the first `keep_original` rollouts
//! in the question's own language, the router plugin's `choose` picks the languages of the rest, a
//! rollout in another language gets the question through the run file's template (encoded again), and
//! after the rewards the router learns from one `feedback` per routed rollout. The prompts of every
//! (question, language) pair are built and checked when the router is set up, before any rollout.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::plugin::{ChooseRequest, Feedback, HostServices, RouterPlugin};
use crate::text::Tokenizer;
use crate::train::RouterSection;
use crate::train::grpo::{GrpoPrompt, PromptEncoder};
use crate::{Error, Result};

/// One rollout of a routed step.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutedRollout {
    /// The question: an index into the run's prompts.
    pub prompt: usize,
    /// The language the rollout is asked in.
    pub language: String,
    /// Index of `language` in the router's languages when the prompt is the template applied (`None`:
    /// the question as it is, in its own language).
    variant: Option<usize>,
    /// Chosen by the router (it gets this rollout's reward back); `false` for the `keep_original` ones.
    pub routed: bool,
}

/// The question id and topic the router sees for one prompt.
#[derive(Debug, Clone)]
struct Question {
    id: String,
    topic: Option<String>,
    language: String,
}

/// A GRPO run's language router: the plugin and every question's prompt in every routed language.
pub struct LanguageRouter {
    plugin: RouterPlugin,
    keep_original: usize,
    languages: Vec<String>,
    questions: Vec<Question>,
    /// `variants[p][l]`: prompt `p` asked in `languages[l]` (`None` where that is its own language).
    variants: Vec<Vec<Option<GrpoPrompt>>>,
}

impl LanguageRouter {
    /// Checks that every prompt of `data` has `language` and `id`, builds each prompt in each of the
    /// section's languages (at most `max_prompt_length` tokens), then loads the router plugin. Errors
    /// name the data file and line, or the plugin.
    pub fn new(
        section: &RouterSection,
        prompts: &[GrpoPrompt],
        tok: &Tokenizer,
        max_prompt_length: usize,
        data: &Path,
        services: Arc<dyn HostServices>,
    ) -> Result<LanguageRouter> {
        let mut questions = Vec::with_capacity(prompts.len());
        for p in prompts {
            let bad = |m: &str| Error::format(data, format!("line {}: {m}", p.line));
            let language = p.language.clone().ok_or_else(|| {
                bad("no `language`: with [router], every row needs the question's language (e.g. \"en\"); \
                     its first keep_original rollouts are asked in it")
            })?;
            let id = p.field_text("id").ok_or_else(|| {
                bad("no `id`: with [router], every row needs an `id`, the router's question id (an optional \
                     `topic` column groups questions)")
            })?;
            questions.push(Question { id, topic: p.field_text("topic"), language });
        }
        let mut encoder = PromptEncoder::new(tok)?;
        let mut variants = Vec::with_capacity(prompts.len());
        for (p, q) in prompts.iter().zip(&questions) {
            let mut row = Vec::with_capacity(section.languages.len());
            for l in &section.languages {
                if *l == q.language {
                    row.push(None);
                    continue;
                }
                let name = &section.language_names[l];
                let v = encoder.rephrase(p, l, |text| section.template.render(text, l, name))?;
                if v.tokens.len() > max_prompt_length {
                    return Err(Error::format(
                        data,
                        format!(
                            "line {}: asked in {l} through [router] template, the prompt has {} tokens; \
                             max_prompt_length is {max_prompt_length}: raise [grpo] max_prompt_length or \
                             shorten the template",
                            p.line,
                            v.tokens.len()
                        ),
                    ));
                }
                row.push(Some(v));
            }
            variants.push(row);
        }
        let config = serde_json::to_string(&section.config).expect("a JSON value serializes");
        let plugin = RouterPlugin::load(
            &section.path,
            &section.name,
            &config,
            &section.languages,
            &section.limits,
            &section.capabilities,
            services,
        )?;
        Ok(LanguageRouter {
            plugin,
            keep_original: section.keep_original,
            languages: section.languages.clone(),
            questions,
            variants,
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    /// The languages it routes between.
    pub fn languages(&self) -> &[String] {
        &self.languages
    }

    /// The rollouts of one step over the questions `picked` (indices into the prompts), `num_generations`
    /// per question in order: `keep_original` in the question's language, then the router's choice
    /// (`choose` with `k = num_generations − keep_original` and `step`, once per question).
    pub fn route(
        &mut self,
        step: u64,
        picked: &[usize],
        num_generations: usize,
    ) -> Result<Vec<RoutedRollout>> {
        let keep = self.keep_original.min(num_generations);
        let mut out = Vec::with_capacity(picked.len() * num_generations);
        for &p in picked {
            let q = &self.questions[p];
            let own = |language: String, routed| RoutedRollout { prompt: p, language, variant: None, routed };
            out.extend((0..keep).map(|_| own(q.language.clone(), false)));
            let k = num_generations - keep;
            if k == 0 {
                continue;
            }
            let request = ChooseRequest {
                question_id: q.id.clone(),
                topic: q.topic.clone(),
                question_language: q.language.clone(),
                k: k as u32,
                step,
            };
            for language in self.plugin.choose(&request)? {
                // The host has checked that every chosen language is one of the router's.
                let l = self.languages.iter().position(|x| *x == language).expect("checked by the host");
                let variant = (language != q.language).then_some(l);
                out.push(RoutedRollout { prompt: p, language, variant, routed: true });
            }
        }
        Ok(out)
    }

    /// The prompt rollout `r` is asked with: the question as it is, or its routed variant (whose
    /// `language` is the rollout's, so reward plugins see the target language).
    pub fn prompt<'a>(&'a self, prompts: &'a [GrpoPrompt], r: &RoutedRollout) -> &'a GrpoPrompt {
        match r.variant {
            None => &prompts[r.prompt],
            Some(l) => self.variants[r.prompt][l].as_ref().expect("a variant for every other language"),
        }
    }

    /// Prompt `p` asked in `language`: the question as it is in its own language, else its variant
    /// (`None` for a language that is neither its own nor one of the router's).
    pub fn prompt_in<'a>(
        &'a self,
        prompts: &'a [GrpoPrompt],
        p: usize,
        language: &str,
    ) -> Option<&'a GrpoPrompt> {
        if self.questions[p].language == language {
            return Some(&prompts[p]);
        }
        let l = self.languages.iter().position(|x| x == language)?;
        self.variants[p][l].as_ref()
    }

    /// Feeds back the rewards of a step: `update(step, …)` with one feedback (topic, language, reward)
    /// per routed rollout that has a reward (NaN: no plugin scored it; left out).
    pub fn update(&mut self, step: u64, rollouts: &[RoutedRollout], rewards: &[f64]) -> Result<()> {
        let feedback: Vec<Feedback> = rollouts
            .iter()
            .zip(rewards)
            .filter(|(r, reward)| r.routed && reward.is_finite())
            .map(|(r, reward)| Feedback {
                topic: self.questions[r.prompt].topic.clone().unwrap_or_default(),
                language: r.language.clone(),
                reward: *reward as f32,
            })
            .collect();
        self.plugin.update(step, &feedback)
    }

    /// The router's state, for a checkpoint.
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        self.plugin.save_state()
    }

    /// Restores a checkpoint's state; a router that refuses it keeps its previous state.
    pub fn load_state(&mut self, state: &[u8]) -> Result<()> {
        self.plugin.load_state(state)
    }
}

/// What the metrics show of a routed step: the share of the router's choices that went to each of
/// `languages` (empty when it chose none), and the mean reward of the rollouts in each language (all
/// rollouts, the kept ones too; `None` where none in that language has a reward).
pub fn route_stats(
    languages: &[String],
    rollouts: &[RoutedRollout],
    rewards: &[f64],
) -> (BTreeMap<String, f64>, BTreeMap<String, Option<f64>>) {
    let routed: Vec<&RoutedRollout> = rollouts.iter().filter(|r| r.routed).collect();
    let mut shares = BTreeMap::new();
    if !routed.is_empty() {
        for l in languages {
            let n = routed.iter().filter(|r| r.language == *l).count();
            shares.insert(l.clone(), n as f64 / routed.len() as f64);
        }
    }
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (r, reward) in rollouts.iter().zip(rewards) {
        let entry = sums.entry(r.language.clone()).or_default();
        if reward.is_finite() {
            entry.0 += reward;
            entry.1 += 1;
        }
    }
    let means = sums.into_iter().map(|(l, (s, n))| (l, (n > 0).then(|| s / n as f64))).collect();
    (shares, means)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(language: &str, routed: bool) -> RoutedRollout {
        RoutedRollout { prompt: 0, language: language.into(), variant: None, routed }
    }

    #[test]
    fn shares_count_routed_rollouts_and_means_every_rollout_with_a_reward() {
        let langs = vec!["en".to_string(), "fr".to_string(), "zh".to_string()];
        let rollouts = [
            rollout("de", false),
            rollout("fr", true),
            rollout("fr", true),
            rollout("en", true),
            rollout("fr", true),
            rollout("de", false),
        ];
        let rewards = [1.0, 0.5, f64::NAN, 0.25, 1.0, 0.0];
        let (shares, means) = route_stats(&langs, &rollouts, &rewards);
        let s: Vec<(&str, f64)> = shares.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        assert_eq!(s, [("en", 0.25), ("fr", 0.75), ("zh", 0.0)]);
        let m: Vec<(&str, Option<f64>)> = means.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        assert_eq!(m, [("de", Some(0.5)), ("en", Some(0.25)), ("fr", Some(0.75))]);
        // Nothing routed (keep_original = num_generations): no shares.
        let (shares, _) = route_stats(&langs, &rollouts[..1], &rewards[..1]);
        assert!(shares.is_empty());
    }
}
