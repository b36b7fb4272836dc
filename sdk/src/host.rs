//! Host functions served by the engine, wrapped as plain Rust functions, and `info!`-style log macros.
//!
//! Inside the engine these call the `babelrl:plugin/host` imports (counted against the plugin's
//! limits). In a native build (unit tests) there is no engine: `embed` and `reward_model_score`
//! return an error and `log` prints to stderr.

use crate::LogLevel;
#[cfg(target_arch = "wasm32")]
use crate::bindings::reward::babelrl::plugin::host as raw;

#[cfg(not(target_arch = "wasm32"))]
fn native(name: &str) -> String {
    format!("host function `{name}` is only available inside the babelrl engine (this is a native build)")
}

/// Sentence embeddings (L2-normalised) of `texts` from the run's encoder, one vector per text.
pub fn embed(texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
    #[cfg(target_arch = "wasm32")]
    {
        raw::embed(texts)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = texts;
        Err(native("embed"))
    }
}

/// Scalar scores of `(prompts[i], completions[i])` pairs from the run's reward model.
pub fn reward_model_score(prompts: &[String], completions: &[String]) -> Result<Vec<f32>, String> {
    #[cfg(target_arch = "wasm32")]
    {
        raw::reward_model_score(prompts, completions)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (prompts, completions);
        Err(native("reward-model-score"))
    }
}

/// Writes `message` to the engine's log at `level`, attributed to the plugin.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    raw::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[plugin {level:?}] {message}");
}

/// Logs a formatted message at error level: `error!("bad {x}")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::host::log($crate::LogLevel::Error, &::std::format!($($arg)*)) };
}
/// Logs a formatted message at warn level: `warn!("odd {x}")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::host::log($crate::LogLevel::Warn, &::std::format!($($arg)*)) };
}
/// Logs a formatted message at info level: `info!("loaded {n} pairs")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::host::log($crate::LogLevel::Info, &::std::format!($($arg)*)) };
}
/// Logs a formatted message at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::host::log($crate::LogLevel::Debug, &::std::format!($($arg)*)) };
}
/// Logs a formatted message at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::host::log($crate::LogLevel::Trace, &::std::format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_host_calls_are_errors_not_panics() {
        let err = embed(&["a".to_string()]).unwrap_err();
        assert!(err.contains("embed") && err.contains("native"), "{err}");
        let err = reward_model_score(&["p".into()], &["c".into()]).unwrap_err();
        assert!(err.contains("reward-model-score"), "{err}");
        crate::info!("log works natively: {}", 1);
    }
}
