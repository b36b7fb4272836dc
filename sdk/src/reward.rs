//! The [`Reward`] trait, the [`export_reward!`](crate::export_reward) macro and the glue between them.

use crate::Sample;
use serde::de::DeserializeOwned;
use std::cell::RefCell;

/// A reward function. The engine calls [`Reward::new`] once with the plugin's `config` table from the
/// run file, then [`Reward::score`] once per group (all completions of one prompt).
pub trait Reward: Sized + 'static {
    /// The plugin's configuration, deserialised from the run file's `config` table (JSON inside).
    /// Tip: `#[serde(deny_unknown_fields)]` turns a misspelt option into a clear error.
    type Config: DeserializeOwned;
    /// Builds the reward from its configuration; an `Err` stops the run with the message.
    fn new(config: Self::Config) -> Result<Self, String>;
    /// One score per sample, in order; `None` means "no score" for that sample.
    fn score(&mut self, group: &[Sample]) -> Result<Vec<Option<f32>>, String>;
}

/// Deserialises a plugin configuration from JSON; an empty string or `null` reads as `{}`.
pub fn parse_config<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    let json = json.trim();
    let json = if json.is_empty() || json == "null" { "{}" } else { json };
    serde_json::from_str(json).map_err(|e| format!("invalid plugin config: {e} (config: {json})"))
}

/// The last path segment of a type name, for messages (`my_plugin::MyReward` -> `MyReward`).
pub(crate) fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// `configure` export: parses the config and stores the reward in `slot`.
#[doc(hidden)]
pub fn configure_slot<R: Reward>(slot: &RefCell<Option<R>>, config_json: &str) -> Result<(), String> {
    let name = short_type_name::<R>();
    let config = parse_config::<R::Config>(config_json).map_err(|e| format!("{name}: {e}"))?;
    let reward = R::new(config).map_err(|e| format!("{name}: {e}"))?;
    *slot.borrow_mut() = Some(reward);
    Ok(())
}

/// `score` export: scores with the stored reward and checks the answer's length and finiteness.
#[doc(hidden)]
pub fn score_slot<R: Reward>(
    slot: &RefCell<Option<R>>,
    group: &[Sample],
) -> Result<Vec<Option<f32>>, String> {
    let name = short_type_name::<R>();
    let mut slot = slot.borrow_mut();
    let reward = slot.as_mut().ok_or_else(|| format!("{name}: score called before configure"))?;
    let scores = reward.score(group).map_err(|e| format!("{name}: {e}"))?;
    check_scores(name, &scores, group.len())?;
    Ok(scores)
}

/// Checks that a plugin returned one finite score (or `None`) per sample.
pub fn check_scores(name: &str, scores: &[Option<f32>], group_len: usize) -> Result<(), String> {
    if scores.len() != group_len {
        return Err(format!("{name}: returned {} scores for a group of {group_len} samples", scores.len()));
    }
    if let Some(i) = scores.iter().position(|s| s.is_some_and(|v| !v.is_finite())) {
        return Err(format!("{name}: score of sample {i} is {:?}, not a finite number", scores[i]));
    }
    Ok(())
}

/// Exports a [`Reward`] implementation as the plugin's `reward` world:
/// `babelrl_sdk::export_reward!(MyReward);` (once per crate, at module level).
#[macro_export]
macro_rules! export_reward {
    ($ty:ty) => {
        const _: () = {
            struct __BabelrlRewardExport;
            ::std::thread_local! {
                static __BABELRL_REWARD: ::core::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            impl $crate::bindings::reward::Guest for __BabelrlRewardExport {
                fn configure(config_json: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    __BABELRL_REWARD.with(|slot| $crate::reward::configure_slot::<$ty>(slot, &config_json))
                }
                fn score(
                    group: ::std::vec::Vec<$crate::Sample>,
                ) -> ::core::result::Result<::std::vec::Vec<::core::option::Option<f32>>, ::std::string::String> {
                    __BABELRL_REWARD.with(|slot| $crate::reward::score_slot::<$ty>(slot, &group))
                }
            }
            $crate::bindings::reward::__export_reward_world!(
                __BabelrlRewardExport with_types_in $crate::bindings::reward
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        bonus: f32,
        #[serde(default)]
        broken: bool,
    }

    struct Len(Cfg);

    impl Reward for Len {
        type Config = Cfg;
        fn new(config: Cfg) -> Result<Self, String> {
            Ok(Len(config))
        }
        fn score(&mut self, group: &[Sample]) -> Result<Vec<Option<f32>>, String> {
            if self.0.broken {
                return Ok(vec![Some(f32::NAN); group.len()]);
            }
            Ok(group.iter().map(|s| Some(s.completion.len() as f32 + self.0.bonus)).collect())
        }
    }

    #[test]
    fn glue_configures_scores_and_checks() {
        let slot = RefCell::new(None::<Len>);
        let group = [Sample::new("p", "abc"), Sample::new("p", "")];
        let err = score_slot(&slot, &group).unwrap_err();
        assert!(err.contains("before configure"), "{err}");
        let err = configure_slot(&slot, r#"{"bonsu": 1}"#).unwrap_err();
        assert!(err.contains("Len") && err.contains("bonsu"), "{err}");
        configure_slot(&slot, "").unwrap();
        assert_eq!(score_slot(&slot, &group).unwrap(), vec![Some(3.0), Some(0.0)]);
        configure_slot(&slot, r#"{"bonus": 0.5}"#).unwrap();
        assert_eq!(score_slot(&slot, &group).unwrap(), vec![Some(3.5), Some(0.5)]);
        configure_slot(&slot, r#"{"broken": true}"#).unwrap();
        let err = score_slot(&slot, &group).unwrap_err();
        assert!(err.contains("sample 0") && err.contains("NaN"), "{err}");
    }

    #[test]
    fn check_scores_counts() {
        assert!(check_scores("x", &[Some(1.0), None], 2).is_ok());
        let err = check_scores("x", &[Some(1.0)], 2).unwrap_err();
        assert!(err.contains("1 scores for a group of 2"), "{err}");
        assert!(check_scores("x", &[None, Some(f32::INFINITY)], 2).unwrap_err().contains("sample 1"));
    }
}
