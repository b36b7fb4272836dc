//! Overhead of one reward-plugin call on a group of 8 samples beyond the plugin's own work: the hostile
//! guest's well-behaved scorer (characters × scale) through wasmtime against the same Rust function
//! called natively. Run: `cargo bench -p babelrl --bench plugin_overhead`.

#[path = "../tests/plugins/guest_builds.rs"]
mod plugin_common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use babelrl::plugin::{Capabilities, NoServices, PluginLimits, RewardPlugin, Sample};

/// The guest's scorer, natively.
fn native(group: &[Sample], scale: f32) -> Vec<Option<f32>> {
    group
        .iter()
        .map(|s| (!s.completion.is_empty()).then(|| s.completion.chars().count() as f32 * scale))
        .collect()
}

/// Best average time per call over `rounds` rounds of `n` calls.
fn best_of(rounds: usize, n: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..n {
        f();
    }
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed() / n as u32
        })
        .min()
        .unwrap()
}

fn group(completion_len: usize) -> Vec<Sample> {
    (0..8)
        .map(|i| {
            let mut s = plugin_common::sample("Translate to French: where is the station?", "");
            s.completion = "où est la gare ".chars().cycle().take(completion_len + i).collect();
            s
        })
        .collect()
}

fn main() {
    let Some(g) = plugin_common::guests() else { return };
    let load = |limits: &PluginLimits| {
        RewardPlugin::load(
            &g.reward,
            "bench",
            r#"{"scale": 2}"#,
            limits,
            &Capabilities::default(),
            Arc::new(NoServices),
        )
        .expect("load the bench plugin")
    };
    let mut plain = load(&PluginLimits::default());
    let mut fueled = load(&PluginLimits { fuel: Some(1 << 40), ..Default::default() });
    println!("{:<44} {:>10} {:>10} {:>10}", "group of 8 samples", "wasm", "native", "overhead");
    for len in [16, 256, 4096] {
        let group = group(len);
        assert_eq!(plain.score(&group).unwrap(), native(&group, 2.0), "plugin and native disagree");
        let wasm = best_of(10, 2_000, || {
            black_box(plain.score(black_box(&group)).unwrap());
        });
        let fuel = best_of(10, 2_000, || {
            black_box(fueled.score(black_box(&group)).unwrap());
        });
        let nat = best_of(10, 2_000, || {
            black_box(native(black_box(&group), 2.0));
        });
        let row = |label: String, t: Duration| {
            let over = t.saturating_sub(nat);
            println!("{label:<44} {:>8.2}µs {:>8.2}µs {:>8.2}µs", us(t), us(nat), us(over));
        };
        row(format!("completions of ~{len} bytes"), wasm);
        row(format!("completions of ~{len} bytes, fuel metering"), fuel);
    }
    // A trap costs a fresh instance and a `configure` before the next call.
    let restart = best_of(5, 20, || {
        black_box(load(&PluginLimits::default()));
    });
    println!("load from memo + instantiate + configure: {:.1} µs", us(restart));
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
