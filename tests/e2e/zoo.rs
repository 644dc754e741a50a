//! Zoo plugins under `plugboard headless --emit`: the binary emits `chaos` on schedule and
//! the violations the engine caught are in the snapshots it prints.

use std::path::Path;

use serde_json::Value;

use crate::support::{keys, ok, plugboard, signed_example, stderr};

fn plugin<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["plugins"]
        .as_array()
        .and_then(|plugins| plugins.iter().find(|plugin| plugin["name"] == name))
        .unwrap_or_else(|| panic!("no plugin {name} in {snapshot}"))
}

/// The `violation` events of `plugin` in a snapshot's `recent_events`.
fn violations<'a>(snapshot: &'a Value, plugin: &str) -> Vec<&'a Value> {
    snapshot["recent_events"]
        .as_array()
        .expect("a snapshot has recent_events")
        .iter()
        .filter(|event| event["kind"] == "violation" && event["plugin"] == plugin)
        .collect()
}

fn headless(dir: &Path, store: &Path, args: &[&str]) -> std::process::Output {
    crate::support::plugboard_bin()
        .arg("headless")
        .arg("--plugins")
        .arg(dir)
        .arg("--trust-store")
        .arg(store)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("plugboard runs")
}

#[test]
fn headless_emits_chaos_on_schedule_and_the_snapshots_carry_the_violations() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "zoo");
    let dir = temp.path().join("plugins");
    for name in ["hello", "netprobe", "crasher"] {
        signed_example(&dir, name, &keys);
    }
    let output = headless(
        &dir,
        &keys.store,
        &[
            "--emit",
            "chaos@1s",
            "--json",
            "--interval",
            "250ms",
            "--duration",
            "3s",
        ],
    );
    let stdout = ok(&output);
    let snapshots: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("every stdout line is a JSON snapshot"))
        .collect();
    let last = snapshots.last().expect("at least the final snapshot");

    // Not before its delay: the first snapshot, printed once the plugins were started,
    // has none.
    assert!(snapshots.len() >= 4, "{} snapshots", snapshots.len());
    assert!(violations(&snapshots[0], "netprobe").is_empty());
    assert!(violations(&snapshots[0], "crasher").is_empty());
    assert_eq!(plugin(&snapshots[0], "crasher")["state"], "running");

    let netprobe = violations(last, "netprobe");
    let socket = netprobe
        .iter()
        .find(|event| event["violation"] == "forbidden_syscall")
        .unwrap_or_else(|| panic!("no forbidden_syscall of netprobe: {netprobe:#?}"));
    assert_eq!(socket["facts"]["syscall"], "socket", "{socket}");
    assert_eq!(socket["facts"]["family"], "AF_INET", "{socket}");
    assert_eq!(socket["mechanism"], "seccomp");
    assert_eq!(socket["hook"], "chaos");
    assert_eq!(socket["action"], "log");

    let crasher = violations(last, "crasher");
    let crash = crasher
        .iter()
        .find(|event| event["violation"] == "crash")
        .unwrap_or_else(|| panic!("no crash of crasher: {crasher:#?}"));
    assert_eq!(crash["facts"]["signal_name"], "SIGSEGV", "{crash}");
    assert_eq!(crash["hook"], "chaos");
    assert_eq!(crash["action"], "restart");

    // hello does not subscribe to `chaos`: untouched.
    assert!(violations(last, "hello").is_empty());
    // What each subscriber answered is on stderr.
    let err = stderr(&output);
    assert!(
        err.contains("emitted `chaos` to netprobe: ok") && err.contains("denied"),
        "{err}"
    );
    assert!(err.contains("emitted `chaos` to crasher: gone"), "{err}");
}

#[test]
fn an_emit_scheduled_past_the_end_of_the_run_is_reported_not_emitted() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "zoo");
    let dir = temp.path().join("plugins");
    signed_example(&dir, "netprobe", &keys);
    let output = headless(
        &dir,
        &keys.store,
        &[
            "--emit",
            "chaos@1h",
            "--emit",
            "nobody.listens",
            "--duration",
            "1s",
        ],
    );
    ok(&output);
    let err = stderr(&output);
    assert!(
        err.contains("`chaos` was not emitted: the run ended before its delay"),
        "{err}"
    );
    assert!(
        err.contains("emitted `nobody.listens`: no running plugin subscribes to it"),
        "{err}"
    );
    assert!(!err.contains("emitted `chaos`"), "{err}");
}

#[test]
fn a_malformed_emit_is_refused_naming_it() {
    let output = plugboard(&[&"headless", &"--plugins", &"/tmp", &"--emit", &"Chaos@soon"]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let err = stderr(&output);
    assert!(
        err.contains("--emit") && err.contains("\"Chaos\" is not a hook name"),
        "{err}"
    );
    let output = plugboard(&[&"headless", &"--plugins", &"/tmp", &"--emit", &"chaos@soon"]);
    let err = stderr(&output);
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
}
