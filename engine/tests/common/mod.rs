//! Shared test helpers: one GPU per test binary, seeded random data, tolerant comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use babelrl::gpu::{Gpu, GpuOptions};
use rand::{Rng, SeedableRng};

/// The adapter every GPU test in this binary shares (lavapipe in CI).
pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        Gpu::new(&GpuOptions::from_env()).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
    })
    .clone()
}

/// Uniform random values in [-scale, scale), seeded.
pub fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Asserts |a − b| ≤ tol(i) elementwise, naming the first offending index.
pub fn assert_close_by(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for i in 0..got.len() {
        let d = (got[i] - want[i]).abs();
        assert!(
            d <= tol(i) && got[i].is_finite(),
            "{what}[{i}]: got {} want {} (diff {d}, tol {})",
            got[i],
            want[i],
            tol(i)
        );
        if d > worst.0 {
            worst = (d, i);
        }
    }
    eprintln!("{what}: max abs diff {:.3e} at {}", worst.0, worst.1);
}

/// Asserts |a − b| ≤ atol + rtol·|b| elementwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_close_by(what, got, want, |i| atol + rtol * want[i].abs());
}

/// A test's scratch folder `babelrl-NAME-XXXXXX` in the system temp folder: it derefs to its path and is
/// removed, with everything in it, when dropped, so when the test ends whether it passed or panicked.
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A fresh, empty scratch folder named after `name` (see [`Scratch`]).
pub fn scratch(name: &str) -> Scratch {
    let dir = tempfile::Builder::new().prefix(&format!("babelrl-{name}-")).tempdir();
    Scratch(
        dir.unwrap_or_else(|e| {
            panic!("creating a scratch folder in {}: {e}", std::env::temp_dir().display())
        }),
    )
}

/// Root of the repository (for fixtures).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Reports a test that cannot run here: a message and `None` normally, a failure when
/// `BABELRL_REQUIRE_ALL` is set (scripts/test.sh and CI set it, so nothing is skipped there silently).
pub fn skip<T>(why: String) -> Option<T> {
    if std::env::var_os("BABELRL_REQUIRE_ALL").is_some() {
        panic!("{why} (BABELRL_REQUIRE_ALL is set: no test may be skipped)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// The model cache (`BABELRL_CACHE`, default `~/.cache/babelrl`).
pub fn model_dir(name: &str) -> Option<PathBuf> {
    let dir = babelrl::model::cache_dir().join("models").join(name);
    if dir.exists() {
        Some(dir)
    } else {
        skip(format!("model `{name}` not found at {}; run scripts/fetch_models.sh", dir.display()))
    }
}
