//! Shared by the plugin tests and the plugin benchmark: builds the guest crates in tests/hostile-plugins
//! to wasm32-wasip2 components once per test binary, and small sample helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use babelrl::plugin::Sample;

/// The built guest components.
pub struct Guests {
    pub reward: PathBuf,
    pub router: PathBuf,
}

/// Builds the guests (once per process). `None`, after printing why, when the wasm32-wasip2 target is
/// not installed: the caller skips. A failing build panics with cargo's output.
pub fn guests() -> Option<&'static Guests> {
    static BUILT: OnceLock<Option<Guests>> = OnceLock::new();
    BUILT.get_or_init(build).as_ref()
}

fn build() -> Option<Guests> {
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    if !Path::new(&sysroot).join("lib/rustlib/wasm32-wasip2").is_dir() {
        let why = "the wasm32-wasip2 target is not installed (rustup target add wasm32-wasip2)";
        assert!(std::env::var_os("BABELRL_REQUIRE_ALL").is_none(), "{why} (BABELRL_REQUIRE_ALL is set)");
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/hostile-plugins");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-plugins");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo to build the hostile plugins");
    assert!(
        out.status.success(),
        "building tests/hostile-plugins failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = target.join("wasm32-wasip2/release");
    Some(Guests { reward: dir.join("hostile_reward.wasm"), router: dir.join("hostile_router.wasm") })
}

/// A sample with this prompt and completion (reference "ref", language "en").
pub fn sample(prompt: &str, completion: &str) -> Sample {
    Sample {
        prompt: prompt.into(),
        completion: completion.into(),
        reference: Some("ref".into()),
        language: Some("en".into()),
        fields: vec![("id".into(), "7".into())],
    }
}

/// Eight samples whose first completion is `command` (what the hostile guest should do) and whose
/// prompts are `arg`.
pub fn command(command: &str, arg: &str) -> Vec<Sample> {
    (0..8).map(|i| sample(arg, if i == 0 { command } else { "fine" })).collect()
}

/// Eight ordinary samples of different lengths, one of them empty (the guest gives it no score).
pub fn ordinary() -> Vec<Sample> {
    ["a", "bb", "ccc", "", "dddd", "héllo", "ünïcödé", "the quick brown fox"]
        .iter()
        .map(|c| sample("What is up?", c))
        .collect()
}

/// What the well-behaved guest returns for `group`: characters × `scale`, `None` when empty.
pub fn expected(group: &[Sample], scale: f32) -> Vec<Option<f32>> {
    group
        .iter()
        .map(|s| (!s.completion.is_empty()).then(|| s.completion.chars().count() as f32 * scale))
        .collect()
}
