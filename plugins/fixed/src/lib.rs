//! Router plugin: every rollout in the question's own language (the baseline without routing).

use babelrl_sdk::prelude::*;
use serde::Deserialize;

/// No options; unknown keys are an error.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The router: stateless.
#[derive(Debug)]
pub struct Fixed;

impl Router for Fixed {
    type Config = Config;

    fn new(_: Config, _languages: Vec<String>) -> Result<Self, String> {
        Ok(Fixed)
    }

    fn choose(&mut self, request: &ChooseRequest) -> Result<Vec<String>, String> {
        Ok(vec![request.question_language.clone(); request.k as usize])
    }

    fn update(&mut self, _step: u64, _feedback: &[Feedback]) -> Result<(), String> {
        Ok(())
    }

    fn save_state(&self) -> Vec<u8> {
        babelrl_sdk::router::encode_state("fixed", 1, &())
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        babelrl_sdk::router::decode_state::<()>("fixed", 1, state)
    }
}

babelrl_sdk::export_router!(Fixed);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_the_question_language() {
        let mut r = Fixed::new(Config {}, vec!["en".into(), "bo".into()]).unwrap();
        let req = ChooseRequest {
            question_id: "q".into(),
            topic: None,
            question_language: "bo".into(),
            k: 3,
            step: 7,
        };
        assert_eq!(r.choose(&req).unwrap(), ["bo", "bo", "bo"]);
        let s = r.save_state();
        r.load_state(&s).unwrap();
        assert!(r.load_state(b"junk").is_err());
    }

    /// Checkpoints corrupted node by node are refused, or leave a router that still works.
    #[test]
    fn corrupt_states_are_refused_or_harmless() {
        let langs = vec!["en".to_string(), "bo".to_string()];
        let make = || Fixed::new(Config {}, langs.clone()).unwrap();
        let (refused, _) = babelrl_sdk::state_check::check_corrupt_states(make, &langs, &make().save_state());
        assert!(refused > 0);
    }
}
