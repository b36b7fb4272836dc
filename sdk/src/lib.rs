//! babelrl-sdk: write babelrl reward and router plugins (WebAssembly components) in a few lines of Rust.
//!
//! A reward plugin is a type implementing [`Reward`](reward::Reward), exported with
//! [`export_reward!`]; a router plugin implements [`Router`](router::Router) and is exported with
//! [`export_router!`]. Build it with `cargo build --target wasm32-wasip2 --release` (crate type
//! `cdylib`) and the `.wasm` file is a component the engine loads.
//!
//! ```no_run
//! use babelrl_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     #[serde(default)]
//!     min_chars: usize,
//! }
//!
//! struct NonEmpty(Config);
//!
//! impl Reward for NonEmpty {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(NonEmpty(config))
//!     }
//!     fn score(&mut self, group: &[Sample]) -> Result<Vec<Option<f32>>, String> {
//!         let ok = |s: &Sample| s.completion.chars().count() > self.0.min_chars;
//!         Ok(group.iter().map(|s| Some(if ok(s) { 1.0 } else { 0.0 })).collect())
//!     }
//! }
//!
//! babelrl_sdk::export_reward!(NonEmpty);
//! ```
//!
//! The helper modules ([`script`], [`lang`], [`similarity`], [`number`], [`rng`], [`bandit`]) are plain
//! Rust: they work (and are tested) natively, so a plugin's logic can be unit-tested with `cargo test`.
//! Host functions ([`host`]) only work inside the engine; natively they return an error.

pub mod bandit;
pub mod host;
pub mod lang;
pub mod number;
pub mod reward;
pub mod rng;
pub mod router;
pub mod sample;
pub mod script;
pub mod similarity;
pub mod state_check;

/// Bindings generated from `sdk/wit/babelrl.wit` (the plugin ABI). Plugin authors rarely need these:
/// use [`prelude`] and the [`export_reward!`] / [`export_router!`] macros instead.
pub mod bindings {
    /// The `reward` world: exports `configure` and `score`, imports `host`.
    pub mod reward {
        wit_bindgen::generate!({
            world: "reward",
            path: "wit",
            pub_export_macro: true,
            export_macro_name: "__export_reward_world",
            default_bindings_module: "babelrl_sdk::bindings::reward",
            // Each plugin links the section of its own world through the export macro; a `#[used]`
            // copy of both worlds here would make every plugin claim both worlds' exports.
            disable_custom_section_link_helpers: true,
            additional_derives: [PartialEq],
        });
    }
    /// The `router` world: exports `configure`, `choose`, `update`, `save-state` and `load-state`.
    #[allow(clippy::too_many_arguments)] // the generated lowering of `choose-request`
    pub mod router {
        wit_bindgen::generate!({
            world: "router",
            path: "wit",
            pub_export_macro: true,
            export_macro_name: "__export_router_world",
            default_bindings_module: "babelrl_sdk::bindings::router",
            disable_custom_section_link_helpers: true,
            with: {
                "babelrl:plugin/types@0.1.0": super::reward::babelrl::plugin::types,
                "babelrl:plugin/host@0.1.0": super::reward::babelrl::plugin::host,
            },
        });
    }
}

pub use bindings::reward::babelrl::plugin::types::{ChooseRequest, Feedback, LogLevel, Sample};

/// `use babelrl_sdk::prelude::*;` brings in the traits, the ABI types and the log macros.
pub mod prelude {
    pub use crate::reward::Reward;
    pub use crate::router::Router;
    pub use crate::{ChooseRequest, Feedback, LogLevel, Sample};
    pub use crate::{debug, error, info, trace, warn};
}
