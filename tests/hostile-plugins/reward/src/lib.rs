//! A reward plugin that misbehaves on request, for the engine's hostile-plugin suite.
//!
//! The first sample's completion picks the behaviour (`!loop`, `!membomb`, `!panic`, ...) and its prompt
//! is the behaviour's argument; any other
//! group is scored well: the number of characters of each completion times the configured `scale`
//! (`None` for an empty completion). The config JSON `{"configure": "trap"}` / `{"configure": "error"}`
//! makes `configure` itself fail.

use std::cell::Cell;
use std::hint::black_box;

wit_bindgen::generate!({ path: "../../../sdk/wit", world: "reward" });

use babelrl::plugin::host;
use babelrl::plugin::types::LogLevel;

struct Hostile;

thread_local! {
    static SCALE: Cell<f32> = const { Cell::new(1.0) };
}

/// The number after `"key":` in a flat JSON object, without a JSON parser (keeps the guest small).
fn json_number(json: &str, key: &str) -> Option<f32> {
    let at = json.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn recurse(n: u64) -> u64 {
    if n == 0 { 0 } else { black_box(recurse(black_box(n - 1))) + 1 }
}

fn good(group: &[Sample]) -> Vec<Option<f32>> {
    let scale = SCALE.with(|s| s.get());
    group
        .iter()
        .map(|s| (!s.completion.is_empty()).then(|| s.completion.chars().count() as f32 * scale))
        .collect()
}

fn all(group: &[Sample], v: f32) -> Vec<Option<f32>> {
    vec![Some(v); group.len()]
}

impl Guest for Hostile {
    fn configure(config_json: String) -> Result<(), String> {
        if config_json.contains("\"configure\":\"trap\"") {
            panic!("configure was told to trap");
        }
        if config_json.contains("\"configure\":\"error\"") {
            return Err("configure was told to fail".into());
        }
        SCALE.with(|s| s.set(json_number(&config_json, "scale").unwrap_or(1.0)));
        Ok(())
    }

    fn score(group: Vec<Sample>) -> Result<Vec<Option<f32>>, String> {
        let Some(first) = group.first() else { return Ok(Vec::new()) };
        let arg = first.prompt.clone();
        match first.completion.as_str() {
            "!loop" => {
                let mut i = 0u64;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "!membomb" => {
                let v = vec![1u8; 1 << 30];
                Ok(all(&group, v[black_box(12345)] as f32))
            }
            "!memgrow" => {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                loop {
                    keep.push(vec![7u8; 1 << 20]);
                    black_box(&keep);
                }
            }
            "!recurse" => Ok(all(&group, recurse(black_box(u64::MAX)) as f32)),
            "!panic" => panic!("hostile panic in score"),
            "!unreachable" => core::arch::wasm32::unreachable(),
            "!err" => Err("guest says no".into()),
            "!sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(good(&group))
            }
            "!count" => Ok(vec![Some(1.0); group.len() - 1]),
            "!nan" => {
                let mut v = all(&group, 1.0);
                v[3] = Some(f32::NAN);
                Ok(v)
            }
            "!inf" => {
                let mut v = all(&group, 1.0);
                v[2] = Some(f32::INFINITY);
                Ok(v)
            }
            "!neginf" => {
                let mut v = all(&group, 1.0);
                v[1] = Some(f32::NEG_INFINITY);
                Ok(v)
            }
            "!biglist" => Ok(vec![Some(0.5); 200_000]),
            "!bigerr" => Err("x".repeat(2 << 20)),
            "!readfile" => match std::fs::read(&arg) {
                Ok(bytes) => Ok(all(&group, bytes.len() as f32)),
                Err(e) => Err(format!("could not read {arg}: {e}")),
            },
            "!writefile" => {
                let created = std::fs::write(format!("{arg}/created-by-plugin"), b"escaped");
                let removed = std::fs::remove_file(format!("{arg}/keep.txt"));
                let made_dir = std::fs::create_dir(format!("{arg}/dir-by-plugin"));
                match (created, removed, made_dir) {
                    (Err(a), Err(b), Err(c)) => Err(format!("write: {a}; remove: {b}; mkdir: {c}")),
                    _ => Ok(all(&group, 1.0)),
                }
            }
            "!env" => match std::env::var(&arg) {
                Ok(v) => Ok(all(&group, v.len() as f32)),
                Err(e) => Err(format!("env {arg}: {e}")),
            },
            "!envcount" => Ok(all(&group, std::env::vars().count() as f32)),
            "!net" => match std::net::TcpStream::connect(arg.as_str()) {
                Ok(_) => Ok(all(&group, 1.0)),
                Err(e) => Err(format!("connect {arg}: {e}")),
            },
            "!clock" => {
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as f32)
                    .unwrap_or(-1.0);
                let t0 = std::time::Instant::now();
                black_box(recurse(black_box(10_000)));
                let mono = t0.elapsed().as_nanos() as f32;
                let mut v = all(&group, wall);
                v[1] = Some(mono);
                Ok(v)
            }
            "!random" => {
                use std::hash::{BuildHasher, Hash, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                42u32.hash(&mut h);
                Ok(all(&group, (h.finish() >> 40) as f32))
            }
            "!flood" => {
                for i in 0..u64::MAX {
                    host::log(LogLevel::Debug, &format!("flood {i}"));
                }
                Ok(good(&group))
            }
            "!embedflood" => {
                for _ in 0..u64::MAX {
                    let _ = host::embed(&["a".to_string()]);
                }
                Ok(good(&group))
            }
            "!embedbig" => {
                let texts = vec!["t".to_string(); 100_000];
                let _ = host::embed(&texts);
                Ok(good(&group))
            }
            "!embed" => {
                let texts: Vec<String> = group.iter().map(|s| s.prompt.clone()).collect();
                let vecs = host::embed(&texts)?;
                Ok(vecs.iter().map(|v| v.first().copied()).collect())
            }
            "!rm" => {
                let prompts: Vec<String> = group.iter().map(|s| s.prompt.clone()).collect();
                let completions: Vec<String> =
                    group.iter().map(|s| s.reference.clone().unwrap_or_default()).collect();
                let scores = host::reward_model_score(&prompts, &completions)?;
                Ok(scores.into_iter().map(Some).collect())
            }
            "!print" => {
                let n: usize = arg.parse().unwrap_or(100);
                println!("{}", "p".repeat(n));
                eprintln!("to stderr");
                host::log(LogLevel::Info, "hello from the log import");
                Ok(all(&group, n as f32))
            }
            // Terminal attacks and lost panics (engine/tests/plugins/sandbox_output.rs): the prompt is the
            // hostile text, or how many bytes to print before panicking.
            "!errarg" => Err(arg),
            "!noise" => {
                host::log(LogLevel::Warn, &arg);
                println!("{arg}");
                eprintln!("{arg}");
                Err(arg)
            }
            "!panicarg" => panic!("{arg}"),
            "!floodpanic" => {
                let n: usize = arg.parse().unwrap_or(100_000);
                println!("{}", "o".repeat(n));
                eprintln!("{}", "e".repeat(n));
                panic!("the cause after {n} bytes of output: 7f3a9c")
            }
            _ => Ok(good(&group)),
        }
    }
}

export!(Hostile);
