//! Plugin host tests in one binary: the example plugins' formulas, the `babelrl plugin` commands, and
//! the hostile-guest suite (deadlines, memory, fuel, traps, capabilities). Kept apart from the GPU-heavy
//! inference binary so that the deadline checks do not share the two cores with lavapipe.
//! Run one part with e.g. `cargo test -p babelrl --test plugins hostile::`.

#[path = "../common/mod.rs"]
mod common;
mod guest_builds;

mod cli;
mod cli_services;
mod example_plugins;
mod hostile;
mod sandbox_limits;
mod sandbox_output;
