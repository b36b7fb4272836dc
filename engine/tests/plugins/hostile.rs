//! Hostile-plugin suite: guests that loop, bomb memory, recurse, panic, return garbage, try to escape
//! the sandbox or flood the host. Each must fail with an error naming the plugin and what it did, and
//! the same plugin must serve the next (well-behaved) call correctly. Guests: tests/hostile-plugins.

use crate::common::scratch;
use crate::guest_builds;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use babelrl::plugin::{
    Capabilities, ChooseRequest, Feedback, HostServices, NoServices, PluginLimits, RewardPlugin, RouterPlugin,
};
use guest_builds::{command, expected, guests, ordinary};

const CONFIG: &str = r#"{"scale": 2}"#;

fn load_with(
    name: &str,
    limits: PluginLimits,
    caps: Capabilities,
    services: Arc<dyn HostServices>,
) -> Option<RewardPlugin> {
    let g = guests()?;
    Some(
        RewardPlugin::load(&g.reward, name, CONFIG, &limits, &caps, services)
            .expect("load the hostile reward"),
    )
}

fn load(name: &str, limits: PluginLimits) -> Option<RewardPlugin> {
    load_with(name, limits, Capabilities::default(), Arc::new(NoServices))
}

/// Runs `cmd`, expects an error containing every one of `needles` (and the plugin's name), then checks
/// that a well-behaved call right after is served correctly (with the configured scale, so `configure`
/// ran again if the instance was replaced). Returns the error text.
fn bad_then_good(p: &mut RewardPlugin, cmd: &str, arg: &str, needles: &[&str]) -> String {
    let err = p.score(&command(cmd, arg)).expect_err(cmd).to_string();
    eprintln!("{cmd}: {err}");
    assert!(
        err.starts_with(&format!("plugin `{}`: ", p.name())),
        "{cmd}: error does not name the plugin: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{cmd}: expected {n:?} in: {err}");
    }
    let group = ordinary();
    assert_eq!(p.score(&group).expect("a good call after a bad one"), expected(&group, 2.0), "after {cmd}");
    err
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let limits = PluginLimits { deadline_ms: 100, ..Default::default() };
    let Some(mut p) = load("looper", limits) else { return };
    let t0 = Instant::now();
    bad_then_good(&mut p, "!loop", "", &["score: timed out after", "deadline_ms = 100"]);
    assert!(t0.elapsed() < Duration::from_secs(3), "the deadline took {:?}", t0.elapsed());
    assert_eq!(p.restarts(), 1);
}

#[test]
fn fuel_stops_a_loop_deterministically() {
    let limits = PluginLimits { fuel: Some(5_000_000), deadline_ms: 60_000, ..Default::default() };
    let Some(mut p) = load("fueled", limits) else { return };
    bad_then_good(&mut p, "!loop", "", &["ran out of fuel (5000000 units per call)"]);
}

#[test]
fn memory_bombs_hit_the_cap() {
    let limits = PluginLimits { memory_mib: 32, ..Default::default() };
    let Some(mut p) = load("bomber", limits) else { return };
    bad_then_good(&mut p, "!membomb", "", &["exceeded the memory cap of 32 MiB", "trapped"]);
    bad_then_good(&mut p, "!memgrow", "", &["exceeded the memory cap of 32 MiB"]);
}

#[test]
fn deep_recursion_traps() {
    let Some(mut p) = load("recursive", PluginLimits::default()) else { return };
    bad_then_good(&mut p, "!recurse", "", &["score: ", "trapped"]);
}

#[test]
fn panics_and_traps_are_reported_with_stderr() {
    let Some(mut p) = load("panicky", PluginLimits::default()) else { return };
    bad_then_good(&mut p, "!panic", "", &["trapped: ", "hostile panic in score"]);
    bad_then_good(&mut p, "!unreachable", "", &["trapped: ", "unreachable"]);
    assert_eq!(p.restarts(), 2);
}

#[test]
fn bad_outputs_are_refused() {
    let Some(mut p) = load("garbage", PluginLimits::default()) else { return };
    bad_then_good(&mut p, "!count", "", &["score returned 7 scores for 8 samples"]);
    bad_then_good(&mut p, "!nan", "", &["score returned NaN for sample 3"]);
    bad_then_good(&mut p, "!inf", "", &["score returned +inf for sample 2"]);
    bad_then_good(&mut p, "!neginf", "", &["score returned -inf for sample 1"]);
    bad_then_good(&mut p, "!err", "", &["score returned an error: guest says no"]);
    bad_then_good(&mut p, "!biglist", "", &["output of 1600000 bytes exceeds the cap of 1048576 bytes"]);
    bad_then_good(&mut p, "!bigerr", "", &["output of 2097152 bytes exceeds the cap of 1048576 bytes"]);
    // None of these trapped: the same instance served every call.
    assert_eq!(p.restarts(), 0);
}

#[test]
fn files_stay_out_of_reach() {
    let Some(mut p) = load("burglar", PluginLimits::default()) else { return };
    let dir = scratch("hostile");
    std::fs::write(dir.join("keep.txt"), b"secret").unwrap();
    let before = listing(&dir);
    let secret = dir.join("keep.txt");
    bad_then_good(
        &mut p,
        "!readfile",
        secret.to_str().unwrap(),
        &["score returned an error: could not read"],
    );
    bad_then_good(&mut p, "!readfile", "/etc/passwd", &["could not read /etc/passwd"]);
    bad_then_good(&mut p, "!writefile", dir.to_str().unwrap(), &["write: ", "remove: ", "mkdir: "]);
    assert_eq!(listing(&dir), before, "the plugin changed {}", dir.display());
}

/// Names and contents of the files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn environment_is_empty_unless_granted() {
    let path = std::env::var("PATH").expect("PATH is set for tests");
    let Some(mut p) = load("snoop", PluginLimits::default()) else { return };
    bad_then_good(&mut p, "!env", "PATH", &["score returned an error: env PATH: "]);
    assert_eq!(p.score(&command("!envcount", "")).unwrap()[0], Some(0.0));
    let caps = Capabilities { env: vec!["PATH".into()], ..Default::default() };
    let Some(mut granted) = load_with("granted", PluginLimits::default(), caps, Arc::new(NoServices)) else {
        return;
    };
    assert_eq!(granted.score(&command("!env", "PATH")).unwrap()[0], Some(path.len() as f32));
    assert_eq!(granted.score(&command("!envcount", "")).unwrap()[0], Some(1.0));
}

#[test]
fn network_is_denied() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let Some(mut p) = load("caller", PluginLimits::default()) else { return };
    bad_then_good(&mut p, "!net", &addr, &[&format!("score returned an error: connect {addr}: ")]);
    assert!(listener.accept().is_err(), "the plugin reached the listener");
}

#[test]
fn clocks_are_frozen_unless_granted() {
    let Some(mut p) = load("timer", PluginLimits::default()) else { return };
    let v = p.score(&command("!clock", "")).unwrap();
    assert_eq!((v[0], v[1]), (Some(0.0), Some(0.0)), "wall and monotonic clocks must read 0");
    let caps = Capabilities { clock: true, ..Default::default() };
    let Some(mut granted) = load_with("clocked", PluginLimits::default(), caps, Arc::new(NoServices)) else {
        return;
    };
    let v = granted.score(&command("!clock", "")).unwrap();
    assert!(v[0].unwrap() > 1.6e9, "granted wall clock reads {:?}", v[0]);
    // Sleeping would block the host thread out of the epoch's reach: refused, clock or not.
    bad_then_good(&mut granted, "!sleep", "", &["tried to sleep"]);
}

#[test]
fn randomness_is_deterministic_unless_granted() {
    let Some(mut a) = load("dice-a", PluginLimits::default()) else { return };
    let Some(mut b) = load("dice-b", PluginLimits::default()) else { return };
    let (ra, rb) =
        (a.score(&command("!random", "")).unwrap()[0], b.score(&command("!random", "")).unwrap()[0]);
    assert_eq!(ra, rb, "denied randomness must be the same in every instance");
    let caps = Capabilities { random: true, ..Default::default() };
    let mut seen = Vec::new();
    for i in 0..3 {
        let Some(mut g) =
            load_with(&format!("dice-{i}"), PluginLimits::default(), caps.clone(), Arc::new(NoServices))
        else {
            return;
        };
        seen.push(g.score(&command("!random", "")).unwrap()[0]);
    }
    seen.dedup();
    assert!(seen.len() > 1, "granted randomness gave the same hash keys three times: {seen:?}");
}

#[test]
fn host_call_floods_are_capped() {
    let limits = PluginLimits { max_host_calls: 50, max_embed_texts: 100, ..Default::default() };
    let Some(mut p) = load("flooder", limits) else { return };
    bad_then_good(&mut p, "!flood", "", &["called `log` (and other host functions) more than 50 times"]);
    bad_then_good(
        &mut p,
        "!embedflood",
        "",
        &["called `embed` (and other host functions) more than 50 times"],
    );
    bad_then_good(&mut p, "!embedbig", "", &["sent more than 100 texts to `embed`", "asked for 100000"]);
}

#[test]
fn printing_is_captured_and_capped() {
    let limits = PluginLimits { max_log_bytes: 1000, ..Default::default() };
    let caps = Capabilities { stdout_log: true, ..Default::default() };
    let Some(mut p) = load_with("chatty", limits, caps, Arc::new(NoServices)) else { return };
    // 3 MB of stdout is kept to 1000 bytes and never fails inside the guest.
    assert_eq!(p.score(&command("!print", "3000000")).unwrap()[0], Some(3_000_000.0));
    assert_eq!(p.restarts(), 0);
}

/// Embeds text `t` as `[len(t), 1]` after sleeping `delay`; scores pairs as the prompt length.
struct FakeServices {
    delay: Duration,
}

impl HostServices for FakeServices {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        std::thread::sleep(self.delay);
        Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
    }
    fn reward_model_score(&self, prompts: &[String], _: &[String]) -> Result<Vec<f32>, String> {
        Ok(prompts.iter().map(|p| p.len() as f32).collect())
    }
}

#[test]
fn host_services_are_served_and_their_time_is_not_the_plugins() {
    let Some(mut none) = load("no-encoder", PluginLimits::default()) else { return };
    bad_then_good(&mut none, "!embed", "x", &["score returned an error: no encoder configured"]);
    bad_then_good(&mut none, "!rm", "x", &["no reward model configured"]);
    // The encoder takes 300 ms, the plugin's deadline is 100 ms: host time does not count against it.
    let services = Arc::new(FakeServices { delay: Duration::from_millis(300) });
    let limits = PluginLimits { deadline_ms: 100, ..Default::default() };
    let Some(mut p) = load_with("embedder", limits, Capabilities::default(), services) else { return };
    assert_eq!(p.score(&command("!embed", "four")).unwrap(), vec![Some(4.0); 8]);
    assert_eq!(p.score(&command("!rm", "seven77")).unwrap(), vec![Some(7.0); 8]);
}

#[test]
fn malformed_files_are_refused() {
    let Some(g) = guests() else { return };
    let dir = scratch("malformed");
    let mut noise = Vec::new();
    let mut x: u32 = 12345;
    for _ in 0..4096 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        noise.push((x >> 16) as u8);
    }
    let mut truncated = std::fs::read(&g.reward).unwrap();
    truncated.truncate(truncated.len() / 2);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("noise.wasm", noise, "not a component: not WebAssembly at all"),
        ("core.wasm", b"\0asm\x01\0\0\0".to_vec(), "is a core WebAssembly module"),
        ("truncated.wasm", truncated, "is not a valid component"),
        ("empty.wasm", Vec::new(), "not WebAssembly at all"),
    ];
    for (file, bytes, needle) in cases {
        let path = dir.join(file);
        std::fs::write(&path, bytes).unwrap();
        let caps = Capabilities::default();
        let err =
            RewardPlugin::load(&path, "bad", "{}", &PluginLimits::default(), &caps, Arc::new(NoServices))
                .expect_err(file)
                .to_string();
        assert!(err.starts_with("plugin `bad`: ") && err.contains(needle), "{file}: {err}");
    }
    let missing = dir.join("missing.wasm");
    let err = RewardPlugin::load(
        &missing,
        "gone",
        "{}",
        &Default::default(),
        &Default::default(),
        Arc::new(NoServices),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing.wasm"), "{err}");
}

#[test]
fn wrong_worlds_are_refused() {
    let Some(g) = guests() else { return };
    let (limits, caps) = (PluginLimits::default(), Capabilities::default());
    let err = RewardPlugin::load(&g.router, "r", "{}", &limits, &caps, Arc::new(NoServices))
        .unwrap_err()
        .to_string();
    assert!(err.contains("plugin `r`: wrong world: exports choose, configure, load-state, save-state, update (the `router` world), not the `reward` world"), "{err}");
    let langs = vec!["en".to_string()];
    let err = RouterPlugin::load(&g.reward, "w", "{}", &langs, &limits, &caps, Arc::new(NoServices))
        .unwrap_err()
        .to_string();
    assert!(err.contains("plugin `w`: wrong world: exports configure, score (the `reward` world)"), "{err}");
}

#[test]
fn configure_failures_fail_the_load() {
    let Some(g) = guests() else { return };
    let (limits, caps) = (PluginLimits::default(), Capabilities::default());
    let load = |config: &str| {
        RewardPlugin::load(&g.reward, "conf", config, &limits, &caps, Arc::new(NoServices))
            .unwrap_err()
            .to_string()
    };
    let err = load(r#"{"configure":"trap"}"#);
    assert!(
        err.contains("plugin `conf`: configure: trapped") && err.contains("configure was told to trap"),
        "{err}"
    );
    let err = load(r#"{"configure":"error"}"#);
    assert!(err.contains("configure returned an error: configure was told to fail"), "{err}");
    let bad = PluginLimits { deadline_ms: 0, ..Default::default() };
    let err = RewardPlugin::load(&g.reward, "conf", "{}", &bad, &caps, Arc::new(NoServices)).unwrap_err();
    assert!(err.to_string().contains("bad limits: limits.deadline_ms must be at least 1"), "{err}");
}

fn request(id: &str, k: u32) -> ChooseRequest {
    ChooseRequest { question_id: id.into(), topic: None, question_language: "en".into(), k, step: 0 }
}

#[test]
fn routers_survive_garbage_state_and_bad_answers() {
    let Some(g) = guests() else { return };
    let langs: Vec<String> = ["en", "fr", "zh"].iter().map(|s| s.to_string()).collect();
    let limits = PluginLimits { deadline_ms: 100, ..Default::default() };
    let mut r = RouterPlugin::load(
        &g.router,
        "lrpo",
        "{}",
        &langs,
        &limits,
        &Default::default(),
        Arc::new(NoServices),
    )
    .expect("load the router");
    assert_eq!(r.choose(&request("q1", 3)).unwrap(), ["en", "en", "fr"]);
    let fb = |l: &str, reward| Feedback { topic: "t".into(), language: l.into(), reward };
    r.update(1, &[fb("zh", 2.0), fb("fr", 1.0)]).unwrap();
    assert_eq!(r.choose(&request("q1", 3)).unwrap(), ["en", "zh", "fr"]);
    let saved = r.save_state().unwrap();

    let err = r.load_state(b"garbage").unwrap_err().to_string();
    assert!(
        err.contains("plugin `lrpo`: load-state refused a state of 7 bytes: state does not start with HRS1"),
        "{err}"
    );
    assert_eq!(r.choose(&request("q1", 3)).unwrap(), ["en", "zh", "fr"], "state lost after a refused load");
    let err = r.load_state(&[0xFF, 1, 2, 3]).unwrap_err().to_string();
    assert!(err.contains("load-state: trapped") && err.contains("router state starts with 0xFF"), "{err}");
    assert_eq!(r.choose(&request("q1", 3)).unwrap(), ["en", "zh", "fr"], "state lost after a trap");

    for (id, needle) in [
        (
            "!stranger",
            "choose returned language \"xx_Nope\" at position 0, which is not one of this run's languages",
        ),
        ("!count", "choose returned 4 languages for k = 3"),
        ("!loop", "choose: timed out after"),
        ("!panic", "router panic in choose"),
    ] {
        let err = r.choose(&request(id, 3)).unwrap_err().to_string();
        assert!(err.starts_with("plugin `lrpo`: ") && err.contains(needle), "{id}: {err}");
        assert_eq!(r.choose(&request("q2", 3)).unwrap(), ["en", "zh", "fr"], "after {id}");
    }
    let err = r.update(2, &[fb("xx", 1.0)]).unwrap_err().to_string();
    assert!(err.contains("update returned an error: unknown language xx"), "{err}");
    r.load_state(&saved).unwrap();
    assert_eq!(r.save_state().unwrap(), saved);
    // Re-instantiated after: the trapping load, the refused load, the loop and the panic.
    assert_eq!(r.restarts(), 4);
}

#[test]
fn reward_sets_weigh_skip_and_fail() {
    use babelrl::plugin::{OnError, RewardSet};
    let Some(g) = guests() else { return };
    let load = |name: &str, config: &str| {
        RewardPlugin::load(
            &g.reward,
            name,
            config,
            &Default::default(),
            &Default::default(),
            Arc::new(NoServices),
        )
        .unwrap()
    };
    let members = |on_error| {
        RewardSet::new(
            vec![(load("one", r#"{"scale": 1}"#), 0.5), (load("three", r#"{"scale": 3}"#), 1.0)],
            on_error,
        )
        .unwrap()
    };
    let group = ordinary();
    let chars: Vec<f32> = group.iter().map(|s| s.completion.chars().count() as f32).collect();
    let mut skip = members(OnError::Skip);
    let out = skip.score(&group).unwrap();
    // 0.5·c + 1·3c per sample; the empty completion has no score from either plugin, so 0.
    assert_eq!(out.total, chars.iter().map(|c| 3.5 * c).collect::<Vec<_>>());
    assert_eq!(out.per_plugin[1], expected(&group, 3.0));
    let out = skip.score(&command("!panic", "")).unwrap();
    assert_eq!((out.total, out.skipped.len()), (vec![0.0; 8], 2));
    assert!(out.skipped[0].to_string().starts_with("plugin `one`: score: trapped"), "{}", out.skipped[0]);
    assert_eq!(skip.score(&group).unwrap().total[7], 3.5 * chars[7]);
    let mut fail = members(OnError::Fail);
    let err = fail.score(&command("!nan", "")).unwrap_err().to_string();
    assert!(err.starts_with("plugin `one`: score returned NaN for sample 3"), "{err}");
    let dup = RewardSet::new(vec![(load("same", "{}"), 1.0), (load("same", "{}"), 1.0)], OnError::Fail);
    assert!(dup.unwrap_err().to_string().contains("two reward plugins share this name"));
}
