//! `plugboard headless`: real engine, real workers, real signals.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    engine_scopes_in, fails, is_alive, keys, ok, plugboard, plugin_library, repo_root,
    signed_example_with,
};

/// A plugins directory with signed `hello` and `counter`, an unsigned `panicky` and a
/// tampered copy of `hello` named `hello-tampered`.
fn plugins_dir(root: &Path) -> (PathBuf, PathBuf) {
    let keys = keys(root, "fleet");
    let dir = root.join("plugins");
    for name in ["hello", "counter"] {
        let manifest = repo_root().join(format!("plugins/{name}/plugin.toml"));
        ok(&plugboard(&[
            &"pack",
            &manifest,
            &"--library",
            &plugin_library(name),
            &"--out",
            &dir.join(name),
            &"--key",
            &keys.private,
        ]));
    }
    let manifest = repo_root().join("plugins/panicky/plugin.toml");
    ok(&plugboard(&[
        &"pack",
        &manifest,
        &"--library",
        &plugin_library("panicky"),
        &"--out",
        &dir.join("panicky"),
    ]));
    (dir, keys.store)
}

/// `root/host.toml` listing the plugin directory `dir` and trust store `store`, then
/// `more` (TOML).
fn host_config(root: &Path, dir: &Path, store: &Path, more: &str) -> PathBuf {
    let config = root.join("host.toml");
    std::fs::write(
        &config,
        format!(
            "plugin_dirs = [{:?}]\ntrust_store = {:?}\n{more}",
            dir.display().to_string(),
            store.display().to_string()
        ),
    )
    .unwrap();
    config
}

fn spawn_headless(args: &[&str], dir: &Path, store: &Path) -> Child {
    crate::support::plugboard_bin()
        .arg("headless")
        .arg("--plugins")
        .arg(dir)
        .arg("--trust-store")
        .arg(store)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugboard runs")
}

/// Waits until the engine `pid` has a worker cgroup for `plugin` (its worker is born in it).
fn wait_for_worker_cgroup(pid: u32, plugin: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine_scopes_in("memory", pid).iter().any(|scope| {
        std::fs::read_dir(scope)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().contains(plugin))
    }) {
        assert!(Instant::now() < deadline, "{plugin} never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `SIG<name>` to the process `pid` (one this test started).
fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

fn plugin<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["plugins"]
        .as_array()
        .and_then(|plugins| plugins.iter().find(|plugin| plugin["name"] == name))
        .unwrap_or_else(|| panic!("no plugin {name} in {snapshot}"))
}

/// The engine's log has the plugin's own log line; the audit trail every event in order.
fn assert_log_and_audit(log: &Path, audit: &Path) {
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains(" hello log:info hello ready")),
        "{log}"
    );
    let events: Vec<Value> = std::fs::read_to_string(audit)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each audit line is JSON"))
        .collect();
    assert!(
        events
            .windows(2)
            .all(|pair| pair[1]["seq"].as_u64() > pair[0]["seq"].as_u64())
    );
    assert!(
        events
            .iter()
            .any(|event| event["kind"] == "rejected" && event["plugin"] == "panicky")
    );
    assert!(events.iter().any(|event| event["kind"] == "state_changed"
        && event["plugin"] == "hello"
        && event["to"] == "stopped"));
}

/// A running hello as a snapshot shows it: its worker, cgroup, mechanisms and traffic.
fn assert_hello_runs_confined_under_traffic(hello: &Value) {
    assert_eq!(hello["state"], "running", "{hello}");
    assert_eq!(hello["version"], "0.1.0");
    assert_eq!(hello["isolation"], "process");
    assert!(hello["sandbox_pid"].as_u64().unwrap() > 0);
    assert!(hello["worker_pid"].as_u64().unwrap() > 0);
    assert!(
        hello["cgroup"]
            .as_str()
            .unwrap()
            .contains("plugboard-hello-")
    );
    for badge in ["ns", "cg", "sc", "ll"] {
        assert!(
            hello["active_mechanisms"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b == badge),
            "{badge} missing: {hello}"
        );
    }
    assert!(
        hello["hooks"]["greet"]["calls"].as_u64().unwrap() > 0,
        "traffic reached hello: {hello}"
    );
    assert!(
        hello["hooks"]["greet"]["recent"]["p99_us"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn headless_runs_verified_bundles_drives_traffic_and_rejects_the_unsigned() {
    let temp = tempfile::tempdir().unwrap();
    let (dir, store) = plugins_dir(temp.path());
    let log = temp.path().join("engine.log");
    let audit = temp.path().join("audit.jsonl");
    let output = spawn_headless(
        &[
            "--json",
            "--traffic",
            "200",
            "--duration",
            "3s",
            "--interval",
            "500ms",
            "--log-file",
            log.to_str().unwrap(),
            "--audit-file",
            audit.to_str().unwrap(),
        ],
        &dir,
        &store,
    )
    .wait_with_output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "headless failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let snapshots: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    assert!(
        snapshots.len() >= 3,
        "periodic snapshots plus a final one: {}",
        snapshots.len()
    );

    // The newest periodic snapshot with both running (the final one is after the stop).
    let running = snapshots[..snapshots.len() - 1]
        .iter()
        .rev()
        .find(|snapshot| {
            plugin(snapshot, "hello")["state"] == "running"
                && plugin(snapshot, "counter")["state"] == "running"
        })
        .unwrap_or_else(|| {
            let states: Vec<String> = snapshots
                .iter()
                .map(|snapshot| {
                    format!(
                        "hello {} counter {}",
                        plugin(snapshot, "hello")["state"],
                        plugin(snapshot, "counter")
                    )
                })
                .collect();
            panic!("no snapshot with hello and counter running: {states:#?}")
        });
    assert_hello_runs_confined_under_traffic(plugin(running, "hello"));
    let counter = plugin(running, "counter");
    assert_eq!(counter["state"], "running");

    let panicky = plugin(running, "panicky");
    assert_eq!(panicky["state"], "rejected");
    assert!(
        panicky["reason"].as_str().unwrap().contains("not signed"),
        "{panicky}"
    );

    assert_log_and_audit(&log, &audit);

    let last = snapshots.last().unwrap();
    for name in ["hello", "counter"] {
        assert_eq!(
            plugin(last, name)["state"],
            "stopped",
            "stopped cleanly at the end"
        );
        let pid = plugin(running, name)["sandbox_pid"].as_u64().unwrap();
        assert!(!is_alive(pid), "worker {pid} of {name} left running");
    }
}

#[test]
fn sigkill_of_the_engine_takes_its_workers_along_and_the_next_engine_removes_its_cgroups() {
    let temp = tempfile::tempdir().unwrap();
    let (dir, store) = plugins_dir(temp.path());
    let audit = temp.path().join("audit.jsonl");
    let audit_arg = audit.to_str().unwrap();
    let mut engine = spawn_headless(
        &["--json", "--interval", "200ms", "--audit-file", audit_arg],
        &dir,
        &store,
    );
    let stdout = engine.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (pids, cgroup) = loop {
        let line = lines.next().expect("a snapshot line").unwrap();
        let snapshot: Value = serde_json::from_str(&line).unwrap();
        let hello = plugin(&snapshot, "hello");
        if hello["state"] == "running" && plugin(&snapshot, "counter")["state"] == "running" {
            let pids: Vec<u64> = ["hello", "counter"]
                .iter()
                .flat_map(|name| {
                    let plugin = plugin(&snapshot, name);
                    [
                        plugin["sandbox_pid"].as_u64().unwrap(),
                        plugin["worker_pid"].as_u64().unwrap(),
                    ]
                })
                .collect();
            break (pids, hello["cgroup"].as_str().unwrap().to_owned());
        }
    };
    engine.kill().unwrap(); // SIGKILL
    engine.wait().unwrap();
    // The audit file still reads line by line, even with a line torn by the kill.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&audit)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"schema\":1,\"seq\":99999,\"at_").unwrap();
    let output = plugboard(&[&"audit", &audit, &"--json"]);
    let records = ok(&output);
    assert!(
        records
            .lines()
            .all(|line| serde_json::from_str::<Value>(line)
                .is_ok_and(|record| record["schema"] == 1))
    );
    assert!(records.contains("\"state_changed\""), "{records}");
    assert!(
        crate::support::stderr(&output).contains("torn last line"),
        "{}",
        crate::support::stderr(&output)
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    while pids.iter().any(|pid| is_alive(*pid)) {
        assert!(
            Instant::now() < deadline,
            "workers {pids:?} outlived the engine by more than 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The dead engine's cgroups stay until the next engine starts (here, or any engine
    // another test starts meanwhile: only that a next start leaves none is asserted).
    let memory_dir = PathBuf::from(format!("/sys/fs/cgroup/memory{cgroup}"));
    let scope_dir = memory_dir.parent().unwrap().to_owned();
    let next = plugboard(&[
        &"headless",
        &"--plugins",
        &dir,
        &"--trust-store",
        &store,
        &"--duration",
        &"1ms",
    ]);
    ok(&next);
    assert!(
        !scope_dir.exists(),
        "stale scope {} not removed by the next engine",
        scope_dir.display()
    );
}

#[test]
fn headless_without_plugins_fails_with_the_reason() {
    let err = fails(&plugboard(&[&"headless", &"--duration", &"1s"]));
    assert!(err.contains("--plugins"), "{err}");
    let err = fails(&plugboard(&[
        &"headless",
        &"--plugins",
        &"/nonexistent/plugboard",
        &"--duration",
        &"1s",
    ]));
    assert!(err.contains("/nonexistent/plugboard"), "{err}");
    // A bundle given where a directory of bundles goes: said, not an empty run.
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let bundle = crate::support::signed_example(temp.path(), "hello", &keys);
    let err = fails(&plugboard(&[
        &"headless",
        &"--plugins",
        &bundle,
        &"--trust-store",
        &keys.store,
        &"--duration",
        &"1s",
    ]));
    assert!(
        err.contains("it is a bundle itself") && err.contains("give its parent"),
        "{err}"
    );
}

#[test]
fn headless_reads_a_host_configuration_and_refuses_a_broken_one() {
    let temp = tempfile::tempdir().unwrap();
    let (dir, store) = plugins_dir(temp.path());
    let config = host_config(
        temp.path(),
        &dir,
        &store,
        "[sandbox]\nenv = { LANG = \"C\" }\n",
    );
    let out = ok(&plugboard(&[
        &"headless",
        &"--config",
        &config,
        &"--duration",
        &"1s",
        &"--json",
    ]));
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        plugin(&last, "hello")["state"],
        "stopped",
        "it ran and stopped: {last}"
    );

    std::fs::write(
        &config,
        "plugin_dirs = []\n[sandbox]\nrequire = [\"selinux\"]\n",
    )
    .unwrap();
    let err = fails(&plugboard(&[
        &"headless",
        &"--config",
        &config,
        &"--duration",
        &"1s",
    ]));
    assert!(
        err.contains("host.toml") && err.contains("line 3") && err.contains("selinux"),
        "{err}"
    );
}

/// The snapshot carries what a front end needs to explain a plugin without reading its
/// manifest: each setting with its default, the host's override and which one won; the
/// granted capabilities and effective limits; every subscribed hook, called or not.
#[test]
fn snapshots_show_effective_config_capabilities_limits_and_uncalled_hooks() {
    let temp = tempfile::tempdir().unwrap();
    let (dir, store) = plugins_dir(temp.path());
    let config = host_config(
        temp.path(),
        &dir,
        &store,
        "[plugins.hello.config]\ngreeting = \"Howdy\"\n\
         [plugins.hello.resources]\nmemory_mb = 48\n",
    );
    let out = ok(&plugboard(&[
        &"headless",
        &"--config",
        &config,
        &"--duration",
        &"1s",
        &"--json",
    ]));
    let first: Value = out
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|snapshot| plugin(snapshot, "hello")["state"] == "running")
        .unwrap_or_else(|| panic!("hello never ran:\n{out}"));
    let hello = plugin(&first, "hello");
    let greeting = &hello["config"]["greeting"];
    assert_eq!(greeting["type"], "string", "{hello}");
    assert_eq!(greeting["default"], "Hello", "{hello}");
    assert_eq!(greeting["host_override"], "Howdy", "{hello}");
    assert_eq!(greeting["effective"], "Howdy", "{hello}");
    assert_eq!(greeting["source"], "host", "{hello}");
    assert_eq!(
        hello["limits"]["memory_mb"], 48,
        "the override wins: {hello}"
    );
    assert_eq!(
        hello["limits"]["cpu_percent"], 25,
        "the manifest's: {hello}"
    );
    assert_eq!(hello["resource_overrides"]["memory_mb"], 48, "{hello}");
    assert_eq!(hello["capabilities"]["network"], false, "{hello}");
    assert_eq!(hello["hooks"]["greet"]["priority"], "normal", "{hello}");
    assert_eq!(hello["hooks"]["greet"]["timeout_ms"], 100, "{hello}");

    let counter = plugin(&first, "counter");
    for (key, default) in [("start", 0), ("step", 1)] {
        let setting = &counter["config"][key];
        assert_eq!(setting["source"], "manifest", "{counter}");
        assert_eq!(setting["default"], default, "{counter}");
        assert_eq!(setting["effective"], default, "{counter}");
        assert!(setting["host_override"].is_null(), "{counter}");
    }
    assert_eq!(
        counter["capabilities"]["emit"][0], "counter.reset",
        "{counter}"
    );
    assert_eq!(counter["limits"]["hook_timeout_ms"], 200, "{counter}");
    // No traffic: neither hook was called, both are listed with zero counts.
    for (hook, priority, timeout) in [("count", "high", 200), ("reset", "low", 50)] {
        let stats = &counter["hooks"][hook];
        assert_eq!(stats["calls"], 0, "{counter}");
        assert_eq!(stats["priority"], priority, "{counter}");
        assert_eq!(stats["timeout_ms"], timeout, "{counter}");
    }
    assert!(
        first["host_limits"]["max_memory_mb"].as_u64().unwrap() >= 48,
        "{first}"
    );
    // A bundle that never verified has none of it.
    let panicky = plugin(&first, "panicky");
    assert!(
        panicky["limits"].is_null() && panicky["capabilities"].is_null(),
        "{panicky}"
    );
}

/// An engine that refuses its configuration (here a trust store that does not parse)
/// leaves no cgroup scope behind: it creates none before everything else is accepted.
#[test]
fn a_refused_start_leaves_no_cgroup_scope() {
    let temp = tempfile::tempdir().unwrap();
    let (dir, _) = plugins_dir(temp.path());
    let store = temp.path().join("broken-store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("trust.toml"), "this is = not [ a trust store\n").unwrap();
    let child = spawn_headless(&["--duration", "1s"], &dir, &store);
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "a broken trust store is refused");
    for controller in ["memory", "cpu", "pids"] {
        let left = engine_scopes_in(controller, pid);
        assert!(left.is_empty(), "left in {controller}: {left:?}");
    }
}

/// Durations, intervals and rates out of range are usage errors that say what is accepted,
/// never a panic, and never a busy loop (`--interval 0`) or a silent "off" (`--traffic -5`).
#[test]
fn out_of_range_durations_intervals_and_rates_are_refused_naming_the_range() {
    for (args, expected) in [
        (
            ["--duration", "99999999999999999999h"],
            "expected at most 8760h",
        ),
        (
            ["--interval", "4000000000000000h"],
            "expected at most 8760h",
        ),
        (
            ["--emit", "chaos@99999999999999999999h"],
            "expected at most 8760h",
        ),
        (["--interval", "0"], "expected from 10ms to 8760h"),
        (["--duration", "0"], "expected from 1ms to 8760h"),
        (["--traffic", "-5"], "is negative: expected a rate ≥ 0"),
        (
            ["--traffic", "NaN"],
            "is not a finite number: expected a rate ≥ 0",
        ),
        (
            ["--traffic", "inf"],
            "is not a finite number: expected a rate ≥ 0",
        ),
    ] {
        let output = plugboard(&[&"headless", &"--plugins", &"/tmp", &args[0], &args[1]]);
        let err = crate::support::stderr(&output);
        assert_eq!(output.status.code(), Some(2), "a usage error: {err}");
        assert!(
            err.contains(args[0]) && err.contains(expected),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // The rate the dashboard's traffic key turns on at: no 0, and checked by the parser
    // before any terminal is needed.
    for (command, rate, expected) in [
        ("demo", "0", "is no rate to turn traffic on at"),
        ("dashboard", "-1", "is negative"),
    ] {
        let output = plugboard(&[&command, &"--traffic-rate", &rate]);
        let err = crate::support::stderr(&output);
        assert_eq!(output.status.code(), Some(2), "a usage error: {err}");
        assert!(
            err.contains("--traffic-rate") && err.contains(expected),
            "{command} {rate}: {err}"
        );
    }
}

/// `bundles = [...]` in the host configuration is enough: no plugin directory needed.
#[test]
fn headless_runs_the_bundles_a_host_configuration_lists() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let bundle = crate::support::signed_example(temp.path(), "hello", &keys);
    let config = temp.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "bundles = [{:?}]\ntrust_store = {:?}\n",
            bundle.display().to_string(),
            keys.store.display().to_string()
        ),
    )
    .unwrap();
    let out = ok(&plugboard(&[
        &"headless",
        &"--config",
        &config,
        &"--duration",
        &"2s",
        &"--interval",
        &"200ms",
        &"--json",
    ]));
    let snapshots: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    assert!(
        snapshots
            .iter()
            .any(|snapshot| plugin(snapshot, "hello")["state"] == "running"),
        "hello never ran:\n{out}"
    );
    let last = snapshots.last().unwrap();
    assert_eq!(plugin(last, "hello")["state"], "stopped", "{last}");
}

/// `--allow-unsigned` runs a bundle the trust store refuses, and stderr says so.
#[test]
fn headless_in_development_mode_warns_of_what_runs_unverified() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let dir = temp.path().join("plugins");
    let bundle = crate::support::signed_example(&dir, "hello", &keys);
    crate::support::tamper_library(&bundle.join("libhello.so"));
    let output = plugboard(&[
        &"headless",
        &"--allow-unsigned",
        &"--plugins",
        &dir,
        &"--trust-store",
        &keys.store,
        &"--duration",
        &"200ms",
    ]);
    let err = crate::support::stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("`hello` runs UNVERIFIED (development mode)"),
        "{err}"
    );
}

/// SIGHUP (a closed terminal, a dropped ssh session) stops the engine as SIGTERM does:
/// its workers ended and its cgroups removed, not left for the next engine to find.
#[test]
fn sighup_stops_the_engine_cleanly() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let dir = temp.path().join("plugins");
    crate::support::signed_example(&dir, "hello", &keys);
    let engine = spawn_headless(&["--json"], &dir, &keys.store);
    let pid = engine.id();
    wait_for_worker_cgroup(pid, "hello");
    signal(pid, "HUP");
    let output = engine.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        engine_scopes_in("memory", pid).is_empty(),
        "cgroups left behind"
    );
}

/// Under `nohup` (SIGHUP ignored from the start) a hangup does not stop the engine.
#[test]
fn under_nohup_a_hangup_does_not_stop_the_engine() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let dir = temp.path().join("plugins");
    crate::support::signed_example(&dir, "hello", &keys);
    let mut engine = Command::new("nohup")
        .arg(env!("CARGO_BIN_EXE_plugboard"))
        .args(["headless", "--duration", "3s", "--plugins"])
        .arg(&dir)
        .arg("--trust-store")
        .arg(&keys.store)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nohup runs");
    let pid = engine.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine_scopes_in("memory", pid).is_empty() {
        assert!(Instant::now() < deadline, "the engine never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let hung_up = Instant::now();
    signal(pid, "HUP");
    let status = engine.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        hung_up.elapsed() > Duration::from_millis(1500),
        "ended {:?} after the hangup, before its duration",
        hung_up.elapsed()
    );
    assert!(engine_scopes_in("memory", pid).is_empty());
}

/// SIGINT while plugins are still starting (here one whose `create` takes 9 s) stops the
/// engine at once — its workers ended, its cgroups removed — instead of after every start.
#[test]
fn sigint_during_a_slow_start_stops_the_engine_at_once() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let dir = temp.path().join("plugins");
    for name in ["slowhook", "hello"] {
        ok(&plugboard(&[
            &"pack",
            &repo_root().join(format!("plugins/{name}/plugin.toml")),
            &"--library",
            &plugin_library(name),
            &"--out",
            &dir.join(name),
            &"--key",
            &keys.private,
        ]));
    }
    let host = temp.path().join("plugboard.toml");
    std::fs::write(&host, "[plugins.slowhook.config]\ncreate_ms = 9000\n").unwrap();
    let engine = spawn_headless(
        &["--json", "--config", host.to_str().unwrap()],
        &dir,
        &keys.store,
    );
    let pid = engine.id();
    // slowhook is being created once its worker sits in its cgroup.
    wait_for_worker_cgroup(pid, "slowhook");
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    signal(pid, "INT");
    let output = engine.wait_with_output().unwrap();
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the engine took {took:?} to stop after SIGINT"
    );
    assert!(
        engine_scopes_in("memory", pid).is_empty(),
        "cgroups left behind"
    );
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // The final snapshot is still printed.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|line| line.contains("\"plugins\"")),
        "{stdout}"
    );
}

/// A verified plugin whose start the host refuses (here `max_plugins = 1`) is said on
/// stderr and in an event, not left silently `verified`.
#[test]
fn a_refused_start_is_said_on_stderr_and_in_an_event() {
    let temp = tempfile::tempdir().unwrap();
    let (dir, store) = plugins_dir(temp.path());
    let host = temp.path().join("plugboard.toml");
    std::fs::write(&host, "max_plugins = 1\n").unwrap();
    let output = plugboard(&[
        &"headless",
        &"--plugins",
        &dir,
        &"--trust-store",
        &store,
        &"--config",
        &host,
        &"--duration",
        &"200ms",
        &"--json",
    ]);
    let out = ok(&output);
    let err = crate::support::stderr(&output);
    assert!(
        err.contains("not started") && err.contains("max_plugins"),
        "{err}"
    );
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let refused = last["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|event| {
            event["kind"] == "engine"
                && event["message"]
                    .as_str()
                    .is_some_and(|message| message.starts_with("start refused:"))
        });
    assert!(refused, "{last}");
}

/// A start that fails — a required mechanism the kernel refuses: Landlock cannot grant a
/// path the worker may not open — is said on stderr, not only in the snapshot's reason.
#[test]
fn a_start_that_fails_for_a_required_mechanism_is_said_on_stderr() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    // Outside /tmp (the worker's own) and closed to the worker's uid.
    let locked = tempfile::Builder::new()
        .prefix("plugboard-locked-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let inside = locked.path().join("in");
    std::fs::create_dir(&inside).unwrap();
    std::fs::set_permissions(
        locked.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let dir = temp.path().join("plugins");
    signed_example_with(
        temp.path(),
        "hello",
        &format!(
            "[capabilities]\nfs_read = [{:?}]\n",
            inside.display().to_string()
        ),
        &dir.join("hello"),
        &keys,
    );
    let output = plugboard(&[
        &"headless",
        &"--plugins",
        &dir,
        &"--trust-store",
        &keys.store,
        &"--duration",
        &"200ms",
        &"--json",
    ]);
    let out = ok(&output);
    let err = crate::support::stderr(&output);
    assert!(
        err.contains("`hello` start failed: ") && err.contains("landlock"),
        "{err}"
    );
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(plugin(&last, "hello")["state"], "failed", "{last}");
}

/// An in-process plugin's caught panics do not reach the engine's stderr (in the dashboard,
/// its terminal): each is the call's error reply, with where it happened.
#[test]
fn an_in_process_plugins_caught_panics_stay_off_the_engines_stderr() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    ok(&plugboard(&[
        &"trust",
        &"add",
        &"--trust-store",
        &keys.store,
        &keys.public,
        &"--level",
        &"in-process",
    ]));
    let dir = temp.path().join("plugins");
    signed_example_with(
        temp.path(),
        "panicky",
        "[isolation]\nmode = \"in-process\"\n",
        &dir.join("panicky"),
        &keys,
    );
    let output = plugboard(&[
        &"headless",
        &"--plugins",
        &dir,
        &"--trust-store",
        &keys.store,
        &"--traffic",
        &"200",
        &"--duration",
        &"500ms",
        &"--json",
    ]);
    let out = ok(&output);
    let err = crate::support::stderr(&output);
    assert!(!err.contains("panicked"), "{err}");
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let panicky = plugin(&last, "panicky");
    assert_eq!(panicky["isolation"], "in-process", "{panicky}");
    let panic = &panicky["hooks"]["panic"];
    assert!(panic["errors"].as_u64().unwrap() > 0, "{panic}");
    assert!(
        panic["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("panicked at plugins/panicky/src/lib.rs")),
        "{panic}"
    );
}

/// A bundle deployed while headless runs is verified and started as those found at the
/// start were; one that does not verify is rejected with its reason, not left waiting.
#[test]
fn headless_starts_bundles_deployed_while_it_runs_and_rejects_bad_ones() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let dir = temp.path().join("plugins");
    crate::support::signed_example(&dir, "hello", &keys);
    let mut engine = spawn_headless(&["--json", "--interval", "100ms"], &dir, &keys.store);
    let pid = engine.id();
    // Read as it comes: a full pipe would hold the run's loop (its discovery too) in a write.
    let stdout = engine.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    wait_for_worker_cgroup(pid, "hello");

    // Deployed as a whole: made beside, then renamed in.
    let staging = temp.path().join("staging");
    crate::support::signed_example(&staging, "counter", &keys);
    let tampered = crate::support::signed_example(&staging, "flaky", &keys);
    crate::support::tamper_library(&tampered.join("libflaky.so"));
    std::fs::rename(staging.join("counter"), dir.join("counter")).unwrap();
    std::fs::rename(staging.join("flaky"), dir.join("flaky")).unwrap();
    wait_for_worker_cgroup(pid, "counter");
    // Snapshots every 100 ms: one after the rejection is printed before the end.
    std::thread::sleep(Duration::from_millis(1500));
    // The fix deployed in its place: verified again and started, without a restart of
    // the engine.
    let fixed = temp.path().join("fixed");
    crate::support::signed_example(&fixed, "flaky", &keys);
    std::fs::rename(dir.join("flaky"), staging.join("flaky-rejected")).unwrap();
    std::fs::rename(fixed.join("flaky"), dir.join("flaky")).unwrap();
    wait_for_worker_cgroup(pid, "flaky");
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, "TERM");
    let output = engine.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let snapshots: Vec<Value> = reader
        .join()
        .unwrap()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let states = |name: &str| -> Vec<String> {
        snapshots
            .iter()
            .filter_map(|snapshot| {
                snapshot["plugins"]
                    .as_array()?
                    .iter()
                    .find(|plugin| plugin["name"] == name)
                    .map(|plugin| plugin["state"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    };
    assert!(
        states("counter").iter().any(|state| state == "running"),
        "{:?}",
        states("counter")
    );
    assert!(
        states("flaky").iter().any(|state| state == "rejected"),
        "{:?}",
        states("flaky")
    );
    let reason = snapshots
        .iter()
        .filter_map(|snapshot| {
            snapshot["plugins"]
                .as_array()?
                .iter()
                .find(|plugin| plugin["name"] == "flaky" && plugin["state"] == "rejected")
                .and_then(|plugin| plugin["reason"].as_str())
        })
        .next_back()
        .unwrap_or_default();
    assert!(reason.contains("does not match"), "{reason}");
    // An unattended engine's operator hears of the rejection on stderr.
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.lines()
            .any(|line| line.starts_with("plugboard: `flaky` rejected: ")
                && line.contains("does not match")),
        "{err}"
    );
    let flaky = states("flaky");
    let rejected_at = flaky.iter().position(|state| state == "rejected").unwrap();
    assert!(
        flaky[rejected_at..].iter().any(|state| state == "running"),
        "the fixed bundle was not started: {flaky:?}"
    );
}

/// A `[plugins.<name>]` section no bundle provides is said: a misspelt name would drop its
/// settings without a word.
#[test]
fn a_host_configuration_section_for_no_plugin_found_is_warned_of() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let dir = temp.path().join("plugins");
    crate::support::signed_example(&dir, "hello", &keys);
    let config = host_config(
        temp.path(),
        &dir,
        &keys.store,
        "[plugins.helo.resources]\nmemory_mb = 8\n",
    );
    let output = plugboard(&[&"headless", &"--config", &config, &"--duration", &"200ms"]);
    let err = crate::support::stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("`[plugins.helo]` applies to no bundle found")
            && err.contains("(found: hello)"),
        "{err}"
    );
}

/// A plugin disabled by the configuration is not started, but verified: its snapshot shows
/// its version, hooks and signer, not an unknown, unsigned-looking plugin.
#[test]
fn a_disabled_plugin_is_verified_and_shown_but_not_started() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let dir = temp.path().join("plugins");
    crate::support::signed_example(&dir, "hello", &keys);
    let config = host_config(
        temp.path(),
        &dir,
        &keys.store,
        "[plugins.hello]\nenabled = false\n",
    );
    let out = ok(&plugboard(&[
        &"headless",
        &"--config",
        &config,
        &"--duration",
        &"200ms",
        &"--json",
    ]));
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let hello = plugin(&last, "hello");
    assert_eq!(hello["state"], "disabled", "{hello}");
    assert_eq!(hello["version"], "0.1.0", "{hello}");
    assert_eq!(hello["trust"]["signed"], true, "{hello}");
    assert!(hello["hooks"]["greet"].is_object(), "{hello}");
    assert!(hello["sandbox_pid"].is_null(), "{hello}");
}

/// A second engine on the state file of a running one is told, by pid: the two would
/// overwrite each other's toggles.
#[test]
fn a_second_engine_on_the_same_state_file_is_warned_naming_the_first() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "fleet");
    let dir = temp.path().join("plugins");
    crate::support::signed_example(&dir, "hello", &keys);
    let state = temp.path().join("state.json");
    let state_arg = state.display().to_string();
    let first = spawn_headless(&["--state-file", &state_arg], &dir, &keys.store);
    let first_pid = first.id();
    wait_for_worker_cgroup(first_pid, "hello");
    let output = plugboard(&[
        &"headless",
        &"--plugins",
        &dir,
        &"--trust-store",
        &keys.store,
        &"--state-file",
        &state,
        &"--duration",
        &"200ms",
    ]);
    signal(first_pid, "TERM");
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{first:?}");
    let err = crate::support::stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "another engine (pid {first_pid}) uses the state file {}",
            state.display()
        )),
        "{err}"
    );
    // Once the first is gone, the next engine has the file to itself.
    let alone = plugboard(&[
        &"headless",
        &"--plugins",
        &dir,
        &"--trust-store",
        &keys.store,
        &"--state-file",
        &state,
        &"--duration",
        &"100ms",
    ]);
    let err = crate::support::stderr(&alone);
    assert!(!err.contains("another engine"), "{err}");
}
