//! `[router]` of a run file: LRPO's language router for a `[grpo]` job — the router plugin, the languages
//! it routes between, how many rollouts per question stay in the question's language, and the template
//! that tells a routed rollout its language. Read strictly, errors naming `[router] key`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::plugin::{Capabilities, PluginLimits};
use crate::train::grpo::{DEFAULT_TEMPLATE, PromptTemplate, language_name};

/// `[router]`: for each question of a `[grpo]` step, the first `keep_original` rollouts are asked in the
/// question's language (`language` column) and the router plugin chooses the languages of the others.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterSection {
    /// Name in logs, metrics and errors.
    pub name: String,
    /// The router component (`.wasm`), resolved against the run file's folder.
    pub path: PathBuf,
    /// The languages the router chooses from (codes as the data's `language` column writes them).
    pub languages: Vec<String>,
    /// Rollouts per question kept in the question's language, before the routed ones (1).
    pub keep_original: usize,
    /// The prompt of a rollout in another language than the question's.
    pub template: PromptTemplate,
    /// The name of each of `languages` (`[router.language_names]`, else the built-in name; a language
    /// without either is named by its code, which only a template without `{language_name}` allows).
    pub language_names: BTreeMap<String, String>,
    /// The plugin's own settings (`[router.config]`), passed to its `configure` as JSON.
    pub config: serde_json::Value,
    pub limits: PluginLimits,
    pub capabilities: Capabilities,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouter {
    name: Option<String>,
    path: Option<PathBuf>,
    languages: Option<Vec<String>>,
    keep_original: Option<usize>,
    template: Option<String>,
    language_names: Option<BTreeMap<String, String>>,
    config: Option<toml::Table>,
    limits: Option<PluginLimits>,
    capabilities: Option<Capabilities>,
}

impl RawRouter {
    /// The section, validated against the job's `num_generations`; `resolve` makes `path` absolute,
    /// `err` names the file.
    pub(super) fn validate(
        self,
        num_generations: usize,
        resolve: impl Fn(PathBuf) -> PathBuf,
        err: impl Fn(String) -> crate::Error,
    ) -> crate::Result<RouterSection> {
        let name = self.name.ok_or_else(|| err("[router] name is missing: name the router".into()))?;
        if name.trim().is_empty() {
            return Err(err("[router] name is empty".into()));
        }
        let path = self
            .path
            .ok_or_else(|| err("[router] path is missing: give the router plugin's .wasm file".into()))?;
        let languages = self.languages.ok_or_else(|| {
            err("[router] languages is missing: list the languages the router chooses from, e.g. \
                 [\"en\", \"fr\", \"zh\"]"
                .into())
        })?;
        if languages.is_empty() {
            return Err(err("[router] languages is empty: list at least one language".into()));
        }
        for (i, l) in languages.iter().enumerate() {
            if l.trim().is_empty() || l.trim() != l {
                return Err(err(format!("[router] languages[{i}] = {l:?}: a language code without spaces")));
            }
            if languages[..i].contains(l) {
                return Err(err(format!("[router] languages: \"{l}\" is listed twice")));
            }
        }
        let keep_original = self.keep_original.unwrap_or(1);
        if keep_original > num_generations {
            return Err(err(format!(
                "[router] keep_original = {keep_original}: at most [grpo] num_generations = {num_generations} \
                 rollouts per question can stay in its language"
            )));
        }
        let source = self.template.unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
        let template = PromptTemplate::parse(&source).map_err(|m| err(format!("[router] template {m}")))?;
        let given = self.language_names.unwrap_or_default();
        if let Some(l) = given.keys().find(|l| !languages.contains(l)) {
            return Err(err(format!(
                "[router.language_names] names \"{l}\", which is not in [router] languages ({})",
                languages.join(", ")
            )));
        }
        let mut language_names = BTreeMap::new();
        for l in &languages {
            let name = match (given.get(l), language_name(l)) {
                (Some(n), _) if n.trim().is_empty() => {
                    return Err(err(format!("[router.language_names] {l} is empty")));
                }
                (Some(n), _) => n.clone(),
                (None, Some(n)) => n.to_string(),
                (None, None) if template.uses_language_name() => {
                    return Err(err(format!(
                        "[router] languages: \"{l}\" has no built-in name for the template's {{language_name}}: \
                         add it to [router.language_names], e.g. {l} = \"…\""
                    )));
                }
                (None, None) => l.clone(),
            };
            language_names.insert(l.clone(), name);
        }
        let limits = self.limits.unwrap_or_default();
        limits.validate().map_err(|m| err(format!("[router] {m}")))?;
        let config = serde_json::to_value(self.config.unwrap_or_default())
            .map_err(|e| err(format!("[router] config: not representable as JSON ({e})")))?;
        Ok(RouterSection {
            name,
            path: resolve(path),
            languages,
            keep_original,
            template,
            language_names,
            config,
            limits,
            capabilities: self.capabilities.unwrap_or_default(),
        })
    }
}
