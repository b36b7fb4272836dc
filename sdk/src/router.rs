//! The [`Router`] trait, the [`export_router!`](crate::export_router) macro, and versioned state bytes.

use crate::reward::{parse_config, short_type_name};
use crate::{ChooseRequest, Feedback};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::RefCell;

/// A language router: picks the languages of a question's rollouts and learns from their rewards.
pub trait Router: Sized + 'static {
    /// The plugin's configuration, deserialised from the run file's `config` table.
    type Config: DeserializeOwned;
    /// Builds the router from its configuration and the run's languages (the arms; non-empty, unique).
    fn new(config: Self::Config, languages: Vec<String>) -> Result<Self, String>;
    /// `request.k` languages (with repetition) for the rollouts of one question.
    fn choose(&mut self, request: &ChooseRequest) -> Result<Vec<String>, String>;
    /// The rewards of training step `step`'s rollouts.
    fn update(&mut self, step: u64, feedback: &[Feedback]) -> Result<(), String>;
    /// Everything needed to resume (saved with each checkpoint); see [`encode_state`].
    fn save_state(&self) -> Vec<u8>;
    /// Restores what [`Router::save_state`] wrote; garbage must give `Err`, never a panic.
    fn load_state(&mut self, state: &[u8]) -> Result<(), String>;
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    plugin: &'a str,
    version: u32,
    state: &'a T,
}

#[derive(serde::Deserialize)]
struct EnvelopeIn<T> {
    plugin: String,
    version: u32,
    state: T,
}

/// Encodes router state as JSON bytes `{"plugin": .., "version": .., "state": ..}`.
pub fn encode_state<T: Serialize>(plugin: &str, version: u32, state: &T) -> Vec<u8> {
    // Serialising plain data (maps with string keys, numbers) into a Vec cannot fail.
    serde_json::to_vec(&EnvelopeOut { plugin, version, state }).unwrap_or_default()
}

/// Decodes bytes written by [`encode_state`], checking the plugin name and version.
pub fn decode_state<T: DeserializeOwned>(plugin: &str, version: u32, bytes: &[u8]) -> Result<T, String> {
    let env: EnvelopeIn<T> = serde_json::from_slice(bytes)
        .map_err(|e| format!("{plugin}: router state is not valid {plugin} state JSON: {e}"))?;
    if env.plugin != plugin {
        return Err(format!("{plugin}: router state was saved by plugin `{}`, not `{plugin}`", env.plugin));
    }
    if env.version != version {
        return Err(format!(
            "{plugin}: router state has version {}, this plugin reads version {version}",
            env.version
        ));
    }
    Ok(env.state)
}

/// Checks a decoded router state against the run: the same languages in the same order, and every
/// per-topic row (one entry per language) of the right length with finite values.
pub fn check_state_rows<'a>(
    state_languages: &[String],
    run_languages: &[String],
    rows: impl IntoIterator<Item = &'a [f64]>,
) -> Result<(), String> {
    if state_languages != run_languages {
        return Err(format!("state is for languages {state_languages:?}, the run has {run_languages:?}"));
    }
    for row in rows {
        if row.len() != run_languages.len() || row.iter().any(|x| !x.is_finite()) {
            return Err(format!(
                "state has a row of the wrong length ({} values for {} languages) or with non-finite values",
                row.len(),
                run_languages.len()
            ));
        }
    }
    Ok(())
}

/// `configure` export: validates the languages, parses the config and stores the router.
#[doc(hidden)]
pub fn configure_slot<R: Router>(
    slot: &RefCell<Option<R>>,
    config_json: &str,
    languages: Vec<String>,
) -> Result<(), String> {
    let name = short_type_name::<R>();
    if languages.is_empty() {
        return Err(format!("{name}: the run gives no languages to route between"));
    }
    for (i, l) in languages.iter().enumerate() {
        if languages[..i].contains(l) {
            return Err(format!("{name}: language `{l}` is listed twice"));
        }
    }
    let config = parse_config::<R::Config>(config_json).map_err(|e| format!("{name}: {e}"))?;
    *slot.borrow_mut() = Some(R::new(config, languages).map_err(|e| format!("{name}: {e}"))?);
    Ok(())
}

fn with_router<R: Router, T>(
    slot: &RefCell<Option<R>>,
    what: &str,
    f: impl FnOnce(&mut R) -> Result<T, String>,
) -> Result<T, String> {
    let name = short_type_name::<R>();
    let mut slot = slot.borrow_mut();
    let router = slot.as_mut().ok_or_else(|| format!("{name}: {what} called before configure"))?;
    f(router).map_err(|e| format!("{name}: {e}"))
}

/// `choose` export; checks that exactly `k` languages come back.
#[doc(hidden)]
pub fn choose_slot<R: Router>(
    slot: &RefCell<Option<R>>,
    request: &ChooseRequest,
) -> Result<Vec<String>, String> {
    with_router(slot, "choose", |r| {
        let langs = r.choose(request)?;
        if langs.len() != request.k as usize {
            return Err(format!("chose {} languages, the engine asked for k = {}", langs.len(), request.k));
        }
        Ok(langs)
    })
}

/// `update` export.
#[doc(hidden)]
pub fn update_slot<R: Router>(
    slot: &RefCell<Option<R>>,
    step: u64,
    feedback: &[Feedback],
) -> Result<(), String> {
    with_router(slot, "update", |r| r.update(step, feedback))
}

/// `save-state` export; empty before `configure`.
#[doc(hidden)]
pub fn save_slot<R: Router>(slot: &RefCell<Option<R>>) -> Vec<u8> {
    slot.borrow().as_ref().map(R::save_state).unwrap_or_default()
}

/// `load-state` export.
#[doc(hidden)]
pub fn load_slot<R: Router>(slot: &RefCell<Option<R>>, state: &[u8]) -> Result<(), String> {
    with_router(slot, "load-state", |r| r.load_state(state))
}

/// Exports a [`Router`] implementation as the plugin's `router` world:
/// `babelrl_sdk::export_router!(MyRouter);` (once per crate, at module level).
#[macro_export]
macro_rules! export_router {
    ($ty:ty) => {
        const _: () = {
            struct __BabelrlRouterExport;
            ::std::thread_local! {
                static __BABELRL_ROUTER: ::core::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            impl $crate::bindings::router::Guest for __BabelrlRouterExport {
                fn configure(
                    config_json: ::std::string::String,
                    languages: ::std::vec::Vec<::std::string::String>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    __BABELRL_ROUTER
                        .with(|s| $crate::router::configure_slot::<$ty>(s, &config_json, languages))
                }
                fn choose(
                    request: $crate::ChooseRequest,
                ) -> ::core::result::Result<::std::vec::Vec<::std::string::String>, ::std::string::String>
                {
                    __BABELRL_ROUTER.with(|s| $crate::router::choose_slot::<$ty>(s, &request))
                }
                fn update(
                    step: u64,
                    feedback: ::std::vec::Vec<$crate::Feedback>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    __BABELRL_ROUTER.with(|s| $crate::router::update_slot::<$ty>(s, step, &feedback))
                }
                fn save_state() -> ::std::vec::Vec<u8> {
                    __BABELRL_ROUTER.with(|s| $crate::router::save_slot::<$ty>(s))
                }
                fn load_state(
                    state: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    __BABELRL_ROUTER.with(|s| $crate::router::load_slot::<$ty>(s, &state))
                }
            }
            $crate::bindings::router::__export_router_world!(
                __BabelrlRouterExport with_types_in $crate::bindings::router
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round-robin over the languages; state = the next index.
    struct RoundRobin {
        langs: Vec<String>,
        next: usize,
    }

    impl Router for RoundRobin {
        type Config = serde_json::Value;
        fn new(_: serde_json::Value, langs: Vec<String>) -> Result<Self, String> {
            Ok(RoundRobin { langs, next: 0 })
        }
        fn choose(&mut self, req: &ChooseRequest) -> Result<Vec<String>, String> {
            let out = (0..req.k).map(|i| self.langs[(self.next + i as usize) % self.langs.len()].clone());
            let out: Vec<String> = out.collect();
            self.next = (self.next + out.len()) % self.langs.len();
            Ok(out)
        }
        fn update(&mut self, _: u64, _: &[Feedback]) -> Result<(), String> {
            Ok(())
        }
        fn save_state(&self) -> Vec<u8> {
            encode_state("round-robin", 1, &self.next)
        }
        fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
            self.next = decode_state("round-robin", 1, state)?;
            Ok(())
        }
    }

    fn req(k: u32) -> ChooseRequest {
        ChooseRequest { question_id: "q".into(), topic: None, question_language: "en".into(), k, step: 0 }
    }

    #[test]
    fn glue_round_trip() {
        let slot = RefCell::new(None::<RoundRobin>);
        assert!(save_slot(&slot).is_empty());
        assert!(choose_slot(&slot, &req(1)).unwrap_err().contains("before configure"));
        let langs = || vec!["en".to_string(), "zh".to_string(), "bo".to_string()];
        assert!(configure_slot(&slot, "{}", vec![]).unwrap_err().contains("no languages"));
        let dup = vec!["en".to_string(), "en".to_string()];
        assert!(configure_slot(&slot, "{}", dup).unwrap_err().contains("listed twice"));
        configure_slot(&slot, "{}", langs()).unwrap();
        assert_eq!(choose_slot(&slot, &req(2)).unwrap(), ["en", "zh"]);
        let saved = save_slot(&slot);
        assert_eq!(choose_slot(&slot, &req(1)).unwrap(), ["bo"]);
        load_slot(&slot, &saved).unwrap();
        assert_eq!(choose_slot(&slot, &req(1)).unwrap(), ["bo"]);
        assert!(load_slot(&slot, b"\xff garbage").is_err());
        let other = encode_state("other", 1, &0usize);
        assert!(load_slot(&slot, &other).unwrap_err().contains("saved by plugin `other`"));
        let newer = encode_state("round-robin", 2, &0usize);
        assert!(load_slot(&slot, &newer).unwrap_err().contains("version 2"));
        update_slot(&slot, 0, &[]).unwrap();
    }
}
