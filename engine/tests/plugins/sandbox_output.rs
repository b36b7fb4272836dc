//! What reaches the user from a hostile plugin: text it chose (errors, logs, printed output, its file
//! name, router languages and state messages) never carries raw terminal controls, a panic message
//! survives a flood of output before it, and a busy loop is stopped within the documented bound of its
//! deadline even when the epoch thread wakes late. Guests: tests/hostile-plugins.

use crate::common::scratch;
use crate::guest_builds;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use babelrl::plugin::{ChooseRequest, NoServices, PluginLimits, RewardPlugin, RouterPlugin};
use guest_builds::{command, guests};

/// Sets the terminal title, returns the cursor to the start of the line and forges an engine line.
const HOSTILE: &str = "\x1b]0;pwned\x07\r[babelrl] fake line";
/// [`HOSTILE`] as it must be shown.
const ESCAPED: &str = r"\x1b]0;pwned\x07\r[babelrl] fake line";

/// Overrun past `deadline_ms` that a busy loop may reach before it is stopped, on a loaded 2-core
/// machine (docs/plugins-host.md, "Deadlines": at a load average of 16 on 2 cores, 2–76 ms were
/// measured). On an idle machine it is about a millisecond.
const OVERRUN_BOUND: Duration = Duration::from_millis(150);

/// Fails when `text` holds a character that acts on a terminal.
fn assert_inert(what: &str, text: &str) {
    let bad = |c: char| c.is_control() && c != '\n' || ('\u{202a}'..='\u{202e}').contains(&c);
    if let Some((i, c)) = text.char_indices().find(|&(_, c)| bad(c)) {
        panic!("{what}: raw {c:?} at byte {i} in:\n{}", text.escape_debug());
    }
}

fn babelrl(args: &[&str], cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_babelrl"));
    cmd.args(args).env("BABELRL_CACHE", cache).env("RUST_LOG", "info");
    cmd
}

/// stdout and stderr of a finished command, each checked to be inert.
fn inert_output(what: &str, out: &Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_inert(&format!("{what} stdout"), &stdout);
    assert_inert(&format!("{what} stderr"), &stderr);
    (stdout, stderr)
}

/// One JSONL group whose first row tells the hostile guest what to do with `arg`.
fn data_file(dir: &Path, name: &str, cmd: &str, arg: &str) -> PathBuf {
    let rows = [
        serde_json::json!({"prompt": arg, "completion": cmd}),
        serde_json::json!({"prompt": arg, "completion": "fine"}),
    ];
    let path = dir.join(name);
    std::fs::write(&path, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
    path
}

#[test]
fn the_cli_escapes_a_hostile_plugins_errors_logs_output_and_file_name() {
    let Some(g) = guests() else { return };
    let dir = scratch("hostile-text");
    // The plugin's file name is an attack too: it becomes the plugin's name in every message.
    let evil = dir.join("evil\x1b[2J\rname.wasm");
    std::fs::copy(&g.reward, &evil).unwrap();
    let plugin = evil.to_str().unwrap();
    let logged = r#"{"stdout_log": true}"#;

    // An error string, a `log` call, and stdout/stderr lines forwarded to the log, all with the attack.
    let data = data_file(&dir, "noise.jsonl", "!noise", HOSTILE);
    let args =
        ["plugin", "score", "--plugin", plugin, "--data", data.to_str().unwrap(), "--capabilities", logged];
    let out = babelrl(&args, &dir).output().unwrap();
    assert!(!out.status.success(), "the plugin returned an error: {out:?}");
    let (_, stderr) = inert_output("score !noise", &out);
    assert!(
        stderr.contains(&format!(r"plugin `evil\x1b[2J\rname`: score returned an error: {ESCAPED}")),
        "{stderr}"
    );
    for needle in ["stdout: ", "stderr: ", "`: "] {
        assert!(stderr.contains(&format!("{needle}{ESCAPED}")), "no {needle:?} line in:\n{stderr}");
    }

    // A trap: the panic message is quoted from the captured stderr.
    let data = data_file(&dir, "panic.jsonl", "!panicarg", HOSTILE);
    let args = ["plugin", "score", "--plugin", plugin, "--data", data.to_str().unwrap()];
    let out = babelrl(&args, &dir).output().unwrap();
    let (_, stderr) = inert_output("score !panicarg", &out);
    assert!(stderr.contains("score: trapped: ") && stderr.contains(ESCAPED), "{stderr}");

    // `plugin check` prints the file and the plugin's name.
    let out = babelrl(&["plugin", "check", plugin], &dir).output().unwrap();
    let (stdout, _) = inert_output("check", &out);
    assert!(out.status.success() && stdout.contains(r"evil\x1b[2J\rname.wasm ("), "{stdout}");
}

#[test]
fn router_languages_and_state_messages_are_escaped() {
    let Some(g) = guests() else { return };
    let langs = vec!["en".to_string(), "fr".to_string()];
    let (limits, caps) = (PluginLimits::default(), Default::default());
    let mut r = RouterPlugin::load(&g.router, "router", "{}", &langs, &limits, &caps, Arc::new(NoServices))
        .expect("load the router");
    let request = ChooseRequest {
        question_id: format!("!say:{HOSTILE}"),
        topic: None,
        question_language: "en".into(),
        k: 2,
        step: 0,
    };
    let err = r.choose(&request).unwrap_err().to_string();
    assert_inert("choose", &err);
    assert!(err.contains(&format!("choose returned language \"{ESCAPED}\" at position 0")), "{err}");
    let err = r.load_state(format!("SAY:{HOSTILE}\u{202e}").as_bytes()).unwrap_err().to_string();
    assert_inert("load-state", &err);
    assert!(err.ends_with(&format!(": {ESCAPED}\\u{{202e}}")), "{err}");
    // The error type itself escapes, whoever builds it.
    let e = babelrl::Error::Plugin { plugin: "a\rb".into(), message: HOSTILE.into() };
    assert_eq!(e.to_string(), format!(r"plugin `a\rb`: {ESCAPED}"));
}

#[test]
fn a_panic_after_a_flood_of_output_still_reaches_the_error() {
    // 100 000 bytes on stdout and then on stderr, far past max_log_bytes and the kept tail, then a panic.
    let limits = PluginLimits { max_log_bytes: 1000, ..Default::default() };
    let Some(g) = guests() else { return };
    let caps = Default::default();
    let mut p = RewardPlugin::load(&g.reward, "flood", "{}", &limits, &caps, Arc::new(NoServices)).unwrap();
    let err = p.score(&command("!floodpanic", "100000")).unwrap_err().to_string();
    assert!(err.starts_with("plugin `flood`: score: trapped: "), "{err}");
    assert!(err.contains("the cause after 100000 bytes of output: 7f3a9c"), "panic message lost: {err}");
}

/// The time `score` took on a busy-looping guest, and the time the error reports.
fn stop_busy_loop(p: &mut RewardPlugin) -> (Duration, Duration) {
    let t0 = Instant::now();
    let err = p.score(&command("!loop", "")).unwrap_err().to_string();
    let took = t0.elapsed();
    (took, reported_timeout(&err))
}

/// `N` of "timed out after N ms" in an error.
fn reported_timeout(err: &str) -> Duration {
    let n = err
        .split("timed out after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a timeout: {err}"));
    Duration::from_millis(n)
}

#[test]
fn a_busy_loop_stops_within_the_documented_bound_of_its_deadline() {
    let deadline = Duration::from_millis(200);
    let limits = PluginLimits { deadline_ms: 200, ..Default::default() };
    let Some(g) = guests() else { return };
    let caps = Default::default();
    let mut p = RewardPlugin::load(&g.reward, "spinner", "{}", &limits, &caps, Arc::new(NoServices)).unwrap();
    for _ in 0..2 {
        let (took, reported) = stop_busy_loop(&mut p);
        eprintln!("deadline 200 ms: stopped after {took:?} (reported {reported:?})");
        assert!(reported >= deadline && took >= deadline, "stopped early: {took:?}, reported {reported:?}");
        assert!(took < deadline + OVERRUN_BOUND, "overran the deadline by {:?}", took - deadline);
    }
}

/// A late epoch thread, as on a loaded machine: every sleep of the process oversleeps by up to 20 ms
/// (Linux timer slack, inherited by every thread of the `babelrl` child). The deadline must still hold:
/// counting the thread's wake-ups instead of the time elapsed would stop a 200 ms deadline after ~4 s.
#[cfg(target_os = "linux")]
#[test]
fn a_late_epoch_thread_does_not_stretch_the_deadline() {
    use std::os::unix::process::CommandExt;
    const SLACK_NS: libc::c_ulong = 20_000_000;
    let Some(g) = guests() else { return };
    let dir = scratch("late-epoch");
    let data = data_file(&dir, "loop.jsonl", "!loop", "");
    let reward = g.reward.to_str().unwrap();
    let limits = r#"{"deadline_ms": 200}"#;
    let args = ["plugin", "score", "--plugin", reward, "--data", data.to_str().unwrap(), "--limits", limits];
    let mut cmd = babelrl(&args, &dir);
    // SAFETY: prctl is async-signal-safe and touches only the forked child's own timer slack.
    unsafe {
        cmd.pre_exec(|| match libc::prctl(libc::PR_SET_TIMERSLACK, SLACK_NS, 0, 0, 0) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("(deadline_ms = 200)"), "{stderr}");
    let reported = reported_timeout(&stderr);
    eprintln!("deadline 200 ms with 20 ms timer slack: reported {reported:?}");
    let bound = Duration::from_millis(200) + Duration::from_nanos(SLACK_NS) + OVERRUN_BOUND;
    assert!(reported < bound, "a 200 ms deadline stopped after {reported:?} with a late epoch thread");
}
