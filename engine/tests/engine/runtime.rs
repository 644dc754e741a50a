//! The engine API end to end: commands, snapshots and events over real confined workers.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plugboard_engine::policy::{Action, ViolationKind};
use plugboard_engine::sandbox::Mechanism;
use plugboard_engine::worker::{ExitStatus, NOTIFICATIONS_PER_SEC, OUTPUT_BYTES_PER_SEC};
use plugboard_engine::{
    Command, Engine, EngineConfig, EngineError, EngineTopic, Event, EventKind, Outcome,
    PluginSnapshot, PluginState,
};

use crate::support::{
    Signer, built_plugin, file_identity, inotify_fd_in, inotify_watches, make_bundle, repo_root,
};
use crate::worker::host_binary;

pub struct Fixture {
    pub engine: Engine,
    pub events: mpsc::Receiver<Event>,
    pub signer: Signer,
    pub plugins: PathBuf,
    pub temp: tempfile::TempDir,
}

/// Signs `plugins/<name>/plugin.toml` (optionally edited) into `<dir>/<bundle>`.
pub fn add_bundle(
    dir: &Path,
    signer: &Signer,
    name: &str,
    bundle: &str,
    edit: impl Fn(&str) -> String,
) {
    let manifest =
        std::fs::read_to_string(repo_root().join(format!("plugins/{name}/plugin.toml"))).unwrap();
    let edited = dir.join(format!("{bundle}.toml"));
    std::fs::write(&edited, edit(&manifest)).unwrap();
    let library_name = format!("lib{}.so", name.replace('-', "_"));
    make_bundle(
        &dir.join(bundle),
        &edited,
        &built_plugin(name),
        &library_name,
        Some(&signer.key),
    );
    std::fs::remove_file(edited).unwrap();
}

/// (plugin crate, bundle directory name, manifest edit)
pub type BundleSpec<'a> = (&'a str, &'a str, fn(&str) -> String);

fn engine_with(bundles: &[BundleSpec<'_>], grace: Duration) -> Fixture {
    engine_configured(bundles, |config| config.grace = grace)
}

/// An engine over freshly signed `bundles`, its configuration adjusted by `adjust`.
pub fn engine_configured(
    bundles: &[BundleSpec<'_>],
    adjust: impl FnOnce(&mut EngineConfig),
) -> Fixture {
    let temp = tempfile::tempdir().unwrap();
    let signer = Signer::new(temp.path());
    let plugins: PathBuf = temp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for (name, bundle, edit) in bundles {
        add_bundle(&plugins, &signer, name, bundle, edit);
    }
    let mut config = EngineConfig::new(host_binary());
    config.plugin_dirs = vec![plugins.clone()];
    config.trust_store = Some(signer.store_dir.clone());
    adjust(&mut config);
    let engine = Engine::start(config).expect("engine starts");
    let events = engine.subscribe();
    Fixture {
        engine,
        events,
        signer,
        plugins,
        temp,
    }
}

/// Sets `[plugins.<plugin>.config]` values in the host configuration.
pub fn configure_plugin(
    config: &mut EngineConfig,
    plugin: &str,
    settings: &[(&str, serde_json::Value)],
) {
    let overrides = config.plugins.entry(plugin.to_owned()).or_default();
    for (key, value) in settings {
        overrides.config.insert((*key).to_owned(), value.clone());
    }
}

pub fn same(manifest: &str) -> String {
    manifest.to_owned()
}

pub fn plugin(engine: &Engine, name: &str) -> PluginSnapshot {
    engine
        .snapshot()
        .plugins
        .into_iter()
        .find(|plugin| plugin.name == name)
        .unwrap_or_else(|| panic!("no plugin {name}"))
}

pub fn start(engine: &Engine, name: &str) {
    engine
        .execute(Command::Start {
            plugin: name.to_owned(),
        })
        .unwrap_or_else(|err| panic!("{name} starts: {err}"));
}

/// The engine's refusal to start `plugin` (a start that must fail).
#[track_caller]
pub fn refused_start(engine: &Engine, plugin: &str) -> plugboard_engine::EngineError {
    engine
        .execute(Command::Start {
            plugin: plugin.to_owned(),
        })
        .expect_err("the start is refused")
}

pub fn call(
    engine: &Engine,
    plugin: &str,
    hook: &str,
    payload: &str,
) -> plugboard_engine::CallReport {
    match engine.execute(Command::Call {
        plugin: plugin.to_owned(),
        hook: hook.to_owned(),
        payload: payload.as_bytes().to_vec(),
    }) {
        Ok(Outcome::Called { report }) => report,
        other => panic!("call {plugin}.{hook}: {other:?}"),
    }
}

/// Waits for an event matching `wanted`; on failure says what was seen.
pub fn wait_for(
    events: &mpsc::Receiver<Event>,
    within: Duration,
    wanted: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(event) if wanted(&event) => return event,
            Ok(event) => seen.push(event.kind),
            Err(_) => break,
        }
    }
    panic!("no matching event within {within:?}; saw {seen:#?}");
}

pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn load_start_call_stop_unload_leave_nothing_behind() {
    let fixture = engine_with(&[("hello", "hello", same)], Duration::from_secs(2));
    let engine = &fixture.engine;
    assert_eq!(plugin(engine, "hello").state, PluginState::Discovered);
    engine
        .execute(Command::Load {
            plugin: "hello".into(),
        })
        .unwrap();
    let verified = plugin(engine, "hello");
    assert_eq!(verified.state, PluginState::Verified);
    assert!(verified.trust.signed && !verified.trust.unverified);
    start(engine, "hello");
    let running = plugin(engine, "hello");
    assert_eq!(running.state, PluginState::Running);
    assert_eq!(
        call(engine, "hello", "greet", "engine").reply,
        "Hello, engine!"
    );
    let stats = &plugin(engine, "hello").hooks["greet"];
    assert_eq!((stats.calls, stats.errors, stats.timeouts), (1, 0, 0));
    assert!(stats.since_start.p50_us > 0);

    let (pid, cgroup) = (running.sandbox_pid.unwrap(), running.cgroup.unwrap());
    engine
        .execute(Command::Stop {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap();
    let stopped = plugin(engine, "hello");
    assert_eq!(stopped.state, PluginState::Stopped);
    assert_eq!(stopped.last_exit, Some(ExitStatus::Code { code: 0 }));
    assert!(
        stopped.active_mechanisms.is_empty() && stopped.mechanisms["seccomp"].active,
        "nothing confines a stopped plugin; what its worker had is kept"
    );
    assert!(!process_alive(pid));
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/memory{cgroup}")).exists(),
        "cgroup {cgroup} left behind"
    );
    let err = engine.execute(Command::Stop {
        plugin: "hello".into(),
        force: false,
    });
    assert!(err.is_ok(), "stopping a stopped plugin is a no-op: {err:?}");
    engine
        .execute(Command::Unload {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap();
    assert_eq!(plugin(engine, "hello").state, PluginState::Unloaded);
    let states: Vec<PluginState> = engine
        .recent_events()
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::StateChanged { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [
            PluginState::Verified,
            PluginState::Starting,
            PluginState::Running,
            PluginState::Stopping,
            PluginState::Stopped,
            PluginState::Unloaded
        ]
    );
}

fn critical(manifest: &str) -> String {
    manifest
        .replace("name = \"hello\"", "name = \"zz-urgent\"")
        .replace("priority = \"normal\"", "priority = \"critical\"")
}

fn background(manifest: &str) -> String {
    manifest
        .replace("name = \"hello\"", "name = \"aa-later\"")
        .replace("priority = \"normal\"", "priority = \"background\"")
}

#[test]
fn emit_calls_every_subscriber_in_priority_order() {
    let fixture = engine_with(
        &[
            ("hello", "hello", same),
            ("hello", "zz-urgent", critical),
            ("hello", "aa-later", background),
        ],
        Duration::from_secs(2),
    );
    let engine = &fixture.engine;
    for name in ["hello", "zz-urgent", "aa-later"] {
        start(engine, name);
    }
    let Ok(Outcome::Emitted { reports }) = engine.execute(Command::Emit {
        hook: "greet".into(),
        payload: b"all".to_vec(),
    }) else {
        panic!("emit failed")
    };
    let order: Vec<&str> = reports
        .iter()
        .map(|report| report.plugin.as_str())
        .collect();
    assert_eq!(
        order,
        ["zz-urgent", "hello", "aa-later"],
        "critical, normal, background"
    );
    assert!(
        reports
            .iter()
            .all(|report| report.status == "ok" && report.reply == "Hello, all!")
    );
}

#[test]
fn a_timed_out_call_is_counted_and_its_late_reply_discarded() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(2));
    let engine = &fixture.engine;
    start(engine, "prober");
    let report = call(engine, "prober", "sleep", "700");
    assert_eq!(report.status, "timeout", "{report:?}");
    wait_for(&fixture.events, Duration::from_secs(1), |event| {
        matches!(&event.kind, EventKind::Violation { violation }
            if violation.kind == ViolationKind::HookTimeout
                && violation.hook.as_deref() == Some("sleep")
                && violation.facts["timeout_ms"] == 300
                && violation.action == Action::Log)
    });
    // The late reply arrives while this call waits; it must not be mistaken for a
    // protocol violation nor answer this call.
    let next = call(engine, "prober", "sleep", "800");
    assert_eq!(next.status, "timeout");
    // The actor counts the second violation on its own thread: wait until it has.
    wait_for(&fixture.events, Duration::from_secs(2), |event| {
        matches!(&event.kind, EventKind::Violation { violation }
            if violation.kind == ViolationKind::HookTimeout)
    });
    let whoami = call(engine, "prober", "whoami", "");
    assert_eq!(whoami.status, "ok", "{whoami:?}");
    let stats = plugin(engine, "prober").hooks["sleep"].clone();
    assert_eq!((stats.calls, stats.timeouts), (2, 2));
    // Two timeouts are violations, logged; the default policy restarts at three a minute.
    assert_eq!(plugin(engine, "prober").state, PluginState::Running);
    assert_eq!(plugin(engine, "prober").violations, 2);
}

/// A reply larger than a frame can carry is that call's error, not the worker's end:
/// the worker and its other calls go on.
#[test]
fn a_reply_too_large_to_frame_is_an_error_of_that_call_alone() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(2));
    let engine = &fixture.engine;
    start(engine, "prober");
    let before = plugin(engine, "prober").worker_pid;
    let limit = plugboard_engine::ipc::MAX_REPLY_BYTES;
    let at_limit = call(engine, "prober", "big", &limit.to_string());
    assert_eq!(
        (at_limit.status.as_str(), at_limit.reply.len()),
        ("ok", limit)
    );
    let over = call(engine, "prober", "big", &(2 * limit).to_string());
    assert_eq!(over.status, "error", "{over:?}");
    assert!(
        over.reply
            .contains(&format!("reply of {} bytes exceeds", 2 * limit)),
        "{}",
        over.reply
    );
    assert_eq!(call(engine, "prober", "big", "3").reply, "xxx");
    let after = plugin(engine, "prober");
    assert_eq!(after.state, PluginState::Running);
    assert_eq!(after.worker_pid, before, "the same worker answers");
}

/// A plugin name may have 64 characters; its worker's hostname (`plugboard-<name>`) is
/// cut to the kernel's 64 bytes rather than failing the confinement.
#[test]
fn a_plugin_with_the_longest_name_runs_sandboxed() {
    const LONGEST: &str = "a-plugin-name-of-sixty-four-characters-is-the-longest-allowed-xy";
    assert_eq!(LONGEST.len(), 64);
    let fixture = engine_with(
        &[("hello", LONGEST, |manifest| {
            manifest.replace("name = \"hello\"", &format!("name = \"{LONGEST}\""))
        })],
        Duration::from_secs(2),
    );
    let engine = &fixture.engine;
    start(engine, LONGEST);
    assert_eq!(call(engine, LONGEST, "greet", "x").status, "ok");
    let hostname = std::process::Command::new("nsenter")
        .args(["-u", "-t"])
        .arg(plugin(engine, LONGEST).sandbox_pid.unwrap().to_string())
        .arg("hostname")
        .output()
        .unwrap();
    let hostname = String::from_utf8_lossy(&hostname.stdout);
    assert_eq!(hostname.trim_end(), &format!("plugboard-{LONGEST}")[..64]);
}

#[test]
fn a_hostile_worker_is_killed_and_the_engine_keeps_serving_others() {
    let fixture = engine_with(
        &[("prober", "prober", same), ("hello", "hello", same)],
        Duration::from_secs(2),
    );
    let engine = &fixture.engine;
    start(engine, "prober");
    start(engine, "hello");
    let _ = call(engine, "prober", "forge", "");
    // Writing garbage on its socket is hostile: the worker is killed and, by the default
    // policy, the plugin quarantined (not restarted).
    wait_for(&fixture.events, Duration::from_secs(2), |event| {
        matches!(&event.kind, EventKind::Violation { violation }
            if violation.kind == ViolationKind::ProtocolViolation
                && violation.detail.contains("frame")
                && violation.action == Action::Quarantine)
    });
    wait_for(&fixture.events, Duration::from_secs(3), |event| {
        event.kind
            == EventKind::StateChanged {
                from: PluginState::Stopping,
                to: PluginState::Quarantined,
            }
    });
    let prober = plugin(engine, "prober");
    assert_eq!(prober.state, PluginState::Quarantined);
    assert!(
        prober
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("protocol_violation")
    );
    assert_eq!(prober.last_exit, Some(ExitStatus::Signal { signal: 9 }));
    assert_eq!(prober.violations, 1, "the kill that follows is no crash");
    assert!(prober.worker_pid.is_none());
    assert_eq!(
        call(engine, "hello", "greet", "still here").reply,
        "Hello, still here!"
    );
}

/// A call of another ABI is killed by the seccomp filter with no notification to name it:
/// the crash says what SIGSYS means here instead of passing for any crash.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_foreign_abi_system_call_ends_the_worker_and_is_said_to_be_the_filters_kill() {
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.restart.enabled = false;
    });
    let engine = &fixture.engine;
    start(engine, "prober");
    let report = call(engine, "prober", "foreign_abi", "");
    assert_eq!(report.status, "gone", "{report:?}");
    let event = wait_for(
        &fixture.events,
        Duration::from_secs(2),
        |event| matches!(&event.kind, EventKind::Violation { violation } if violation.kind == ViolationKind::Crash),
    );
    let EventKind::Violation { violation } = event.kind else {
        unreachable!()
    };
    assert_eq!(violation.facts["signal_name"], "SIGSYS");
    assert_eq!(violation.mechanism, "seccomp");
    assert!(
        violation.detail.contains("system call of another ABI"),
        "{violation:?}"
    );
    assert_eq!(violation.hook.as_deref(), Some("foreign_abi"));
    assert_eq!(plugin(engine, "prober").state, PluginState::Failed);
}

#[test]
fn a_crash_is_detected_at_once_with_its_signal_and_cleaned_up() {
    // Without restarts, to see the crash itself (supervision.rs tests the backoff).
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.restart.enabled = false;
    });
    let engine = &fixture.engine;
    start(engine, "prober");
    let cgroup = plugin(engine, "prober").cgroup.unwrap();
    let started = Instant::now();
    let report = call(engine, "prober", "crash", "");
    assert_eq!(report.status, "gone", "{report:?}");
    let event = wait_for(
        &fixture.events,
        Duration::from_secs(2),
        |event| matches!(&event.kind, EventKind::Violation { violation } if violation.kind == ViolationKind::Crash),
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "crash noticed after {:?}",
        started.elapsed()
    );
    let EventKind::Violation { violation } = event.kind else {
        unreachable!()
    };
    assert_eq!(violation.facts["signal"], 6);
    assert_eq!(violation.facts["signal_name"], "SIGABRT");
    assert_eq!(violation.hook.as_deref(), Some("crash"));
    assert_eq!(violation.mechanism, "engine");
    let prober = plugin(engine, "prober");
    assert_eq!(prober.state, PluginState::Failed);
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory{cgroup}")).exists());
    // Stopping it acknowledges the crash; and it can be started again.
    engine
        .execute(Command::Stop {
            plugin: "prober".into(),
            force: false,
        })
        .unwrap();
    let stopped = plugin(engine, "prober");
    assert_eq!(stopped.state, PluginState::Stopped);
    assert_eq!(stopped.reason, None, "the stop acknowledged the crash");
    start(engine, "prober");
    assert_eq!(call(engine, "prober", "whoami", "").status, "ok");
}

#[test]
fn output_is_captured_with_streams_and_a_flood_is_rate_limited() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(2));
    let engine = &fixture.engine;
    start(engine, "prober");
    assert_eq!(call(engine, "prober", "chatter", "3").status, "ok");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let prober = plugin(engine, "prober");
        let has = |needle: &str| prober.recent_output.iter().any(|line| line.line == needle);
        if has("chatter line 2") && has("log line 2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "output not captured: {:#?}",
            prober.recent_output
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(call(engine, "prober", "chatter", "3000").status, "ok");
    let deadline = Instant::now() + Duration::from_secs(2);
    while plugin(engine, "prober").output_dropped == 0 {
        assert!(
            Instant::now() < deadline,
            "a flood of 6000 lines dropped nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(plugin(engine, "prober").recent_output.len() <= 20);
    // The whole ring is there for a front end that shows the log in full: more than a
    // snapshot's 20 lines, at most the ring's 500, oldest first.
    let kept = engine.plugin_output("prober").unwrap();
    assert!(
        (21..=500).contains(&kept.len()),
        "{} lines kept",
        kept.len()
    );
    assert!(kept.windows(2).all(|pair| pair[0].at_ms <= pair[1].at_ms));
}

/// A plugin's log message is one line in the engine's log file, whatever it holds: a
/// newline in it cannot start a line that passes for another plugin's.
#[test]
fn a_logged_newline_cannot_forge_a_line_of_the_engine_log() {
    let log = tempfile::tempdir().unwrap();
    let log_file = log.path().join("plugins.log");
    let file = log_file.clone();
    let fixture = engine_configured(&[("prober", "prober", same)], move |config| {
        config.log_file = Some(file);
    });
    let engine = &fixture.engine;
    start(engine, "prober");
    let forged = "real\n1700000000000 victim stderr FORGED\r";
    assert_eq!(call(engine, "prober", "log", forged).status, "ok");
    let deadline = Instant::now() + Duration::from_secs(2);
    let text = loop {
        let text = std::fs::read_to_string(&log_file).unwrap_or_default();
        if text.contains("real") {
            break text;
        }
        assert!(Instant::now() < deadline, "not logged: {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("FORGED"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains(" prober log:info real\\n1700000000000 victim stderr FORGED\\r"),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|line| line.contains(" victim ") && !line.contains("prober"))
    );
}

/// A plugin logging far past the rates (the worker's own for log lines, the engine's for
/// what it keeps) has every line kept or counted: those its worker did not send are
/// counted there and said, and the call that logged them is not slowed by it.
#[test]
fn a_flood_of_log_lines_is_kept_or_counted_line_for_line() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(2));
    let engine = &fixture.engine;
    start(engine, "prober");
    let started = Instant::now();
    // Each chatter line is one line on stdout and one logged through the host.
    let report = call(engine, "prober", "chatter", "20000");
    assert_eq!(report.status, "ok", "{report:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dropped = plugin(engine, "prober").output_dropped;
        // Kept: at most the engine's burst (400) and rate (200/s) since the start.
        let kept_at_most = 400.0 + 200.0 * started.elapsed().as_secs_f64();
        let accounted = as_f64(dropped) + kept_at_most;
        if accounted >= 40_000.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{dropped} of 40000 lines counted as dropped, at most {kept_at_most:.0} kept"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Output lines are counted on the thread that reads them, not queued for the plugin's
/// actor: while the actor is busy (here: stopping the plugin, which waits for its hook to
/// return), a flood of empty lines is still counted as it comes, and costs no memory.
#[test]
fn a_flood_of_output_lines_is_counted_while_the_actor_is_busy() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(30));
    let engine = &fixture.engine;
    start(engine, "prober");
    std::thread::scope(|scope| {
        let flood = scope.spawn(|| call(engine, "prober", "newlines", "3000"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while plugin(engine, "prober").output_dropped == 0 {
            assert!(Instant::now() < deadline, "the flood never began");
            std::thread::sleep(Duration::from_millis(10));
        }
        let stop = scope.spawn(|| {
            engine.execute(Command::Stop {
                plugin: "prober".to_owned(),
                force: false,
            })
        });
        // Two readings while the actor is inside the stop.
        let mut readings = Vec::new();
        while readings.len() < 2 {
            let prober = plugin(engine, "prober");
            assert!(
                prober.state == PluginState::Stopping
                    || readings.is_empty() && prober.state == PluginState::Running,
                "the stop ended before the flood did: {:?}",
                prober.state
            );
            if prober.state == PluginState::Stopping {
                readings.push(prober.output_dropped);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        assert!(
            readings[1] > readings[0] + 10_000,
            "output lines were not counted while the actor was busy: {readings:?}"
        );
        stop.join().unwrap().expect("the stop succeeds");
        assert_eq!(flood.join().unwrap().status, "ok");
    });
    assert_eq!(plugin(engine, "prober").state, PluginState::Stopped);
}

/// A worker writing to its stdout as fast as it can is read at the engine's byte rate: its
/// writes wait once the pipe is full, so the flood costs the engine a bounded share of a
/// core (unbounded, this machine reads hundreds of MiB a second of it).
#[test]
fn a_flood_of_output_is_read_at_a_bounded_byte_rate() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(2));
    let engine = &fixture.engine;
    start(engine, "prober");
    let started = Instant::now();
    let report = call(engine, "prober", "newlines", "1500");
    let took = started.elapsed().as_secs_f64();
    assert_eq!(report.status, "ok", "{report:?}");
    let written = as_f64(count_after(&report.reply, "wrote "));
    let rate = f64::from(OUTPUT_BYTES_PER_SEC);
    // A burst of 1 MiB, the rate over the call's time, a full pipe and the write that
    // waits on it.
    let bound = f64::from(1u32 << 20) + rate * took + f64::from(128u32 << 10);
    assert!(
        written <= bound * 1.05,
        "{written} bytes written in {took:.2} s, past {bound:.0}"
    );
    assert!(
        written >= rate / 4.0,
        "{written} bytes written in {took:.2} s: the output was held back more than the rate needs"
    );
    // Nothing of it was lost track of: every empty line but those kept (a few hundred)
    // and those still in the pipe was counted as dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dropped = plugin(engine, "prober").output_dropped;
        if as_f64(dropped) + 2_000.0 + f64::from(128u32 << 10) >= written {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{dropped} of {written} lines counted as dropped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Forbidden calls wait in the seccomp listener while the actor's backlog is full (here
/// while it stops the plugin): the flood slows to the pace the engine records it at, and
/// what still cannot be recorded is counted and reported, never queued without end.
#[test]
fn a_flood_of_forbidden_calls_while_the_actor_is_busy_is_bounded_and_counted() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(30));
    let engine = &fixture.engine;
    start(engine, "prober");
    let reply = std::thread::scope(|scope| {
        let flood = scope.spawn(|| call(engine, "prober", "sockets", "2500"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while plugin(engine, "prober").violations == 0 {
            assert!(Instant::now() < deadline, "the flood never began");
            std::thread::sleep(Duration::from_millis(10));
        }
        engine
            .execute(Command::Stop {
                plugin: "prober".to_owned(),
                force: false,
            })
            .expect("the stop succeeds");
        flood.join().unwrap()
    });
    assert_eq!(reply.status, "ok");
    let reply = reply.reply;
    // Every forbidden call is recorded or counted, once the actor has caught up.
    let denied = sockets_denied(&reply);
    let deadline = Instant::now() + Duration::from_secs(10);
    let unrecorded = loop {
        let prober = plugin(engine, "prober");
        if prober.violations + prober.violations_unrecorded == denied {
            assert!(
                prober.violations_unrecorded > 0,
                "nothing was left unrecorded: {reply}"
            );
            assert!(
                prober.violations >= 900,
                "the backlog was not recorded: {} violations ({reply})",
                prober.violations
            );
            break prober.violations_unrecorded;
        }
        assert!(
            Instant::now() < deadline,
            "{} recorded and {} unrecorded violations for {reply}",
            prober.violations,
            prober.violations_unrecorded
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The operator is told, the last of them too (within a second of the one before).
    let in_all = format!("({unrecorded} in all)");
    wait_for(&fixture.events, Duration::from_secs(5), |event| {
        matches!(&event.kind, EventKind::Engine { message, .. }
            if message.contains("not recorded one by one") && message.contains(&in_all))
    });
}

/// A count as a float, for comparisons with rates (counts here are far below 2^52).
fn as_f64(count: u64) -> f64 {
    f64::from(u32::try_from(count).unwrap_or(u32::MAX))
}

/// How many sockets `prober`'s `sockets` hook was refused, from its reply.
fn sockets_denied(reply: &str) -> u64 {
    count_after(reply, "denied ")
}

/// The number that follows `prefix` at the start of one of `prober`'s replies.
fn count_after(reply: &str, prefix: &str) -> u64 {
    reply
        .strip_prefix(prefix)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reply {reply:?}"))
}

/// The engine answers a worker's seccomp notifications at a bounded rate: a plugin looping
/// on a forbidden call as fast as it can is slowed to that rate (its calls wait), so it
/// cannot make the engine spend a core on it; and the operator is told.
#[test]
fn a_loop_of_forbidden_calls_is_paced_to_the_notification_rate() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(2));
    let engine = &fixture.engine;
    start(engine, "prober");
    let started = Instant::now();
    let reply = call(engine, "prober", "sockets", "2000").reply;
    let took = started.elapsed().as_secs_f64();
    let denied = sockets_denied(&reply);
    let rate = f64::from(NOTIFICATIONS_PER_SEC);
    // At most a full bucket and the rate over the loop's time; unpaced this machine
    // answers over three times as many.
    let bound = rate + rate * took;
    assert!(
        as_f64(denied) <= bound * 1.05,
        "{denied} forbidden calls answered in {took:.2} s, past {bound:.0}: {reply}"
    );
    assert!(
        denied >= u64::from(NOTIFICATIONS_PER_SEC / 2),
        "the calls were held back more than the rate needs: {reply}"
    );
    wait_for(&fixture.events, Duration::from_secs(5), |event| {
        event.plugin.as_deref() == Some("prober")
            && matches!(&event.kind, EventKind::Engine { message, topic: EngineTopic::Worker, warning: true }
                if message.contains(&format!("faster than {NOTIFICATIONS_PER_SEC}/s")))
    });
}

/// A plugin that retries a forbidden call in a loop has every call counted, but only the
/// first ones of the minute itemized as events (and audit lines), so the flood cannot
/// push everything else out of the event ring or rotate the audit trail away.
#[test]
fn a_loop_of_forbidden_calls_is_counted_whole_and_itemized_up_to_a_bound() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(2));
    let engine = &fixture.engine;
    start(engine, "prober");
    let reply = call(engine, "prober", "sockets", "300").reply;
    let denied = sockets_denied(&reply);
    assert!(denied > 20, "too few calls to test with: {reply}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while plugin(engine, "prober").violations < denied {
        assert!(
            Instant::now() < deadline,
            "{} of {denied} violations counted",
            plugin(engine, "prober").violations
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let events: Vec<Event> = fixture.events.try_iter().collect();
    let itemized = events
        .iter()
        .filter(|event| {
            matches!(&event.kind, EventKind::Violation { violation }
                if violation.kind == ViolationKind::ForbiddenSyscall)
        })
        .count();
    assert_eq!(itemized, 20, "{denied} denied");
    // Where the itemizing stopped, one note says so (the log going quiet is on purpose).
    let said = events
        .iter()
        .filter(|event| {
            matches!(&event.kind, EventKind::Engine { message, topic: EngineTopic::Worker, .. }
                if message.starts_with("forbidden_syscall (socket) past 20 a minute: counted, not itemized"))
        })
        .count();
    assert_eq!(said, 1, "{events:?}");
    assert_eq!(plugin(engine, "prober").violations, denied);
}

#[test]
fn emits_are_checked_against_the_manifest_and_counted() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_secs(2));
    let engine = &fixture.engine;
    start(engine, "prober");
    assert_eq!(
        call(engine, "prober", "emit", "prober.allowed").reply,
        "ok: emitted prober.allowed"
    );
    let denied = call(engine, "prober", "emit", "billing.charge");
    assert!(denied.reply.starts_with("denied:"), "{denied:?}");
    wait_for(&fixture.events, Duration::from_secs(1), |event| {
        matches!(&event.kind, EventKind::Violation { violation }
            if violation.kind == ViolationKind::ForbiddenEmit
                && violation.facts["emitted"] == "billing.charge"
                && violation.hook.as_deref() == Some("emit"))
    });
    let prober = plugin(engine, "prober");
    assert_eq!((prober.emitted, prober.violations), (1, 1));
}

/// `prober` renamed `name`, subscribed to `relay.<takes>` and granted to emit
/// `relay.<gives>`.
fn relay(manifest: &str, name: &str, takes: &str, gives: &str) -> String {
    manifest
        .replace("name = \"prober\"", &format!("name = \"{name}\""))
        .replace(
            "emit = [\"prober.allowed\"]",
            &format!("emit = [\"relay.{gives}\"]"),
        )
        .replace(
            "[capabilities]",
            &format!("[hooks.\"relay.{takes}\"]\n\n[capabilities]"),
        )
}

/// Two plugins that emit to each other without end are stopped by the engine's bound on
/// emit chains, not by a timeout: the chain is cut at `MAX_EMIT_DEPTH`, the refusal is
/// said, and the call that began it comes back at once.
#[test]
fn two_plugins_emitting_to_each_other_stop_at_the_depth_bound() {
    let fixture = engine_with(
        &[
            ("prober", "prober-a", |manifest| {
                relay(manifest, "prober-a", "a", "b")
            }),
            ("prober", "prober-b", |manifest| {
                relay(manifest, "prober-b", "b", "a")
            }),
        ],
        Duration::from_secs(2),
    );
    let engine = &fixture.engine;
    start(engine, "prober-a");
    start(engine, "prober-b");
    // prober-a emits relay.b (depth 0) → prober-b's relay.b (1) emits relay.a → prober-a's
    // relay.a (2) → prober-b (3) → prober-a (4), whose emit is refused. An `ok` status
    // means it all came back within the call's timeout (1 s): nothing waited for one.
    let began = call(engine, "prober-a", "emit", "relay.b");
    assert_eq!(
        (began.status.as_str(), began.reply.as_str()),
        ("ok", "ok: emitted relay.b"),
        "{began:?}"
    );
    let refusal = wait_for(&fixture.events, Duration::from_secs(2), |event| {
        matches!(&event.kind, EventKind::Engine { message, .. }
            if message.contains("chain of emits is 4 deep"))
    });
    assert_eq!(refusal.plugin.as_deref(), Some("prober-a"));
    let hook_calls = |name: &str, hook: &str| {
        plugin(engine, name)
            .hooks
            .get(hook)
            .map_or(0, |stats| stats.calls)
    };
    assert_eq!(hook_calls("prober-b", "relay.b"), 2);
    assert_eq!(hook_calls("prober-a", "relay.a"), 2);
    assert_eq!(
        (
            plugin(engine, "prober-a").emitted,
            plugin(engine, "prober-b").emitted
        ),
        (3, 2),
        "every emit granted by the manifests is counted, the refused one too"
    );
    for name in ["prober-a", "prober-b"] {
        let snapshot = plugin(engine, name);
        assert_eq!(
            snapshot.violations, 0,
            "{name}: a granted emit is no violation"
        );
        assert_eq!(snapshot.state, PluginState::Running);
    }
}

/// `max_threads = 4` leaves a worker one serving thread.
fn one_serving_thread(manifest: &str) -> String {
    manifest.replace("max_threads = 16", "max_threads = 4")
}

/// `max_threads = 5` leaves a worker two serving threads, and room under the pids limit for
/// the two more a chain of emits coming back into it twice needs.
fn two_serving_threads(manifest: &str) -> String {
    manifest.replace("max_threads = 16", "max_threads = 5")
}

/// A worker whose serving threads are all busy — its only one waiting on its own emit, or
/// each one on an emit of a chain that comes back into it — still reads the engine's
/// answers: it starts a thread to receive them (as the pids limit allows), so an emit is
/// answered at once, not at its timeout (nor the call around it at its own).
#[test]
fn a_worker_with_every_serving_thread_waiting_on_emits_still_reads_their_answers() {
    let fixture = engine_with(
        &[
            ("prober", "prober", one_serving_thread),
            ("prober", "prober-a", |manifest| {
                two_serving_threads(&relay(manifest, "prober-a", "a", "b"))
            }),
            ("prober", "prober-b", |manifest| {
                two_serving_threads(&relay(manifest, "prober-b", "b", "a"))
            }),
        ],
        Duration::from_secs(2),
    );
    let engine = &fixture.engine;
    for name in ["prober", "prober-a", "prober-b"] {
        start(engine, name);
    }
    let alone = call(engine, "prober", "emit", "prober.allowed");
    assert_eq!(
        (alone.status.as_str(), alone.reply.as_str()),
        ("ok", "ok: emitted prober.allowed"),
        "{alone:?}"
    );
    assert!(alone.duration_us < 500_000, "{alone:?}");
    let chain = call(engine, "prober-a", "emit", "relay.b");
    assert_eq!(
        (chain.status.as_str(), chain.reply.as_str()),
        ("ok", "ok: emitted relay.b"),
        "{chain:?}"
    );
    for name in ["prober", "prober-a", "prober-b"] {
        let snapshot = plugin(engine, name);
        assert_eq!(
            (snapshot.violations, snapshot.state),
            (0, PluginState::Running)
        );
    }
}

/// A plugin that emits while it is created (before it runs) starts all the same: its
/// emit fails — nothing is dispatched for a plugin that is not running — and it goes on.
#[test]
fn a_plugin_emitting_while_it_is_created_starts_and_its_emit_fails() {
    let fixture = engine_with(
        &[("prober", "prober", |manifest| {
            manifest.replacen(
                "[config.emit_on_create]\ntype = \"string\"\ndefault = \"\"",
                "[config.emit_on_create]\ntype = \"string\"\ndefault = \"prober.allowed\"",
                1,
            )
        })],
        Duration::from_secs(2),
    );
    let engine = &fixture.engine;
    start(engine, "prober");
    let prober = plugin(engine, "prober");
    assert_eq!(prober.state, PluginState::Running);
    assert!(
        prober
            .recent_output
            .iter()
            .any(|line| line.line.starts_with("emit on create: denied")),
        "{:#?}",
        prober.recent_output
    );
    assert_eq!((prober.emitted, prober.violations), (0, 0));
}

#[test]
fn stop_kills_a_plugin_that_does_not_finish_within_the_grace_period() {
    let fixture = engine_with(&[("prober", "prober", same)], Duration::from_millis(300));
    let engine = &fixture.engine;
    start(engine, "prober");
    // The hook keeps sleeping in the worker after the call times out.
    assert_eq!(call(engine, "prober", "sleep", "30000").status, "timeout");
    let started = Instant::now();
    engine
        .execute(Command::Stop {
            plugin: "prober".into(),
            force: false,
        })
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
    let prober = plugin(engine, "prober");
    assert_eq!(prober.state, PluginState::Stopped);
    assert_eq!(prober.last_exit, Some(ExitStatus::Signal { signal: 9 }));
}

/// A start verifies the bundle while the plugin's worker confines itself; a library changed
/// after signing is refused, and the worker launched beside the verification is gone with
/// its cgroup by the time the start returns.
#[test]
fn a_start_of_a_tampered_bundle_is_refused_and_its_early_worker_leaves_nothing_behind() {
    let fixture = engine_with(
        &[("counter", "counter", same), ("hello", "hello", same)],
        Duration::from_secs(2),
    );
    let engine = &fixture.engine;
    // A running plugin shows where this engine's worker cgroups live.
    start(engine, "counter");
    let counter_cgroup = plugin(engine, "counter").cgroup.expect("counter's cgroup");
    let scope = Path::new(&format!("/sys/fs/cgroup/memory{counter_cgroup}"))
        .parent()
        .expect("the engine's scope")
        .to_owned();

    let library = fixture.plugins.join("hello/libhello.so");
    let mut bytes = std::fs::read(&library).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&library, bytes).unwrap();

    let refused = engine.execute(Command::Start {
        plugin: "hello".into(),
    });
    let reason = match refused {
        Err(err) => err.to_string(),
        Ok(outcome) => panic!("a tampered bundle started: {outcome:?}"),
    };
    assert!(
        reason.contains("does not match this bundle"),
        "refused for its signature: {reason}"
    );
    let hello = plugin(engine, "hello");
    assert_eq!(hello.state, PluginState::Rejected);
    assert_eq!(hello.worker_pid, None);
    let left: Vec<String> = std::fs::read_dir(&scope)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("plugboard-hello-"))
        .collect();
    assert!(
        left.is_empty(),
        "cgroups left behind in {}: {left:?}",
        scope.display()
    );
    assert_eq!(
        call(engine, "counter", "count", "").status,
        "ok",
        "the other plugin serves on"
    );
}

/// The handshake has one deadline for the plugin's creation, however often the plugin
/// logs meanwhile: a constructor that talks every second cannot hold its start (and its
/// actor) open for ever.
#[test]
fn a_plugin_that_logs_while_it_is_created_but_never_finishes_is_refused_at_the_deadline() {
    let fixture = engine_configured(&[("slowhook", "slowhook", same)], |config| {
        // Log lines back to back, a constructor logging in a loop: still refused at the
        // deadline. (`worker::tests::a_worker_that_floods_log_lines_while_it_is_created_…`
        // keeps the engine's queue full throughout, which this worker's CPU quota does not.)
        configure_plugin(
            config,
            "slowhook",
            &[("create_ms", 30_000.into()), ("create_log_ms", 0.into())],
        );
    });
    let engine = &fixture.engine;
    let began = Instant::now();
    let refused = engine.execute(Command::Start {
        plugin: "slowhook".into(),
    });
    let waited = began.elapsed();
    let reason = match refused {
        Err(err) => err.to_string(),
        Ok(outcome) => panic!("a plugin still being created started: {outcome:?}"),
    };
    assert!(reason.contains("no answer within 10s"), "{reason}");
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(15)).contains(&waited),
        "refused after {waited:?}, expected at the 10 s deadline"
    );
    let slowhook = plugin(engine, "slowhook");
    assert_eq!(slowhook.state, PluginState::Failed, "{slowhook:#?}");
    assert_eq!(slowhook.worker_pid, None);
    let logged = slowhook
        .recent_output
        .iter()
        .filter(|line| line.line.contains("still creating"))
        .count();
    assert!(
        logged >= 9,
        "it kept logging while created: {:?}",
        slowhook.recent_output
    );
}

/// Bundles claiming one name: the one in a directory of that name gets it whatever the
/// directory order (here a broken copy sorts first), and every other one is listed,
/// refused, under its directory's path — none is hidden, none takes another's name.
#[test]
fn bundles_claiming_one_name_are_all_listed_and_the_one_named_after_its_directory_wins() {
    let fixture = engine_configured(
        &[
            ("hello", "badsig", same),
            ("hello", "hello", same),
            ("hello", "hello-copy", same),
            // A hello in a directory named like the real counter found after it.
            ("hello", "counter", same),
            ("counter", "counter-real", same),
        ],
        |_| {},
    );
    std::fs::write(fixture.plugins.join("badsig/plugin.sig"), "garbage\n").unwrap();
    drop(fixture.engine);
    let mut config = EngineConfig::new(host_binary());
    config.plugin_dirs = vec![fixture.plugins.clone()];
    config.trust_store = Some(fixture.signer.store_dir.clone());
    let engine = Engine::start(config).unwrap();
    let snapshot = engine.snapshot();
    let mut listed: Vec<(String, String, Option<String>)> = snapshot
        .plugins
        .iter()
        .map(|plugin| {
            (
                plugin.name.clone(),
                Path::new(&plugin.dir)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                plugin.reason.clone(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed.len(), 5, "every bundle is listed: {listed:#?}");
    let by_dir = |dir: &str| {
        listed
            .iter()
            .find(|(_, listed_dir, _)| listed_dir == dir)
            .unwrap_or_else(|| panic!("{dir} is not listed: {listed:#?}"))
    };
    assert_eq!(by_dir("hello").0, "hello", "{listed:#?}");
    assert_eq!(by_dir("counter-real").0, "counter", "{listed:#?}");
    for duplicate in ["badsig", "hello-copy", "counter"] {
        let (name, _, reason) = by_dir(duplicate);
        assert_eq!(
            name,
            &fixture.plugins.join(duplicate).display().to_string(),
            "a duplicate is listed under its path"
        );
        let reason = reason.as_deref().unwrap_or_default();
        assert!(reason.contains("duplicate plugin name"), "{reason}");
        // Said as any rejection is: a `rejected` event with the reason.
        assert!(
            engine.recent_events().iter().any(|event| {
                event.plugin.as_deref() == Some(name.as_str())
                    && matches!(&event.kind, EventKind::Rejected { reason }
                        if reason.contains("duplicate plugin name"))
            }),
            "no rejected event for {name}"
        );
    }
    engine
        .execute(Command::Load {
            plugin: "hello".into(),
        })
        .unwrap();
    assert_eq!(plugin(&engine, "hello").state, PluginState::Verified);
}

/// A plugin whose `create` takes long shows Starting meanwhile, and snapshots (what the
/// dashboard draws) and calls to other plugins do not wait for it.
#[test]
fn a_slow_start_holds_up_neither_snapshots_nor_other_plugins() {
    let fixture = engine_configured(
        &[
            ("hello", "hello", same),
            ("slowhook", "slowhook", |manifest| {
                manifest.replace(
                    "[config.create_ms]\ntype = \"integer\"\ndefault = 0",
                    "[config.create_ms]\ntype = \"integer\"\ndefault = 1500",
                )
            }),
        ],
        |_| {},
    );
    let engine = std::sync::Arc::new(fixture.engine);
    start(&engine, "hello");
    let starting = {
        let engine = std::sync::Arc::clone(&engine);
        std::thread::spawn(move || start(&engine, "slowhook"))
    };
    let seen = wait_for(&fixture.events, Duration::from_secs(5), |event| {
        matches!(
            event.kind,
            EventKind::StateChanged {
                to: PluginState::Starting,
                ..
            }
        ) && event.plugin.as_deref() == Some("slowhook")
    });
    let begun = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut states = Vec::new();
    while begun.elapsed() < Duration::from_millis(800) {
        let asked = Instant::now();
        let snapshot = engine.snapshot();
        slowest = slowest.max(asked.elapsed());
        states.push(
            snapshot
                .plugins
                .iter()
                .find(|plugin| plugin.name == "slowhook")
                .unwrap()
                .state,
        );
        assert_eq!(call(&engine, "hello", "greet", "meanwhile").status, "ok");
        std::thread::sleep(Duration::from_millis(20));
    }
    starting.join().unwrap();
    assert!(
        slowest < Duration::from_millis(300),
        "a snapshot took {slowest:?} while slowhook was created (it started at {})",
        seen.at_ms
    );
    assert!(states.contains(&PluginState::Starting), "{states:?}");
    assert_eq!(plugin(&engine, "slowhook").state, PluginState::Running);
}

/// A payload too large for a call is refused before it is sent, saying so (it was reported
/// as the worker being gone), and the plugin runs on; the largest allowed one goes through.
#[test]
fn a_payload_too_large_for_a_call_is_refused_and_the_largest_one_goes_through() {
    use plugboard_engine::ipc::MAX_PAYLOAD_BYTES;
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "hello");
    let too_large = "a".repeat(MAX_PAYLOAD_BYTES + 1);
    let refused = call(engine, "hello", "greet", &too_large);
    assert_eq!(refused.status, "too_large", "{}", refused.reply);
    assert!(
        refused
            .reply
            .contains(&format!("{}", MAX_PAYLOAD_BYTES + 1)),
        "{}",
        refused.reply
    );
    let mut handle = engine.hook_handle("hello", "greet").unwrap();
    assert!(matches!(
        handle.call(too_large.as_bytes()),
        Err(plugboard_engine::hooks::HookCallError::TooLarge { .. })
    ));
    let largest = "a".repeat(MAX_PAYLOAD_BYTES);
    let answered = call(engine, "hello", "greet", &largest);
    assert_eq!(answered.status, "ok");
    assert_eq!(answered.reply.len(), MAX_PAYLOAD_BYTES + "Hello, !".len());
    assert_eq!(plugin(engine, "hello").state, PluginState::Running);
}

/// Calls pipelined through a hook handle are each answered in order, counted and recorded
/// like single calls; one too large is refused alone.
#[test]
fn calls_pipelined_through_a_handle_are_answered_in_order_and_counted() {
    use plugboard_engine::hooks::HookCallError;
    use plugboard_engine::ipc::MAX_PAYLOAD_BYTES;
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "hello");
    let mut payloads: Vec<Vec<u8>> = (0..300).map(|n| format!("p{n}").into_bytes()).collect();
    payloads[150] = vec![b'a'; MAX_PAYLOAD_BYTES + 1];
    let borrowed: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let mut handle = engine.hook_handle("hello", "greet").unwrap();
    let answers = handle.call_many(&borrowed);
    assert_eq!(answers.len(), 300);
    for (n, answer) in answers.iter().enumerate() {
        if n == 150 {
            assert!(
                matches!(answer, Err(HookCallError::TooLarge { .. })),
                "{answer:?}"
            );
            continue;
        }
        let reply = answer
            .as_ref()
            .unwrap_or_else(|err| panic!("call {n}: {err}"));
        assert_eq!(
            String::from_utf8_lossy(&reply.body),
            format!("Hello, p{n}!")
        );
    }
    let greet = &plugin(engine, "hello").hooks["greet"];
    assert_eq!((greet.calls, greet.errors, greet.busy), (299, 0, 0));
    assert_eq!(greet.in_flight, 0);
}

/// A window of pipelined calls is given each call's timeout: 64 calls of 5 ms, packed one
/// after the other, take longer than the hook's 200 ms and are no timeout for it.
#[test]
fn pipelined_calls_queued_behind_each_other_are_not_timeouts() {
    let fixture = engine_configured(&[("slowhook", "slowhook", same)], |config| {
        // From 1 ms after its start on, `work` sleeps 5 ms (its timeout is 200 ms).
        configure_plugin(
            config,
            "slowhook",
            &[("chaos_after_ms", 1.into()), ("sleep_ms", 5.into())],
        );
    });
    let engine = &fixture.engine;
    start(engine, "slowhook");
    std::thread::sleep(Duration::from_millis(10));
    let payloads: Vec<&[u8]> = (0..128).map(|_| &b"x"[..]).collect();
    let mut handle = engine.hook_handle("slowhook", "work").unwrap();
    let answers = handle.call_many(&payloads);
    for (n, answer) in answers.iter().enumerate() {
        let reply = answer
            .as_ref()
            .unwrap_or_else(|err| panic!("call {n}: {err}"));
        assert_eq!(String::from_utf8_lossy(&reply.body), "slept 5 ms");
    }
    let slowhook = plugin(engine, "slowhook");
    let work = &slowhook.hooks["work"];
    assert_eq!((work.calls, work.timeouts, work.errors), (128, 0, 0));
    assert_eq!(slowhook.violations, 0, "no hook_timeout violation");
}

/// The traffic generator takes 0 (off) or a rate it can keep; anything else (negative,
/// not a number, endless, so slow its interval overflows) is refused, not taken for off.
#[test]
fn a_traffic_rate_out_of_range_is_refused() {
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = &fixture.engine;
    for rate in [-1.0, f64::NAN, f64::INFINITY, 1e-30, 2e6] {
        let err = engine
            .execute(Command::Traffic { rate: Some(rate) })
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected 0 (off) or 0.001 to 1000000"),
            "{rate}: {err}"
        );
    }
    for rate in [Some(0.0), Some(5.0), None] {
        engine.execute(Command::Traffic { rate }).unwrap();
    }
}

/// Duplicates whose directory paths display alike (they differ in bytes that are not
/// UTF-8) are both listed: neither replaces the other.
#[test]
fn duplicates_whose_paths_display_alike_are_both_listed() {
    use std::os::unix::ffi::OsStrExt;
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    for name in [&b"copy\xfe"[..], &b"copy\xff"[..]] {
        let copy = fixture.plugins.join(std::ffi::OsStr::from_bytes(name));
        std::fs::create_dir_all(&copy).unwrap();
        for file in ["plugin.toml", "plugin.sig", "libhello.so"] {
            std::fs::copy(fixture.plugins.join("hello").join(file), copy.join(file)).unwrap();
        }
    }
    drop(fixture.engine);
    let mut config = EngineConfig::new(host_binary());
    config.plugin_dirs = vec![fixture.plugins.clone()];
    let engine = Engine::start(config).unwrap();
    let names: std::collections::BTreeSet<String> = engine
        .snapshot()
        .plugins
        .into_iter()
        .map(|plugin| plugin.name)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains("hello"), "{names:?}");
}

/// A plugin whose constructor writes more to stdout than a pipe holds (100 KiB) starts:
/// the engine reads its output while it is created (before, the write waited on the full
/// pipe, Ready never came and the start was refused after 10 s), and the lines are kept or
/// counted as any others.
#[test]
fn output_written_while_the_plugin_is_created_is_read_and_the_start_goes_on() {
    let temp = tempfile::tempdir().unwrap();
    let signer = Signer::new(temp.path());
    let plugins = temp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let library = crate::support::compile_c_fixture(temp.path(), "chatty_create");
    let manifest = temp.path().join("chatty.toml");
    std::fs::write(
        &manifest,
        "[plugin]\nname = \"chatty\"\nversion = \"0.1.0\"\napi_version = 1\nlibrary = \"libchatty_create.so\"\n\n[hooks.ping]\n",
    )
    .unwrap();
    make_bundle(
        &plugins.join("chatty"),
        &manifest,
        &library,
        "libchatty_create.so",
        Some(&signer.key),
    );
    let mut config = EngineConfig::new(host_binary());
    config.plugin_dirs = vec![plugins.clone()];
    config.trust_store = Some(signer.store_dir.clone());
    config.watch.enabled = false;
    let engine = Engine::start(config).expect("engine starts");
    let began = Instant::now();
    let started = engine.execute(Command::Start {
        plugin: "chatty".into(),
    });
    let took = began.elapsed();
    assert!(started.is_ok(), "refused after {took:?}: {started:?}");
    assert!(took < Duration::from_secs(5), "the start took {took:?}");
    // 1,024 lines at once: the burst kept, the rest counted.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let chatty = plugin(&engine, "chatty");
        let kept = chatty
            .recent_output
            .iter()
            .any(|line| line.line.starts_with("xxxxxxxx"));
        if kept && chatty.output_dropped > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kept {kept}, {} dropped",
            chatty.output_dropped
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A write the plugin names by a way around (its root through `/proc/self/root`, a path
/// relative to its working directory) is judged, and reported, as the file it reaches.
#[test]
fn writes_named_through_proc_self_root_or_relative_paths_are_reported_by_what_they_reach() {
    let fixture = engine_configured(&[("prober", "prober", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "prober");
    for (named, reached) in [
        (
            "/proc/self/root/var/tmp/plugboard-prober-around",
            "/var/tmp/plugboard-prober-around",
        ),
        ("plugboard-prober-relative", "/plugboard-prober-relative"),
        (
            "/proc/self/cwd/var/tmp/plugboard-prober-cwd",
            "/var/tmp/plugboard-prober-cwd",
        ),
        (
            "/proc/thread-self/root/var/tmp/plugboard-prober-thread",
            "/var/tmp/plugboard-prober-thread",
        ),
    ] {
        let report = call(engine, "prober", "write_file", named);
        assert!(report.reply.starts_with("denied:"), "{named}: {report:?}");
        let event = wait_for(&fixture.events, Duration::from_secs(2), |event| {
            matches!(&event.kind, EventKind::Violation { violation }
                if violation.kind == ViolationKind::FsDenied)
        });
        let EventKind::Violation { violation } = event.kind else {
            unreachable!()
        };
        assert_eq!(violation.facts["path"], reached, "{named}: {violation:?}");
        assert!(!Path::new(reached).exists());
    }
}

/// An inotify watch sees names and activity where Landlock does not look: outside the
/// plugin's grants it is refused and reported; in its private /tmp it works.
#[test]
fn an_inotify_watch_outside_the_grants_is_refused_and_reported() {
    let fixture = engine_configured(&[("prober", "prober", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "prober");
    let report = call(engine, "prober", "watch", "/var/tmp");
    assert!(report.reply.starts_with("denied:"), "{report:?}");
    let event = wait_for(&fixture.events, Duration::from_secs(2), |event| {
        matches!(&event.kind, EventKind::Violation { violation }
            if violation.kind == ViolationKind::FsDenied)
    });
    let EventKind::Violation { violation } = event.kind else {
        unreachable!()
    };
    assert_eq!(violation.facts["path"], "/var/tmp", "{violation:?}");
    let inside = call(engine, "prober", "watch", "/tmp");
    assert!(inside.reply.starts_with("ok:"), "{inside:?}");
    // The engine is the only check on a watch: a path it will not resolve (more lookups
    // than it spends on one) is refused, though it reaches the granted /tmp.
    let winding = format!("{}tmp", "/usr/..".repeat(40));
    let refused = call(engine, "prober", "watch", &winding);
    assert!(refused.reply.starts_with("denied:"), "{refused:?}");
}

/// A watch's path is checked by the engine alone, so the engine must act on the path it
/// checked: prober adds watches on /tmp for half a second while a second thread keeps rewriting
/// the path to /var/tmp. The kernel's own list of the worker's watches (its inotify
/// descriptor's fdinfo, read from outside) must hold none on /var/tmp, and some on /tmp.
#[test]
fn a_watch_whose_path_is_rewritten_while_it_is_checked_never_lands_outside_the_grants() {
    let fixture = engine_configured(&[("prober", "prober", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "prober");
    let report = call(engine, "prober", "watch_race", "/var/tmp");
    assert!(report.reply.starts_with("ok:"), "{report:?}");
    // The confined child (pid 1 of its namespace) is where the plugin runs.
    let pid = plugin(engine, "prober").sandbox_pid.expect("prober runs");
    let watched = inotify_watches(pid, inotify_fd_in(&report.reply));
    assert!(
        !watched.is_empty(),
        "no watch on /tmp was added: {report:?}"
    );
    for refused in ["/var/tmp", "/var"] {
        assert!(
            !watched.contains(&file_identity(Path::new(refused))),
            "a watch landed on {refused}: {watched:?} ({report:?})"
        );
    }
}

/// Cgroups the engine cannot use refuse its start while `cgroup` is required (the
/// default), with the reason; a host that leaves `cgroup` out of `require` runs its plugins
/// without one, and says so — in an engine warning and in the plugin's mechanisms.
#[test]
fn without_usable_cgroups_only_a_host_that_does_not_require_them_runs_plugins() {
    let missing = Path::new("/nonexistent-plugboard-cgroups");
    let temp = tempfile::tempdir().unwrap();
    let signer = Signer::new(temp.path());
    let plugins = temp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    add_bundle(&plugins, &signer, "hello", "hello", same);
    let config = || {
        let mut config = EngineConfig::new(host_binary());
        config.plugin_dirs = vec![plugins.clone()];
        config.trust_store = Some(signer.store_dir.clone());
        config.cgroup_root = missing.to_owned();
        config
    };
    match Engine::start(config()) {
        Err(EngineError::Cgroups { reason }) => {
            assert!(reason.contains("nonexistent-plugboard-cgroups"), "{reason}");
        }
        Err(other) => panic!("expected a cgroup error, got {other}"),
        Ok(_) => panic!("an engine requiring cgroups started without them"),
    }

    let mut lowered = config();
    lowered
        .worker
        .require
        .retain(|mechanism| *mechanism != Mechanism::Cgroup);
    let engine = Engine::start(lowered).expect("cgroup not required: the engine starts");
    assert!(
        engine.recent_events().iter().any(|event| matches!(
            &event.kind,
            EventKind::Engine { message, topic: EngineTopic::Cgroup, warning: true }
                if message.contains("plugins run without one")
        )),
        "the engine says it runs without cgroups"
    );
    start(&engine, "hello");
    let hello = plugin(&engine, "hello");
    assert!(hello.cgroup.is_none(), "{:?}", hello.cgroup);
    let cgroup = &hello.mechanisms["cgroup"];
    assert!(
        !cgroup.active && cgroup.detail.contains("no memory, CPU or pids limit"),
        "{cgroup:?}"
    );
    assert!(hello.mechanisms["seccomp"].active);
    assert_eq!(
        call(&engine, "hello", "greet", "bare").reply,
        "Hello, bare!"
    );
    let sandbox = hello.sandbox_pid.expect("running");
    engine.shutdown();
    assert!(!process_alive(sandbox), "stopped at shutdown");
}

/// A start that fails (here the plugin panics while it is created) leaves the plugin
/// `failed` with the reason, and says it in a `start_failed` event.
#[test]
fn a_failed_start_is_an_event_with_its_reason() {
    let fixture = engine_configured(&[("panicky", "panicky", same)], |config| {
        configure_plugin(config, "panicky", &[("panic_in_create", true.into())]);
    });
    let engine = &fixture.engine;
    let refused = engine
        .execute(Command::Start {
            plugin: "panicky".into(),
        })
        .unwrap_err();
    assert!(
        matches!(refused, EngineError::StartFailed { .. }),
        "{refused}"
    );
    let panicky = plugin(engine, "panicky");
    assert_eq!(panicky.state, PluginState::Failed);
    let reason = panicky.reason.unwrap_or_default();
    assert!(reason.contains("plugin panicked at"), "{reason}");
    wait_for(
        &fixture.events,
        Duration::from_secs(5),
        |event| matches!(&event.kind, EventKind::StartFailed { reason: said } if *said == reason),
    );
}
