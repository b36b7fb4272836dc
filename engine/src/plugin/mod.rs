//! Reward and router plugins as sandboxed WebAssembly components (wasmtime component model): limits
//! per call (deadline, memory, fuel, host calls, output size), no ambient capabilities, host services
//! (`embed`, `reward-model-score`, `log`) behind [`HostServices`], and errors that name the plugin and
//! what it did, with whatever text came from the plugin escaped ([`text::sanitize`]). See
//! `docs/plugins-host.md` for the plugin author's view.

mod cache;
mod capture;
mod limiter;
mod limits;
mod precheck;
mod reward;
mod router;
mod runtime;
mod sample;
mod sandbox;
mod services;
mod set;
pub mod text;

pub use cache::cache_dir;
pub use limits::{Capabilities, PluginLimits};
pub use reward::RewardPlugin;
pub use router::RouterPlugin;
pub use runtime::{World, inspect};
pub use sample::{read_jsonl, sample_from_json};
pub use services::{
    EMBED_CHUNK, EncoderServices, HostServices, NoServices, RunServices, SCORE_CHUNK, default_encoder_dir,
};
pub use set::{GroupRewards, OnError, RewardSet, RewardSpec, RunRewards, combine};

/// Host bindings generated from `sdk/wit/babelrl.wit` (the one definition of the plugin ABI).
pub(crate) mod bindings {
    /// The `reward` world; also the home of the shared `types` and `host` interfaces.
    pub mod reward {
        wasmtime::component::bindgen!({
            path: "../sdk/wit",
            world: "reward",
            imports: { default: trappable },
        });
    }

    /// The `router` world, reusing the `types` and `host` bindings of [`reward`].
    pub mod router {
        wasmtime::component::bindgen!({
            path: "../sdk/wit",
            world: "router",
            imports: { default: trappable },
            with: {
                "babelrl:plugin/types": super::reward::babelrl::plugin::types,
                "babelrl:plugin/host": super::reward::babelrl::plugin::host,
            },
        });
    }
}

/// One completion of a group with its prompt and data set fields, as the plugin receives it.
pub use bindings::reward::babelrl::plugin::types::Sample;
/// A router's request for rollout languages, and the reward feedback it learns from.
pub use bindings::reward::babelrl::plugin::types::{ChooseRequest, Feedback};
