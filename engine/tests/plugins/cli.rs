//! `babelrl plugin check` and `babelrl plugin score` on the hostile-plugin guests (well-behaved mode),
//! and the on-disk cache of compiled components.

use crate::common::scratch;
use crate::guest_builds;

use std::path::Path;
use std::process::{Command, Output};

use guest_builds::guests;

fn babelrl(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_babelrl"))
        .args(args)
        .env("BABELRL_CACHE", cache)
        .output()
        .expect("run the babelrl binary")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "babelrl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_reports_world_sample_call_and_limits_and_caches_the_compile() {
    let Some(g) = guests() else { return };
    let cache = scratch("cli-cache");
    let reward = g.reward.to_str().unwrap();
    let args =
        ["plugin", "check", reward, "--config", r#"{"scale": 2}"#, "--limits", r#"{"deadline_ms": 250}"#];
    let text = stdout(&babelrl(&args, &cache));
    assert!(text.contains("world       babelrl:plugin@0.1.0 reward"), "{text}");
    // "bonjour" and "good morning", 7 and 12 characters, times the configured scale of 2.
    assert!(text.contains("score(2 samples) = [Some(14.0), Some(24.0)]"), "{text}");
    assert!(text.contains(r#""deadline_ms":250"#) && text.contains(r#""memory_mib":128"#), "{text}");
    let cached = |dir: &Path| -> Vec<_> {
        std::fs::read_dir(dir.join("plugins")).unwrap().map(|e| e.unwrap().path()).collect()
    };
    let first = cached(&cache);
    assert_eq!(first.len(), 1, "one compiled component in the cache: {first:?}");
    let stamp = std::fs::metadata(&first[0]).unwrap().modified().unwrap();
    stdout(&babelrl(&args, &cache));
    assert_eq!(cached(&cache), first, "a second run must reuse the cache entry");
    assert_eq!(std::fs::metadata(&first[0]).unwrap().modified().unwrap(), stamp, "cache entry rewritten");

    let router = g.router.to_str().unwrap();
    let text = stdout(&babelrl(&["plugin", "check", router, "--languages", "en,fr,zh"], &cache));
    assert!(text.contains("world       babelrl:plugin@0.1.0 router"), "{text}");
    assert!(text.contains(r#"choose(k = 4) = ["en", "en", "fr", "zh"]"#), "{text}");

    let bad = cache.join("bad.wasm");
    std::fs::write(&bad, b"not wasm").unwrap();
    let out = babelrl(&["plugin", "check", bad.to_str().unwrap()], &cache);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("plugin `bad`: ") && err.contains("not a component"),
        "{err}"
    );
    let out = babelrl(&["plugin", "check", reward, "--limits", r#"{"deadline": 5}"#], &cache);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `deadline`"), "{out:?}");
}

#[test]
fn score_summarises_a_jsonl_file() {
    let Some(g) = guests() else { return };
    let dir = scratch("cli-score");
    let completions = [("p1", "abc"), ("p1", ""), ("p1", "abcdef"), ("p2", "a"), ("p2", "ünï")];
    let rows: Vec<String> = completions
        .iter()
        .map(|(p, c)| {
            serde_json::json!({"prompt": p, "completion": c, "language": "fr", "topic": "t"}).to_string()
        })
        .collect();
    let data = dir.join("data.jsonl");
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let args = ["plugin", "score", "--plugin", g.reward.to_str().unwrap(), "--data", data.to_str().unwrap()];
    let text = stdout(&babelrl(&[&args[..], &["--print-scores"]].concat(), &dir));
    // Scores are character counts (scale 1): 3, none, 6, 1, 3 — grouped by prompt into 2 groups.
    assert!(text.contains("samples   5 in 2 groups"), "{text}");
    assert!(text.contains("scored    4 (none: 1)"), "{text}");
    assert!(text.contains("mean      3.250000"), "{text}");
    assert!(text.contains("min/max   1.000000 / 6.000000"), "{text}");
    assert!(text.contains(r#"{"score":null}"#) && text.contains(r#"{"score":6.0}"#), "{text}");
    let text = stdout(&babelrl(&[&args[..], &["--group-by", "topic"]].concat(), &dir));
    assert!(text.contains("samples   5 in 1 groups"), "{text}");
    std::fs::write(&data, "{\"prompt\": \"p\"}\n").unwrap();
    let out = babelrl(&args, &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data.jsonl:1: missing `completion`"), "{err}");
}
