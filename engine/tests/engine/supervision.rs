//! Supervision over real confined workers: restarts with backoff, reload without losing a
//! call, dependencies, persisted toggles, the host's caps and overrides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plugboard_engine::supervisor::RestartPolicy;
use plugboard_engine::{Command, EngineError, EngineTopic, EventKind, PluginState};

use crate::runtime::{
    add_bundle, call, configure_plugin, engine_configured, plugin, process_alive, refused_start,
    same, start, wait_for,
};

fn restart_policy(initial_ms: u64, max_restarts: u32) -> RestartPolicy {
    RestartPolicy {
        enabled: true,
        initial_delay_ms: initial_ms,
        factor: 2.0,
        max_delay_ms: 10_000,
        max_restarts,
        window_s: 60,
    }
}

fn stop(engine: &plugboard_engine::Engine, name: &str, force: bool) -> Result<(), EngineError> {
    engine
        .execute(Command::Stop {
            plugin: name.to_owned(),
            force,
        })
        .map(drop)
}

#[test]
fn a_crashing_plugin_restarts_with_growing_delays_until_its_budget_is_spent() {
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.restart = restart_policy(300, 2);
    });
    let engine = &fixture.engine;
    start(engine, "prober");
    for (attempt, delay_ms) in [(1u32, 300u64), (2, 600)] {
        assert_eq!(call(engine, "prober", "crash", "").status, "gone");
        let crashed = wait_for(&fixture.events, Duration::from_secs(2), |event| {
            matches!(&event.kind, EventKind::Violation { violation }
                if violation.kind == plugboard_engine::policy::ViolationKind::Crash)
        });
        assert!(
            matches!(&crashed.kind, EventKind::Violation { violation }
                if !violation.facts.contains_key(plugboard_engine::supervisor::NOT_RESTARTED)),
            "a crash within the budget restarts: {crashed:?}"
        );
        let backing_off = wait_for(&fixture.events, Duration::from_secs(1), |event| {
            matches!(event.kind, EventKind::BackingOff { .. })
        });
        assert_eq!(
            backing_off.kind,
            EventKind::BackingOff {
                attempt,
                delay_ms,
                budget_left: 3 - attempt,
            }
        );
        let waiting = plugin(engine, "prober");
        assert_eq!(waiting.state, PluginState::BackingOff);
        assert_eq!(waiting.supervision.backoff_step, attempt - 1);
        assert_eq!(waiting.supervision.restart_budget_left, 3 - attempt);
        let next_retry = waiting
            .supervision
            .next_retry_ms
            .expect("a retry is scheduled");
        assert!(
            next_retry.abs_diff(crashed.at_ms + delay_ms) < 150,
            "retry at {next_retry}, crash at {} + {delay_ms}",
            crashed.at_ms
        );
        let restarted = wait_for(&fixture.events, Duration::from_secs(3), |event| {
            matches!(event.kind, EventKind::Started { .. })
        });
        let waited = restarted.at_ms - crashed.at_ms;
        assert!(
            (delay_ms..delay_ms + 700).contains(&waited),
            "attempt {attempt}: restarted {waited} ms after the crash, policy says {delay_ms} ms"
        );
        assert_eq!(call(engine, "prober", "whoami", "").status, "ok");
    }
    // The third crash within the window finds the budget spent, and its record says so.
    assert_eq!(call(engine, "prober", "crash", "").status, "gone");
    let last_crash = wait_for(&fixture.events, Duration::from_secs(2), |event| {
        matches!(&event.kind, EventKind::Violation { violation }
            if violation.kind == plugboard_engine::policy::ViolationKind::Crash)
    });
    assert!(
        matches!(&last_crash.kind, EventKind::Violation { violation }
            if violation.facts.get(plugboard_engine::supervisor::NOT_RESTARTED)
                .and_then(|why| why.as_str())
                .is_some_and(|why| why.contains("budget is spent"))),
        "{last_crash:?}"
    );
    wait_for(&fixture.events, Duration::from_secs(2), |event| {
        event.kind
            == EventKind::RestartsExhausted {
                restarts: 2,
                window_s: 60,
            }
    });
    let failed = plugin(engine, "prober");
    assert_eq!(failed.state, PluginState::Failed);
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("restart budget"),
        "{:?}",
        failed.reason
    );
    assert_eq!(
        (failed.supervision.starts, failed.supervision.restarts),
        (3, 2)
    );
    assert_eq!(failed.supervision.restart_budget_left, 0);
    assert!(failed.supervision.next_retry_ms.is_none());
    // An operator's start begins afresh.
    start(engine, "prober");
    assert_eq!(plugin(engine, "prober").state, PluginState::Running);
}

#[test]
fn stopping_a_plugin_that_is_backing_off_cancels_its_restart() {
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.restart = restart_policy(400, 3);
    });
    let engine = &fixture.engine;
    start(engine, "prober");
    call(engine, "prober", "crash", "");
    wait_for(&fixture.events, Duration::from_secs(2), |event| {
        matches!(event.kind, EventKind::BackingOff { .. })
    });
    stop(engine, "prober", false).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let stopped = plugin(engine, "prober");
    assert_eq!(stopped.state, PluginState::Stopped);
    assert_eq!(stopped.supervision.starts, 1, "no restart after the stop");
}

fn version_2(manifest: &str) -> String {
    manifest.replace("version = \"0.1.0\"", "version = \"0.2.0\"")
}

/// `slowhook` whose slow calls sleep `ms` by default (so each version answers its own way).
fn slowhook_sleeping(manifest: &str, ms: u32) -> String {
    let default = "[config.sleep_ms]\ntype = \"integer\"\ndefault = 1000";
    assert!(manifest.contains(default), "slowhook's manifest changed");
    manifest.replace(
        default,
        &format!("[config.sleep_ms]\ntype = \"integer\"\ndefault = {ms}"),
    )
}

/// A call still running on the old worker when the grace period ends is waited for up to
/// its timeout and answered there: the old worker is not stopped under it (nor is the call
/// run a second time on the new one).
#[test]
fn a_reload_waits_for_a_call_on_the_old_worker_longer_than_the_grace_period() {
    let fixture = engine_configured(
        &[("slowhook", "slowhook", |manifest| {
            slowhook_sleeping(manifest, 190)
        })],
        |config| {
            config.grace = Duration::from_millis(20);
            // From 1 ms after its start on, `work` sleeps (its timeout is 200 ms).
            configure_plugin(config, "slowhook", &[("chaos_after_ms", 1.into())]);
        },
    );
    let engine = Arc::new(fixture.engine);
    start(&engine, "slowhook");
    let old_pid = plugin(&engine, "slowhook").worker_pid.unwrap();
    // The new version is on disk before the call, so the reload follows it at once.
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "slowhook",
        "slowhook",
        |manifest| version_2(&slowhook_sleeping(manifest, 170)),
    );
    let slow_call = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || call(&engine, "slowhook", "work", "x"))
    };
    // The call is on the old worker when the new one takes over.
    std::thread::sleep(Duration::from_millis(10));
    engine
        .execute(Command::Reload {
            plugin: "slowhook".into(),
        })
        .expect("the new version takes over");
    let report = slow_call.join().unwrap();
    assert_eq!(
        report.status, "ok",
        "the call during the reload: {report:?}"
    );
    assert_eq!(
        report.reply, "slept 190 ms",
        "the call was not answered by the old version it was given to"
    );
    let reloaded = plugin(&engine, "slowhook");
    assert_eq!(reloaded.version.as_deref(), Some("0.2.0"));
    assert_ne!(reloaded.worker_pid, Some(old_pid));
    assert!(!process_alive(old_pid), "the old worker is gone");
    assert_eq!(call(&engine, "slowhook", "work", "x").reply, "slept 170 ms");
}

/// Calls pipelined through a handle across a reload are all answered: the window on the
/// old worker by it, the windows after the switch by the new one.
#[test]
fn pipelined_calls_across_a_reload_are_all_answered() {
    let fixture = engine_configured(
        &[("slowhook", "slowhook", |manifest| {
            slowhook_sleeping(manifest, 5)
        })],
        |config| configure_plugin(config, "slowhook", &[("chaos_after_ms", 1.into())]),
    );
    let engine = Arc::new(fixture.engine);
    start(&engine, "slowhook");
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "slowhook",
        "slowhook",
        |manifest| version_2(&slowhook_sleeping(manifest, 6)),
    );
    let pipelined = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            let payloads: Vec<&[u8]> = (0..320).map(|_| &b"x"[..]).collect();
            let mut handle = engine.hook_handle("slowhook", "work").unwrap();
            handle.call_many(&payloads)
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    engine
        .execute(Command::Reload {
            plugin: "slowhook".into(),
        })
        .expect("the new version takes over");
    let answers = pipelined.join().unwrap();
    let mut by_version = std::collections::BTreeMap::<String, usize>::new();
    for (n, answer) in answers.iter().enumerate() {
        let reply = answer
            .as_ref()
            .unwrap_or_else(|err| panic!("call {n}: {err}"));
        *by_version
            .entry(String::from_utf8_lossy(&reply.body).into_owned())
            .or_default() += 1;
    }
    assert!(
        by_version.contains_key("slept 5 ms") && by_version.contains_key("slept 6 ms"),
        "answered by both versions: {by_version:?}"
    );
}

#[test]
fn a_reload_under_continuous_traffic_loses_no_call() {
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = Arc::new(fixture.engine);
    start(&engine, "hello");
    let old_pid = plugin(&engine, "hello").worker_pid.unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicU64::new(0));
    // One caller sends commands, the other calls through a hook handle resolved before
    // the reload.
    let callers: Vec<_> = (0..2)
        .map(|caller| {
            let (engine, running, answered) = (
                Arc::clone(&engine),
                Arc::clone(&running),
                Arc::clone(&answered),
            );
            let mut handle = (caller == 1).then(|| engine.hook_handle("hello", "greet").unwrap());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while running.load(Ordering::SeqCst) {
                    let failure = if let Some(handle) = handle.as_mut() {
                        match handle.call(b"reload") {
                            Ok(reply) if reply.is_ok() => None,
                            other => Some(format!("handle: {other:?}")),
                        }
                    } else {
                        let report = call(&engine, "hello", "greet", "reload");
                        (report.status != "ok").then(|| format!("command: {report:?}"))
                    };
                    match failure {
                        None => answered.fetch_add(1, Ordering::SeqCst),
                        Some(failure) => {
                            failures.push(failure);
                            0
                        }
                    };
                }
                failures
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "hello",
        "hello",
        version_2,
    );
    let before = answered.load(Ordering::SeqCst);
    engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .expect("the new version takes over");
    std::thread::sleep(Duration::from_millis(200));
    running.store(false, Ordering::SeqCst);
    let failures: Vec<_> = callers
        .into_iter()
        .flat_map(|caller| caller.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "calls lost during the reload: {failures:?}"
    );
    assert!(
        answered.load(Ordering::SeqCst) > before + 10,
        "traffic kept flowing"
    );
    let reloaded = plugin(&engine, "hello");
    assert_eq!(reloaded.state, PluginState::Running);
    assert_eq!(reloaded.version.as_deref(), Some("0.2.0"));
    assert_ne!(reloaded.worker_pid, Some(old_pid));
    assert!(reloaded.supervision.last_reload_ms.is_some());
    assert!(!process_alive(old_pid), "the old worker is gone");
    let events = engine.recent_events();
    assert!(events.iter().any(|event| matches!(
        &event.kind,
        EventKind::Reloaded { from_version: Some(from), to_version, .. }
            if from == "0.1.0" && to_version == "0.2.0"
    )));
}

#[test]
fn a_reload_to_a_broken_bundle_leaves_the_old_version_serving() {
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "hello");
    let before = plugin(engine, "hello");
    // Tampered after signing: the library no longer matches the signature.
    tamper_library(&fixture.plugins.join("hello/libhello.so"));
    let err = engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .unwrap_err();
    assert!(
        matches!(err, EngineError::ReloadFailed { .. })
            && err.to_string().contains("old version keeps serving"),
        "{err}"
    );
    // A bundle that no longer verifies is a trust failure, as at a load (said first: the
    // policy's action may change what the failed reload leaves).
    wait_for(&fixture.events, Duration::from_secs(1), |event| {
        matches!(&event.kind, EventKind::Violation { violation }
            if violation.kind == plugboard_engine::policy::ViolationKind::TrustFailure
                && violation.detail.contains("reload refused"))
    });
    wait_for(&fixture.events, Duration::from_secs(1), |event| {
        matches!(event.kind, EventKind::ReloadFailed { .. })
    });
    let after = plugin(engine, "hello");
    assert_eq!(after.violations, before.violations + 1);
    assert_eq!(after.state, PluginState::Running);
    assert_eq!(after.worker_pid, before.worker_pid);
    assert_eq!(after.trust.library_sha3_512, before.trust.library_sha3_512);
    assert_eq!(call(engine, "hello", "greet", "still").status, "ok");
}

#[test]
fn a_reload_whose_new_version_cannot_start_leaves_the_old_version_serving() {
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "hello");
    let before = plugin(engine, "hello").worker_pid;
    // Signed and verified, but the library has no plugin entry point: the new worker
    // reports that it cannot load it.
    let manifest = fixture.temp.path().join("hello.toml");
    std::fs::write(
        &manifest,
        version_2(
            &std::fs::read_to_string(crate::support::repo_root().join("plugins/hello/plugin.toml"))
                .unwrap(),
        ),
    )
    .unwrap();
    crate::support::make_bundle(
        &fixture.plugins.join("hello"),
        &manifest,
        &crate::support::compile_c_fixture(fixture.temp.path(), "no_entry"),
        "libhello.so",
        Some(&fixture.signer.key),
    );
    let err = engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("did not start"), "{err}");
    assert_eq!(plugin(engine, "hello").worker_pid, before);
    assert_eq!(call(engine, "hello", "greet", "still").status, "ok");
}

/// Prober's manifest with every health check failing after `ms` milliseconds.
fn failing_health(manifest: &str, ms: u64) -> String {
    manifest.replace(
        "[config.failing_health_ms]\ntype = \"integer\"\ndefault = 0",
        &format!("[config.failing_health_ms]\ntype = \"integer\"\ndefault = {ms}"),
    )
}

/// Writes prober's manifest, edited by `edit`, signed, over the bundle in `dir`.
fn resign_prober(
    (plugins, scratch, signer): (&std::path::Path, &std::path::Path, &crate::support::Signer),
    edit: impl Fn(&str) -> String,
) {
    let source =
        std::fs::read_to_string(crate::support::repo_root().join("plugins/prober/plugin.toml"))
            .unwrap();
    let manifest = scratch.join("prober.toml");
    std::fs::write(&manifest, edit(&source)).unwrap();
    crate::support::make_bundle(
        &plugins.join("prober"),
        &manifest,
        &crate::support::built_plugin("prober"),
        "libprober.so",
        Some(&signer.key),
    );
}

/// A reload asked for while another one fails: the failed one's worker exits after the
/// second reload switched to a new worker. Its exit must not pass for the new worker's
/// (they once shared a generation): the plugin runs on, no crash, no restart.
#[test]
fn a_reload_queued_behind_a_failing_one_keeps_its_new_worker() {
    let fixture = engine_configured(&[("prober", "prober", same)], |_| {});
    let bundle = (
        fixture.plugins.as_path(),
        fixture.temp.path(),
        &fixture.signer,
    );
    let engine = Arc::new(fixture.engine);
    start(&engine, "prober");
    // Version 2 answers its health checks after 400 ms, with a failure.
    resign_prober(bundle, |manifest| {
        format!(
            "{}\n[health]\ntimeout_ms = 2000\n",
            failing_health(&version_2(manifest), 400)
        )
    });
    let first = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            engine.execute(Command::Reload {
                plugin: "prober".into(),
            })
        })
    };
    wait_for(&fixture.events, Duration::from_secs(5), |event| {
        matches!(
            event.kind,
            EventKind::StateChanged {
                to: PluginState::Reloading,
                ..
            }
        )
    });
    // Version 3, healthy, asked for while version 2 is being checked.
    resign_prober(bundle, |manifest| {
        manifest.replace("version = \"0.1.0\"", "version = \"0.3.0\"")
    });
    let second = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            engine.execute(Command::Reload {
                plugin: "prober".into(),
            })
        })
    };
    let first = first.join().unwrap();
    assert!(
        matches!(first, Err(EngineError::ReloadFailed { .. })),
        "{first:?}"
    );
    second.join().unwrap().expect("version 3 reloads");
    // The failed worker's exit has long arrived by now.
    std::thread::sleep(Duration::from_millis(500));
    let prober = plugin(&engine, "prober");
    assert_eq!(prober.state, PluginState::Running, "{:?}", prober.reason);
    assert_eq!(prober.version.as_deref(), Some("0.3.0"));
    assert_eq!(prober.supervision.restarts, 0);
    assert_eq!(prober.violations, 0, "no crash recorded");
    assert_eq!(call(&engine, "prober", "whoami", "").status, "ok");
}

fn counter_needs_hello(manifest: &str) -> String {
    format!("{manifest}\n[dependencies]\nhello = \"^0.1\"\n")
}

#[test]
fn dependencies_start_first_and_a_running_dependent_guards_its_dependency() {
    let fixture = engine_configured(
        &[
            ("hello", "hello", same),
            ("counter", "counter", counter_needs_hello),
        ],
        |_| {},
    );
    let engine = &fixture.engine;
    start(engine, "counter");
    let (hello, counter) = (plugin(engine, "hello"), plugin(engine, "counter"));
    assert_eq!(
        (hello.state, counter.state),
        (PluginState::Running, PluginState::Running)
    );
    assert_eq!(
        counter.dependencies.get("hello").map(String::as_str),
        Some("^0.1")
    );
    let started: Vec<String> = engine
        .recent_events()
        .into_iter()
        .filter(|event| matches!(event.kind, EventKind::Started { .. }))
        .filter_map(|event| event.plugin)
        .collect();
    assert_eq!(started, ["hello", "counter"], "the dependency starts first");

    let err = stop(engine, "hello", false).unwrap_err();
    assert!(
        matches!(&err, EngineError::HasDependents { dependents, .. } if dependents == &["counter"]),
        "{err}"
    );
    assert!(err.to_string().contains("counter"), "{err}");
    assert_eq!(plugin(engine, "hello").state, PluginState::Running);
    let err = engine
        .execute(Command::Unload {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap_err();
    assert!(matches!(err, EngineError::HasDependents { .. }), "{err}");

    // Nor may a reload move hello to a version its running dependent does not accept —
    // which a front end can ask before the reload.
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "hello",
        "hello",
        version_2,
    );
    let on_disk = plugboard_engine::bundle::Bundle::open(
        &fixture.plugins.join("hello"),
        &plugboard_engine::manifest::HostLimits::default(),
    )
    .unwrap();
    let refusal = engine
        .check_reload_dependencies("hello", &on_disk)
        .unwrap_err();
    assert!(refusal.to_string().contains("counter"), "{refusal}");
    let err = engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("counter") && err.to_string().contains("0.2.0"),
        "{err}"
    );
    let hello = plugin(engine, "hello");
    assert_eq!(
        (hello.state, hello.version.as_deref()),
        (PluginState::Running, Some("0.1.0"))
    );

    stop(engine, "hello", true).unwrap();
    assert_eq!(plugin(engine, "hello").state, PluginState::Stopped);
    assert_eq!(plugin(engine, "counter").state, PluginState::Stopped);
    // Down, its reload only verifies the bundle again: nothing for dependencies to refuse.
    engine
        .check_reload_dependencies("hello", &on_disk)
        .expect("a stopped plugin's reload does not check dependencies");
}

/// Disabling a plugin a running plugin depends on is refused, naming the dependent; forced,
/// it stops the dependent first.
#[test]
fn disabling_a_dependency_is_refused_unless_forced_which_stops_its_dependents() {
    let fixture = engine_configured(
        &[
            ("hello", "hello", same),
            ("counter", "counter", counter_needs_hello),
        ],
        |_| {},
    );
    let engine = &fixture.engine;
    start(engine, "counter");
    let disable = |force| {
        engine.execute(Command::Disable {
            plugin: "hello".into(),
            force,
        })
    };
    let err = disable(false).unwrap_err();
    assert!(
        matches!(&err, EngineError::HasDependents { dependents, action, .. }
            if dependents == &["counter"] && *action == "disable"),
        "{err}"
    );
    assert_eq!(plugin(engine, "hello").state, PluginState::Running);
    disable(true).unwrap();
    let (hello, counter) = (plugin(engine, "hello"), plugin(engine, "counter"));
    assert_eq!(
        (hello.state, hello.enabled, counter.state),
        (PluginState::Disabled, false, PluginState::Stopped)
    );
}

/// A dependency that is down while its dependent runs (it crashed; restarts are off) may
/// be reloaded to a new version, but not started in one its running dependent refuses.
#[test]
fn a_dependency_down_is_not_started_in_a_version_its_running_dependent_refuses() {
    let fixture = engine_configured(
        &[
            ("prober", "prober", same),
            ("counter", "counter", |manifest| {
                format!("{manifest}\n[dependencies]\nprober = \"^0.1\"\n")
            }),
        ],
        |config| config.restart.enabled = false,
    );
    let engine = &fixture.engine;
    start(engine, "counter");
    assert_eq!(call(engine, "prober", "crash", "").status, "gone");
    wait_until(engine, "prober", Duration::from_secs(3), |prober| {
        prober.state == PluginState::Failed
    });
    assert_eq!(plugin(engine, "counter").state, PluginState::Running);
    // Not silently: the engine says who runs on without it.
    wait_for(&fixture.events, Duration::from_secs(2), |event| {
        matches!(&event.kind, EventKind::Engine { message, .. }
            if message.contains("`prober` is down (it crashed) while `counter`"))
    });
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "prober",
        "prober",
        version_2,
    );
    engine
        .execute(Command::Reload {
            plugin: "prober".into(),
        })
        .unwrap();
    let err = refused_start(engine, "prober");
    assert!(
        err.to_string().contains("counter") && err.to_string().contains("0.2.0"),
        "{err}"
    );
    assert!(plugin(engine, "prober").worker_pid.is_none());
}

/// With restarts off, a plugin the policy would restart is stopped, and says why it stays
/// down.
#[test]
fn with_restarts_off_a_policy_restart_says_the_plugin_stays_down() {
    let fixture = engine_configured(
        &[("prober", "prober", |manifest| {
            failing_health(&quick_health(manifest), 1)
        })],
        |config| config.restart.enabled = false,
    );
    let engine = &fixture.engine;
    start(engine, "prober");
    let failed = wait_until(engine, "prober", Duration::from_secs(5), |prober| {
        prober.state == PluginState::Failed
    });
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.contains("restarts are off"), "{reason}");
    assert!(failed.worker_pid.is_none());
}

#[test]
fn missing_incompatible_and_cyclic_dependencies_are_refused_by_name() {
    let fixture = engine_configured(
        &[
            ("hello", "hello", |manifest| {
                format!("{manifest}\n[dependencies]\ncounter = \"*\"\n")
            }),
            ("counter", "counter", counter_needs_hello),
            ("prober", "prober", |manifest| {
                format!("{manifest}\n[dependencies]\nmissing-one = \"^1\"\n")
            }),
            ("panicky", "panicky", |manifest| {
                format!("{manifest}\n[dependencies]\nhello = \">=2\"\n")
            }),
        ],
        |_| {},
    );
    let engine = &fixture.engine;
    let start_error = |name: &str| refused_start(engine, name).to_string();
    assert_eq!(
        start_error("counter"),
        "dependency cycle: counter → hello → counter"
    );
    assert_eq!(
        start_error("prober"),
        "`prober` depends on `missing-one` (^1), but no plugin of that name is known"
    );
    assert_eq!(
        start_error("panicky"),
        "`panicky` depends on `hello` >=2, but `hello` is version 0.1.0"
    );
    for name in ["hello", "counter", "prober", "panicky"] {
        assert_ne!(plugin(engine, name).state, PluginState::Running, "{name}");
    }
    // The snapshot says why too, for scripts and the dashboard.
    assert_eq!(
        plugin(engine, "prober").reason.as_deref(),
        Some(
            "not started: `prober` depends on `missing-one` (^1), but no plugin of that name is known"
        )
    );
    assert_eq!(
        plugin(engine, "counter").reason.as_deref(),
        Some("not started: dependency cycle: counter → hello → counter")
    );
}

/// A manifest edited after signing decides nothing: the dependency it adds is neither
/// started nor reported missing; the bundle is refused for what it is, a trust failure.
#[test]
fn a_dependency_added_to_a_signed_manifest_starts_nothing_and_the_bundle_is_rejected() {
    let fixture = engine_configured(
        &[("hello", "hello", same), ("counter", "counter", same)],
        |_| {},
    );
    let engine = &fixture.engine;
    for (dependency, requirement) in [("hello", "*"), ("nosuch", "^1")] {
        let manifest = fixture.plugins.join("counter/plugin.toml");
        let signed = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(
            &manifest,
            format!("{signed}\n[dependencies]\n{dependency} = \"{requirement}\"\n"),
        )
        .unwrap();
        let err = refused_start(engine, "counter");
        assert!(
            !matches!(
                err,
                EngineError::MissingDependency { .. } | EngineError::IncompatibleDependency { .. }
            ),
            "refused for its signature, not its dependencies: {err}"
        );
        let counter = plugin(engine, "counter");
        assert_eq!(counter.state, PluginState::Rejected, "{err}: {counter:#?}");
        assert_eq!(plugin(engine, "hello").state, PluginState::Discovered);
        assert!(
            !engine
                .recent_events()
                .iter()
                .any(|event| matches!(event.kind, EventKind::Started { .. })),
            "nothing was started"
        );
        std::fs::write(&manifest, signed).unwrap();
    }
}

#[test]
fn hook_and_plugin_toggles_persist_across_engine_restarts() {
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("state.json");
    let fixture = engine_configured(
        &[("hello", "hello", same), ("counter", "counter", same)],
        |config| config.state_file = Some(state_file.clone()),
    );
    let engine = &fixture.engine;
    start(engine, "hello");
    start(engine, "counter");
    engine
        .execute(Command::DisableHook {
            plugin: "hello".into(),
            hook: "greet".into(),
        })
        .unwrap();
    let refused = call(engine, "hello", "greet", "x");
    assert_eq!(refused.status, "disabled", "{refused:?}");
    assert!(
        engine
            .emit("greet", b"x")
            .iter()
            .all(|report| report.plugin != "hello"),
        "emits skip a disabled hook"
    );
    engine
        .execute(Command::Disable {
            plugin: "counter".into(),
            force: false,
        })
        .unwrap();
    let counter = plugin(engine, "counter");
    assert_eq!(
        (counter.state, counter.enabled),
        (PluginState::Disabled, false)
    );
    assert!(counter.worker_pid.is_none());
    let err = refused_start(engine, "counter");
    assert!(err.to_string().contains("enabled first"), "{err}");
    let saved = std::fs::read_to_string(&state_file).unwrap();
    assert!(
        saved.contains("greet") && saved.contains("counter"),
        "{saved}"
    );

    // A new engine over the same bundles and state file remembers both.
    let plugins = fixture.plugins.clone();
    let store = fixture.signer.store_dir.clone();
    drop(fixture.engine);
    let mut config = plugboard_engine::EngineConfig::new(crate::worker::host_binary());
    config.plugin_dirs = vec![plugins];
    config.trust_store = Some(store);
    config.state_file = Some(state_file.clone());
    let engine = plugboard_engine::Engine::start(config).unwrap();
    assert_eq!(plugin(&engine, "hello").disabled_hooks, ["greet"]);
    assert_eq!(plugin(&engine, "counter").state, PluginState::Disabled);
    engine
        .execute(Command::Enable {
            plugin: "counter".into(),
        })
        .unwrap();
    engine
        .execute(Command::EnableHook {
            plugin: "hello".into(),
            hook: "greet".into(),
        })
        .unwrap();
    start(&engine, "counter");
    start(&engine, "hello");
    assert_eq!(call(&engine, "hello", "greet", "x").status, "ok");
    assert!(plugin(&engine, "hello").disabled_hooks.is_empty());
}

/// Toggles racing from two threads (the dashboard runs each command on its own) are saved
/// in the order they took effect: the state file ends as the engine does.
#[test]
fn racing_hook_toggles_are_saved_in_the_order_they_took_effect() {
    use plugboard_engine::supervisor::state_file::PersistedState;
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("state.json");
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.state_file = Some(state_file.clone());
    });
    let engine = Arc::new(fixture.engine);
    for round in 0..20 {
        let togglers: Vec<_> = [true, false]
            .into_iter()
            .map(|enable| {
                let engine = Arc::clone(&engine);
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        let hook = "greet".to_owned();
                        let plugin = "hello".to_owned();
                        let command = if enable {
                            Command::EnableHook { plugin, hook }
                        } else {
                            Command::DisableHook { plugin, hook }
                        };
                        engine.execute(command).unwrap();
                    }
                })
            })
            .collect();
        for toggler in togglers {
            toggler.join().unwrap();
        }
        let in_engine = plugin(&engine, "hello").disabled_hooks;
        // A plugin with nothing to remember has no entry.
        let saved: Vec<String> = PersistedState::load(&state_file)
            .unwrap()
            .plugins
            .get("hello")
            .map(|toggles| toggles.disabled_hooks.iter().cloned().collect())
            .unwrap_or_default();
        assert_eq!(saved, in_engine, "round {round}");
    }
}

#[test]
fn the_traffic_generator_passes_over_disabled_hooks_and_finds_plugins_started_later() {
    let fixture = engine_configured(
        &[("hello", "hello", same), ("counter", "counter", same)],
        |_| {},
    );
    let engine = &fixture.engine;
    let toggle = |command: fn(String, String) -> Command| {
        engine
            .execute(command("hello".into(), "greet".into()))
            .unwrap();
    };
    start(engine, "hello");
    engine
        .execute(Command::Traffic { rate: Some(400.0) })
        .unwrap();
    let within = Duration::from_secs(10);
    wait_until(engine, "hello", within, |hello| {
        hello.hooks["greet"].calls > 0
    });

    toggle(|plugin, hook| Command::DisableHook { plugin, hook });
    // A call that was on its way when the hook was disabled ends unhindered.
    std::thread::sleep(Duration::from_millis(50));
    let while_disabled = plugin(engine, "hello").hooks["greet"].calls;
    start(engine, "counter");
    wait_until(engine, "counter", within, |counter| {
        counter.hooks["count"].calls > 0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        plugin(engine, "hello").hooks["greet"].calls,
        while_disabled,
        "no traffic to a disabled hook"
    );

    toggle(|plugin, hook| Command::EnableHook { plugin, hook });
    wait_until(engine, "hello", within, |hello| {
        hello.hooks["greet"].calls > while_disabled
    });
    engine.execute(Command::Traffic { rate: None }).unwrap();
    let stats = &plugin(engine, "hello").hooks["greet"];
    assert_eq!((stats.errors, stats.timeouts, stats.busy), (0, 0, 0));
}

/// A plugin whose hooks are slow holds back only its own generated calls: the others keep
/// the rate (one loop calling each in turn gave `hello` a few calls a second).
#[test]
fn a_slow_plugin_does_not_hold_back_the_traffic_of_the_others() {
    let fixture = engine_configured(
        &[("hello", "hello", same), ("slowhook", "slowhook", same)],
        |config| {
            // `work` and `ping` answer; from 1 ms after its start on, `work` sleeps 150 ms.
            configure_plugin(
                config,
                "slowhook",
                &[("chaos_after_ms", 1.into()), ("sleep_ms", 150.into())],
            );
        },
    );
    let engine = &fixture.engine;
    start(engine, "hello");
    start(engine, "slowhook");
    engine
        .execute(Command::Traffic { rate: Some(200.0) })
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    engine.execute(Command::Traffic { rate: None }).unwrap();
    let greets = plugin(engine, "hello").hooks["greet"].calls;
    let slow = plugin(engine, "slowhook");
    let work = slow.hooks["work"].calls;
    // Three hooks share 200 calls a second; slowhook's lane, in a 150 ms call most of the
    // time, passes its turns on. (Before: about 6 greets in this second.)
    assert!(
        greets >= 60,
        "hello got {greets} calls in a second at 200/s"
    );
    assert!(
        (1..=10).contains(&work),
        "slowhook's work: {work} calls of 150 ms in a second"
    );
}

/// A hook its manifest keeps from traffic (`traffic = false`: the zoo's `chaos`) gets no
/// generated call; an operator's call still reaches it.
#[test]
fn the_traffic_generator_leaves_out_hooks_their_manifest_keeps_from_it() {
    let fixture = engine_configured(&[("crasher", "crasher", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "crasher");
    engine
        .execute(Command::Traffic { rate: Some(400.0) })
        .unwrap();
    wait_until(engine, "crasher", Duration::from_secs(10), |crasher| {
        crasher.hooks["ping"].calls >= 100
    });
    engine.execute(Command::Traffic { rate: None }).unwrap();
    let crasher = plugin(engine, "crasher");
    assert_eq!(crasher.hooks["chaos"].calls, 0, "{:?}", crasher.hooks);
    assert_eq!(crasher.state, PluginState::Running);
    assert_eq!(call(engine, "crasher", "chaos", "").status, "gone");
}

#[test]
fn max_plugins_caps_how_many_run_at_once() {
    let fixture = engine_configured(
        &[("hello", "hello", same), ("counter", "counter", same)],
        |config| config.max_plugins = Some(1),
    );
    let engine = &fixture.engine;
    start(engine, "hello");
    let err = refused_start(engine, "counter").to_string();
    assert!(
        err.contains("max_plugins") && err.contains("hello"),
        "{err}"
    );
    // The refused plugin says why it did not start, until it does.
    let reason = plugin(engine, "counter").reason.unwrap_or_default();
    assert!(
        reason.starts_with("not started: ") && reason.contains("max_plugins"),
        "{reason}"
    );
    stop(engine, "hello", false).unwrap();
    start(engine, "counter");
    assert_eq!(plugin(engine, "counter").reason, None);
}

#[test]
fn a_call_beyond_max_in_flight_is_refused_as_busy_and_counted() {
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.plugins.insert(
            "prober".into(),
            plugboard_engine::supervisor::PluginOverrides {
                resources: plugboard_engine::manifest::Resources {
                    max_in_flight: Some(1),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
    });
    let engine = Arc::new(fixture.engine);
    start(&engine, "prober");
    let sleeper = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || call(&engine, "prober", "sleep", "200"))
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    while plugin(&engine, "prober")
        .hooks
        .get("sleep")
        .is_none_or(|hook| hook.in_flight == 0)
    {
        assert!(Instant::now() < deadline, "the sleep call never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let refused = call(&engine, "prober", "sleep", "1");
    assert_eq!(refused.status, "busy", "{refused:?}");
    // The cap is the plugin's: another hook finds it taken as well.
    let other = call(&engine, "prober", "whoami", "");
    assert_eq!(other.status, "busy", "{other:?}");
    assert_eq!(sleeper.join().unwrap().status, "ok");
    let hooks = plugin(&engine, "prober").hooks;
    assert_eq!((hooks["sleep"].calls, hooks["sleep"].busy), (2, 1));
    assert_eq!((hooks["whoami"].calls, hooks["whoami"].busy), (1, 1));
    // Given back: calls go through again.
    assert_eq!(call(&engine, "prober", "whoami", "").status, "ok");
}

#[test]
fn host_overrides_reach_the_plugin_config_and_its_cgroup_and_the_budget_caps_the_scope() {
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.memory_budget_mb = Some(256);
        config.plugins.insert(
            "hello".into(),
            plugboard_engine::supervisor::PluginOverrides {
                config: [("greeting".to_owned(), serde_json::json!("Howdy"))].into(),
                resources: plugboard_engine::manifest::Resources {
                    memory_mb: Some(48),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
    });
    let engine = &fixture.engine;
    start(engine, "hello");
    let reply = call(engine, "hello", "greet", "admin");
    assert!(reply.reply.contains("Howdy"), "{reply:?}");
    let cgroup = plugin(engine, "hello").cgroup.unwrap();
    let read =
        |path: String| std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    assert_eq!(
        read(format!(
            "/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes"
        ))
        .trim(),
        (48u64 << 20).to_string()
    );
    let scope = std::path::Path::new(&cgroup)
        .parent()
        .unwrap()
        .display()
        .to_string();
    assert_eq!(
        read(format!(
            "/sys/fs/cgroup/memory{scope}/memory.limit_in_bytes"
        ))
        .trim(),
        (256u64 << 20).to_string()
    );
}

#[test]
fn a_config_override_the_schema_refuses_rejects_the_plugin_with_the_key() {
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.plugins.insert(
            "hello".into(),
            plugboard_engine::supervisor::PluginOverrides {
                config: [("greeting".to_owned(), serde_json::json!(3))].into(),
                ..Default::default()
            },
        );
    });
    let engine = &fixture.engine;
    let err = refused_start(engine, "hello").to_string();
    assert!(
        err.contains("greeting") && err.contains("[plugins.hello]"),
        "{err}"
    );
    assert_eq!(plugin(engine, "hello").state, PluginState::Rejected);
}

#[test]
fn a_host_that_allows_unsigned_bundles_runs_them_sandboxed_and_says_so() {
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.trust_store = None;
        config.allow_unsigned = true;
    });
    let engine = &fixture.engine;
    start(engine, "hello");
    let hello = plugin(engine, "hello");
    assert!(hello.trust.unverified);
    assert!(
        hello.active_mechanisms.contains(&"sc".to_owned()),
        "{:?}",
        hello.active_mechanisms
    );
    assert!(engine.recent_events().iter().any(|event| matches!(
        &event.kind,
        EventKind::Engine { message, topic: EngineTopic::Unverified, warning: true }
            if message.contains("UNVERIFIED")
    )));
}

/// `plugin` once it shows as rejected, within `within`.
fn once_rejected(
    engine: &plugboard_engine::Engine,
    plugin: &str,
    within: Duration,
) -> plugboard_engine::PluginSnapshot {
    wait_until(engine, plugin, within, |shown| {
        shown.state == PluginState::Rejected
    })
}

/// Writes `file` whole, as an editor or a deploy tool does: a new file renamed over it.
fn replace_whole(file: &std::path::Path, contents: impl AsRef<[u8]>) {
    let staged = file.with_extension("new");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, file).unwrap();
}

/// Adds a comment to the bundle's manifest: it still parses, and its signature no longer
/// matches.
fn change_after_signing(bundle: &std::path::Path) {
    let manifest = bundle.join("plugin.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("\n# changed after signing\n");
    std::fs::write(&manifest, text).unwrap();
}

/// Development mode runs what nobody vouches for — here a bundle changed after signing —
/// saying why; a revoked bundle it refuses, as any host does: a revocation is a "never".
#[test]
fn development_mode_runs_what_is_untrusted_but_never_what_is_revoked() {
    use plugboard_engine::trust::{Digest, TrustStore};
    let fixture = engine_configured(
        &[("hello", "hello", same), ("counter", "counter", same)],
        |config| {
            config.allow_unsigned = true;
            let store = config.trust_store.clone().unwrap();
            let library = std::fs::read(crate::support::built_plugin("counter")).unwrap();
            TrustStore::revoke_digest(&store, Digest::of(&library)).unwrap();
            change_after_signing(&config.plugin_dirs[0].join("hello"));
        },
    );
    let engine = &fixture.engine;
    start(engine, "hello");
    let hello = plugin(engine, "hello");
    assert_eq!(hello.state, PluginState::Running);
    assert!(hello.trust.unverified);
    let because = hello.trust.unverified_because.unwrap_or_default();
    assert!(because.contains("does not match this bundle"), "{because}");
    assert!(engine.recent_events().iter().any(|event| matches!(
        &event.kind,
        EventKind::Engine { message, .. }
            if message.contains("UNVERIFIED") && message.contains("does not match")
    )));
    let refused = refused_start(engine, "counter").to_string();
    assert!(
        refused.contains("revoked") && refused.contains("development mode too"),
        "{refused}"
    );
    assert_eq!(plugin(engine, "counter").state, PluginState::Rejected);
}

/// A key revoked while the engine runs counts at once: the plugin it signed is stopped
/// within a sampling interval or two, shows as rejected saying why, and its next start is
/// refused — a revocation in an incident does not wait for the next restart.
#[test]
fn a_key_revoked_while_the_engine_runs_stops_what_it_signed() {
    use plugboard_engine::trust::TrustStore;
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "hello");
    let sandbox = plugin(engine, "hello").sandbox_pid.expect("running");
    let signer = &fixture.signer;
    TrustStore::revoke_key(&signer.store_dir, signer.key.public_key().key_id()).unwrap();

    let hello = once_rejected(engine, "hello", Duration::from_secs(5));
    let reason = hello.reason.unwrap_or_default();
    assert!(
        reason.starts_with("trust withdrawn while it ran: ") && reason.contains("revoked"),
        "{reason}"
    );
    assert!(hello.worker_pid.is_none());
    assert!(!process_alive(sandbox), "its worker was stopped");
    // Recorded as a trust violation (right after the state changes).
    wait_for(&fixture.events, Duration::from_secs(5), |event| {
        matches!(
            &event.kind,
            EventKind::Violation { violation } if violation.mechanism == "trust"
        )
    });
    let refused = refused_start(engine, "hello").to_string();
    assert!(refused.contains("revoked"), "{refused}");
    assert_eq!(plugin(engine, "hello").state, PluginState::Rejected);
}

/// A change to the trust store that still vouches for what runs (another key pinned)
/// leaves it running.
#[test]
fn a_trust_store_change_that_still_vouches_leaves_the_plugin_running() {
    use plugboard_engine::trust::{PrivateKey, TrustLevel, TrustStore};
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "hello");
    let other = fixture.temp.path().join("other.pub");
    std::fs::write(&other, PrivateKey::generate().public_key().to_pem()).unwrap();
    TrustStore::add_key(&fixture.signer.store_dir, &other, TrustLevel::Sandboxed).unwrap();
    // Two sampling intervals and more: time for the engine to look.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(plugin(engine, "hello").state, PluginState::Running);
    assert_eq!(call(engine, "hello", "greet", "still").status, "ok");
}

/// A restart after a crash asks the trust store again too: a plugin whose key was revoked
/// meanwhile is refused, not brought back from its kept copy.
#[test]
fn a_restart_after_a_revocation_is_refused() {
    use plugboard_engine::trust::TrustStore;
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.restart.initial_delay_ms = 50;
    });
    let engine = &fixture.engine;
    start(engine, "prober");
    let signer = &fixture.signer;
    TrustStore::revoke_key(&signer.store_dir, signer.key.public_key().key_id()).unwrap();
    assert_eq!(call(engine, "prober", "crash", "").status, "gone");
    let prober = once_rejected(engine, "prober", Duration::from_secs(10));
    let reason = prober.reason.unwrap_or_default();
    assert!(reason.contains("revoked"), "{reason}");
    assert_eq!(prober.supervision.starts, 1, "never started again");
}

/// A reload to a bundle nobody vouches for (development mode) says so at the new
/// version's start, as a start does: the notice follows the new version's trust.
#[test]
fn a_reload_to_an_unverified_bundle_says_so() {
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.allow_unsigned = true;
    });
    let engine = &fixture.engine;
    start(engine, "hello");
    assert!(!plugin(engine, "hello").trust.unverified);
    change_after_signing(&fixture.plugins.join("hello"));
    engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .expect("development mode reloads it");
    let reloaded = plugin(engine, "hello");
    assert!(reloaded.trust.unverified);
    assert!(engine.recent_events().iter().any(|event| matches!(
        &event.kind,
        EventKind::Engine { message, .. }
            if message.contains("UNVERIFIED") && message.contains("does not match")
    )));
}

/// Polls the snapshot until `ready` holds for plugin `name` (or fails after `within`).
fn wait_until(
    engine: &plugboard_engine::Engine,
    name: &str,
    within: Duration,
    ready: impl Fn(&plugboard_engine::PluginSnapshot) -> bool,
) -> plugboard_engine::PluginSnapshot {
    let deadline = Instant::now() + within;
    loop {
        let snapshot = engine.snapshot();
        if let Some(found) = snapshot
            .plugins
            .into_iter()
            .find(|plugin| plugin.name == name)
        {
            if ready(&found) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never got there: {found:#?}"
            );
        } else {
            assert!(Instant::now() < deadline, "{name} never appeared");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An engine over hello whose watcher settles a change within 100 ms.
fn watched_hello() -> crate::runtime::Fixture {
    engine_configured(&[("hello", "hello", same)], |config| {
        config.watch.debounce_ms = 100;
    })
}

#[test]
fn the_watcher_marks_changed_and_removed_bundles_and_discovers_new_ones() {
    let fixture = watched_hello();
    let engine = &fixture.engine;
    start(engine, "hello");
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "hello",
        "hello",
        version_2,
    );
    let changed = wait_until(engine, "hello", Duration::from_secs(5), |hello| {
        hello.changed_on_disk
    });
    assert_eq!(
        changed.state,
        PluginState::Running,
        "a change alone does not reload"
    );
    assert_eq!(changed.version.as_deref(), Some("0.1.0"));

    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "counter",
        "counter",
        same,
    );
    let counter = wait_until(engine, "counter", Duration::from_secs(5), |_| true);
    assert_eq!(counter.state, PluginState::Discovered);

    std::fs::remove_dir_all(fixture.plugins.join("counter")).unwrap();
    wait_until(engine, "counter", Duration::from_secs(5), |counter| {
        counter.removed_from_disk
    });

    // A reload takes the new version and clears the mark.
    engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .unwrap();
    let reloaded = plugin(engine, "hello");
    assert!(!reloaded.changed_on_disk);
    assert_eq!(reloaded.version.as_deref(), Some("0.2.0"));
}

/// A deploy that replaces `hello/` with `hello-0.2/`: the plugin follows its bundle to the
/// new directory (changed on disk; a reload takes the new version) instead of the new
/// bundle being refused as a duplicate of a plugin whose bundle is gone.
#[test]
fn a_bundle_moved_to_another_directory_is_followed_by_its_plugin() {
    let fixture = watched_hello();
    let engine = &fixture.engine;
    start(engine, "hello");
    std::fs::remove_dir_all(fixture.plugins.join("hello")).unwrap();
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "hello",
        "hello-0.2",
        version_2,
    );
    let new_dir = fixture.plugins.join("hello-0.2").display().to_string();
    let moved = wait_until(engine, "hello", Duration::from_secs(5), |hello| {
        hello.dir == new_dir && hello.changed_on_disk && !hello.removed_from_disk
    });
    assert_eq!(
        (moved.state, moved.version.as_deref()),
        (PluginState::Running, Some("0.1.0")),
        "a move alone does not reload"
    );
    assert_eq!(engine.snapshot().plugins.len(), 1, "no duplicate entry");
    assert!(engine.recent_events().iter().any(|event| matches!(
        &event.kind,
        EventKind::BundleMoved { to, .. } if *to == new_dir
    )));

    engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .unwrap();
    let reloaded = plugin(engine, "hello");
    assert_eq!(reloaded.version.as_deref(), Some("0.2.0"));
    assert!(!reloaded.changed_on_disk);
}

/// A second bundle naming a plugin is refused as a duplicate while the first holds the
/// name; removed, it is forgotten; still there when the first one's bundle is removed, it
/// provides the plugin from then on.
#[test]
fn a_duplicate_is_forgotten_when_removed_and_takes_over_when_the_holder_is_removed() {
    let fixture = watched_hello();
    let engine = &fixture.engine;
    start(engine, "hello");
    let copy = |bundle: &str| {
        add_bundle(
            &fixture.plugins,
            &fixture.signer,
            "hello",
            bundle,
            version_2,
        );
        let key = fixture.plugins.join(bundle).display().to_string();
        let duplicate = wait_until(engine, &key, Duration::from_secs(5), |_| true);
        assert_eq!(duplicate.state, PluginState::Rejected);
        assert!(
            duplicate
                .reason
                .as_deref()
                .is_some_and(|reason| reason.contains("duplicate plugin name `hello`")),
            "{:?}",
            duplicate.reason
        );
        key
    };
    let gone = |key: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while engine.snapshot().plugins.iter().any(|p| p.name == key) {
            assert!(Instant::now() < deadline, "{key} is still listed");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let first_copy = copy("hello-copy");
    std::fs::remove_dir_all(fixture.plugins.join("hello-copy")).unwrap();
    gone(&first_copy);
    let hello = plugin(engine, "hello");
    assert!(
        !hello.removed_from_disk && !hello.changed_on_disk,
        "{hello:?}"
    );

    // Two duplicates: the first by path takes over, the other then names it as the holder.
    let second_copy = copy("hello-next");
    let third_copy = copy("hello-spare");
    std::fs::remove_dir_all(fixture.plugins.join("hello")).unwrap();
    gone(&second_copy);
    let hello = wait_until(engine, "hello", Duration::from_secs(5), |hello| {
        hello.dir == second_copy && hello.changed_on_disk && !hello.removed_from_disk
    });
    assert_eq!(hello.state, PluginState::Running);
    // Renamed just after the move (the snapshot may come between).
    wait_until(engine, &third_copy, Duration::from_secs(5), |spare| {
        spare
            .reason
            .as_deref()
            .is_some_and(|reason| reason.contains(&format!("{second_copy} already provides it")))
    });
    engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .unwrap();
    assert_eq!(plugin(engine, "hello").version.as_deref(), Some("0.2.0"));
    assert_eq!(engine.snapshot().plugins.len(), 2);
}

/// `mv hello hello-old` (a backup), then a new version copied into `hello/`, library first
/// and manifest last, the copy outlasting the quiet window: the plugin ends up provided by
/// `hello/`, as discovery at the next start would have it, and the backup is a duplicate.
#[test]
fn a_new_bundle_in_the_directory_of_the_plugins_name_wins_over_a_backup_moved_aside() {
    let fixture = watched_hello();
    let engine = &fixture.engine;
    start(engine, "hello");
    let staging = fixture.temp.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    add_bundle(&staging, &fixture.signer, "hello", "hello", version_2);
    let (hello, backup) = (
        fixture.plugins.join("hello"),
        fixture.plugins.join("hello-old"),
    );
    std::fs::rename(&hello, &backup).unwrap();
    std::fs::create_dir(&hello).unwrap();
    std::fs::copy(staging.join("hello/libhello.so"), hello.join("libhello.so")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    for entry in std::fs::read_dir(staging.join("hello")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), hello.join(entry.file_name())).unwrap();
    }
    let hello_dir = hello.display().to_string();
    wait_until(engine, "hello", Duration::from_secs(5), |plugin| {
        plugin.dir == hello_dir && plugin.changed_on_disk
    });
    let backup_key = backup.display().to_string();
    let duplicate = wait_until(engine, &backup_key, Duration::from_secs(5), |_| true);
    assert_eq!(duplicate.state, PluginState::Rejected);
    engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .unwrap();
    assert_eq!(plugin(engine, "hello").version.as_deref(), Some("0.2.0"));
}

/// A plugin's manifest briefly missing (rewritten as unlink + write) while another bundle
/// naming it settles: the watcher never saw the plugin's bundle removed, so the plugin stays
/// where it is and the other bundle is a duplicate.
#[test]
fn a_manifest_missing_for_a_moment_does_not_move_the_plugin() {
    let fixture = watched_hello();
    let engine = &fixture.engine;
    start(engine, "hello");
    let hello = fixture.plugins.join("hello");
    let manifest = std::fs::read(hello.join("plugin.toml")).unwrap();
    std::fs::remove_file(hello.join("plugin.toml")).unwrap();
    add_bundle(&fixture.plugins, &fixture.signer, "hello", "hello-2", same);
    // Keeps hello/ unsettled past hello-2's quiet window.
    for i in 0..8 {
        std::fs::write(hello.join("notes.txt"), format!("{i}")).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(hello.join("plugin.toml"), &manifest).unwrap();
    let other = fixture.plugins.join("hello-2").display().to_string();
    let duplicate = wait_until(engine, &other, Duration::from_secs(5), |_| true);
    assert_eq!(duplicate.state, PluginState::Rejected);
    std::thread::sleep(Duration::from_millis(500));
    let hello_now = plugin(engine, "hello");
    assert_eq!(hello_now.dir, hello.display().to_string());
    assert!(!hello_now.removed_from_disk, "{hello_now:?}");
}

/// The plugin's actor is busy (a reload waiting for a slow health check) when its bundle
/// is removed and a bundle naming it appears elsewhere: the events, handled late, name the
/// directory each was about — the removed one removed, then the move.
#[test]
fn disk_events_handled_late_name_the_directories_they_were_about() {
    let slow_health = |manifest: &str| {
        failing_health(manifest, 2500) + "\n[health]\ninterval_ms = 60000\ntimeout_ms = 3000\n"
    };
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.watch.debounce_ms = 100;
    });
    let engine = Arc::new(fixture.engine);
    start(&engine, "prober");
    let prober = fixture.plugins.join("prober");
    std::fs::remove_dir_all(&prober).unwrap();
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "prober",
        "prober",
        slow_health,
    );
    wait_until(&engine, "prober", Duration::from_secs(5), |plugin| {
        plugin.changed_on_disk && !plugin.removed_from_disk
    });
    let reloading = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            engine.execute(Command::Reload {
                plugin: "prober".into(),
            })
        })
    };
    wait_until(&engine, "prober", Duration::from_secs(5), |plugin| {
        plugin.state == PluginState::Reloading
    });
    std::fs::remove_dir_all(&prober).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "prober",
        "prober-2",
        same,
    );
    let _ = reloading.join().unwrap();
    let (old_dir, new_dir) = (
        prober.display().to_string(),
        fixture.plugins.join("prober-2").display().to_string(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let disk_events = loop {
        let events: Vec<EventKind> = engine
            .recent_events()
            .into_iter()
            .map(|event| event.kind)
            .filter(|kind| {
                matches!(
                    kind,
                    EventKind::BundleRemoved { .. } | EventKind::BundleMoved { .. }
                )
            })
            .collect();
        if events
            .iter()
            .any(|kind| matches!(kind, EventKind::BundleMoved { .. }))
        {
            break events;
        }
        assert!(Instant::now() < deadline, "no move: {events:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        disk_events,
        [
            EventKind::BundleRemoved {
                dir: old_dir.clone()
            },
            EventKind::BundleMoved {
                from: old_dir,
                to: new_dir
            },
        ]
    );
}

/// A refused duplicate takes no command: it stays Rejected with its reason.
#[test]
fn a_duplicate_refuses_reload_stop_and_unload_and_stays_rejected() {
    let fixture = watched_hello();
    let engine = &fixture.engine;
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "hello",
        "hello-copy",
        version_2,
    );
    let key = fixture.plugins.join("hello-copy").display().to_string();
    wait_until(engine, &key, Duration::from_secs(5), |_| true);
    let commands = [
        Command::Reload {
            plugin: key.clone(),
        },
        Command::Stop {
            plugin: key.clone(),
            force: false,
        },
        Command::Unload {
            plugin: key.clone(),
            force: false,
        },
        Command::Disable {
            plugin: key.clone(),
            force: false,
        },
        Command::DisableHook {
            plugin: key.clone(),
            hook: "greet".into(),
        },
    ];
    for command in commands {
        let err = engine.execute(command).unwrap_err();
        assert!(
            matches!(&err, EngineError::Refused { reason, .. } if reason.contains("duplicate plugin name `hello`")),
            "{err}"
        );
        let duplicate = plugin(engine, &key);
        assert_eq!(duplicate.state, PluginState::Rejected, "after {err}");
    }
}

/// A plugin directory given relative to the working directory is watched all the same
/// (the watcher's events carry absolute paths).
#[test]
fn a_relative_plugin_directory_is_watched() {
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.watch.debounce_ms = 100;
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let relative =
            std::path::PathBuf::from(up).join(config.plugin_dirs[0].strip_prefix("/").unwrap());
        assert!(relative.is_relative() && relative.is_dir());
        config.plugin_dirs = vec![relative];
    });
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "counter",
        "counter",
        same,
    );
    let counter = wait_until(&fixture.engine, "counter", Duration::from_secs(5), |_| true);
    assert_eq!(counter.state, PluginState::Discovered);
}

#[test]
fn with_reload_on_change_a_changed_bundle_is_reloaded_by_itself() {
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.watch.debounce_ms = 100;
        config.watch.reload_on_change = true;
    });
    let engine = &fixture.engine;
    start(engine, "hello");
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "hello",
        "hello",
        version_2,
    );
    // Writing a bundle is several files: a reload may see a half-written one and fail (the
    // old version serves on); the next change reloads again. It settles on the new one.
    wait_until(engine, "hello", Duration::from_secs(8), |hello| {
        hello.version.as_deref() == Some("0.2.0")
            && hello.state == PluginState::Running
            && !hello.changed_on_disk
    });
    assert_eq!(call(engine, "hello", "greet", "x").status, "ok");
}

fn quick_health(manifest: &str) -> String {
    format!(
        "{manifest}\n[health]\ninterval_ms = 100\ntimeout_ms = 80\nfailures_before_unhealthy = 2\n"
    )
}

#[test]
fn health_checks_move_a_plugin_through_degraded_and_unhealthy_and_back() {
    use plugboard_engine::snapshot::Health;
    // Logged only, to watch the states (the default policy restarts; tested below).
    let fixture = engine_configured(&[("prober", "prober", quick_health)], |config| {
        config.policy.rules.insert(
            plugboard_engine::policy::ViolationKind::HealthFailed,
            plugboard_engine::policy::Rule::default(),
        );
    });
    let engine = &fixture.engine;
    assert_eq!(plugin(engine, "prober").health, Health::Unknown);
    start(engine, "prober");
    wait_until(engine, "prober", Duration::from_secs(3), |prober| {
        prober.health == Health::Healthy
    });
    assert_eq!(call(engine, "prober", "unhealthy", "").status, "ok");
    let changes: Vec<(Health, Health)> = (0..2)
        .map(|_| {
            let event = wait_for(&fixture.events, Duration::from_secs(3), |event| {
                matches!(event.kind, EventKind::HealthChanged { from, .. } if from != Health::Unknown)
            });
            match event.kind {
                EventKind::HealthChanged { from, to, detail, .. } => {
                    assert!(
                        detail.as_deref().unwrap_or_default().contains("told to fail"),
                        "{detail:?}"
                    );
                    (from, to)
                }
                _ => unreachable!(),
            }
        })
        .collect();
    assert_eq!(
        changes,
        [
            (Health::Healthy, Health::Degraded),
            (Health::Degraded, Health::Unhealthy)
        ]
    );
    let sick = wait_until(engine, "prober", Duration::from_secs(1), |prober| {
        prober.state == PluginState::Degraded
    });
    assert!(sick.health_failures >= 2);
    // Still serving while degraded; a passing check makes it Running again.
    assert_eq!(call(engine, "prober", "healthy", "").status, "ok");
    let well = wait_until(engine, "prober", Duration::from_secs(3), |prober| {
        prober.state == PluginState::Running
    });
    assert_eq!((well.health, well.health_failures), (Health::Healthy, 0));
    stop(engine, "prober", false).unwrap();
    assert_eq!(plugin(engine, "prober").health, Health::Unknown);
}

#[test]
fn by_default_an_unhealthy_plugin_is_restarted() {
    use plugboard_engine::policy::{Action, ViolationKind};
    use plugboard_engine::snapshot::Health;
    let fixture = engine_configured(&[("prober", "prober", quick_health)], |_| {});
    let engine = &fixture.engine;
    start(engine, "prober");
    let before = plugin(engine, "prober").worker_pid;
    call(engine, "prober", "unhealthy", "");
    wait_for(&fixture.events, Duration::from_secs(3), |event| {
        matches!(&event.kind, EventKind::Violation { violation }
            if violation.kind == ViolationKind::HealthFailed && violation.action == Action::Restart)
    });
    // The new worker starts with a fresh instance, which is healthy.
    let restarted = wait_until(engine, "prober", Duration::from_secs(3), |prober| {
        prober.worker_pid != before && prober.health == Health::Healthy
    });
    assert_eq!(restarted.state, PluginState::Running);
    assert_eq!(restarted.supervision.restarts, 1);
}

/// A plugin the policy restarts because it stays unhealthy goes through the backoff and
/// the restart budget as a crashing one does, and ends Failed when the budget is spent.
#[test]
fn a_plugin_that_never_gets_healthy_is_restarted_within_the_budget_then_fails() {
    let fixture = engine_configured(
        &[("prober", "prober", |manifest| {
            failing_health(&quick_health(manifest), 1)
        })],
        |config| config.restart = restart_policy(100, 2),
    );
    let engine = &fixture.engine;
    start(engine, "prober");
    let attempts = std::cell::RefCell::new(Vec::new());
    wait_for(&fixture.events, Duration::from_secs(10), |event| {
        if let EventKind::BackingOff { attempt, .. } = event.kind {
            attempts.borrow_mut().push(attempt);
        }
        matches!(event.kind, EventKind::RestartsExhausted { restarts: 2, .. })
    });
    let attempts = attempts.into_inner();
    assert_eq!(attempts, [1, 2]);
    let failed = wait_until(engine, "prober", Duration::from_secs(2), |prober| {
        prober.state == PluginState::Failed
    });
    assert_eq!(failed.supervision.restarts, 2);
    assert_eq!(failed.supervision.restart_budget_left, 0);
    assert!(failed.worker_pid.is_none());
    assert!(failed.supervision.next_retry_ms.is_none());
}

/// A restart refused before it begins (its dependency is down) still spends the budget,
/// and the spent budget ends in Failed, not in BackingOff with nothing scheduled.
#[test]
fn a_restart_refused_for_a_failed_dependency_ends_failed_when_the_budget_is_spent() {
    let fixture = engine_configured(
        &[
            ("prober", "prober", same),
            ("prober", "prober-b", |manifest| {
                format!(
                    "{}\n[dependencies]\nprober = \"^0.1\"\n",
                    manifest.replace("name = \"prober\"", "name = \"prober-b\"")
                )
            }),
        ],
        |config| config.restart = restart_policy(100, 1),
    );
    let engine = &fixture.engine;
    start(engine, "prober-b");
    // The dependency crashes twice: one restart, then Failed.
    for _ in 0..2 {
        let before = plugin(engine, "prober").worker_pid;
        assert_eq!(call(engine, "prober", "crash", "").status, "gone");
        wait_until(engine, "prober", Duration::from_secs(5), |prober| {
            prober.worker_pid != before
                && matches!(prober.state, PluginState::Running | PluginState::Failed)
        });
    }
    assert_eq!(plugin(engine, "prober").state, PluginState::Failed);
    assert_eq!(call(engine, "prober-b", "crash", "").status, "gone");
    let failed = wait_until(engine, "prober-b", Duration::from_secs(5), |prober| {
        prober.state == PluginState::Failed && prober.supervision.restart_budget_left == 0
    });
    assert!(failed.supervision.next_retry_ms.is_none());
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.contains("restart budget"), "{reason}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(plugin(engine, "prober-b").state, PluginState::Failed);
}

/// Reloading a plugin that waits to restart verifies its bundle again and cancels the
/// restart, saying so in its state changes.
#[test]
fn a_reload_while_backing_off_verifies_and_cancels_the_restart() {
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.restart = restart_policy(500, 2);
    });
    let engine = &fixture.engine;
    start(engine, "prober");
    assert_eq!(call(engine, "prober", "crash", "").status, "gone");
    wait_until(engine, "prober", Duration::from_secs(2), |prober| {
        prober.state == PluginState::BackingOff
    });
    engine
        .execute(Command::Reload {
            plugin: "prober".into(),
        })
        .unwrap();
    wait_for(&fixture.events, Duration::from_secs(1), |event| {
        matches!(
            event.kind,
            EventKind::StateChanged {
                from: PluginState::BackingOff,
                to: PluginState::Discovered,
            }
        )
    });
    let verified = plugin(engine, "prober");
    assert_eq!(verified.state, PluginState::Verified);
    assert!(verified.supervision.next_retry_ms.is_none());
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        plugin(engine, "prober").state,
        PluginState::Verified,
        "no restart after the reload"
    );
}

/// A dependent whose restart comes while its dependency is itself restarting (still
/// being created) waits for it instead of spending its restart budget on the refusal.
#[test]
fn a_restart_waits_for_a_dependency_that_is_still_starting() {
    let fixture = engine_configured(
        &[
            ("slowhook", "slowhook", |manifest| {
                manifest.replace(
                    "[config.create_ms]\ntype = \"integer\"\ndefault = 0",
                    "[config.create_ms]\ntype = \"integer\"\ndefault = 1000",
                )
            }),
            ("prober", "prober", |manifest| {
                format!("{manifest}\n[dependencies]\nslowhook = \"^0.1\"\n")
            }),
        ],
        |config| config.restart = restart_policy(100, 1),
    );
    let engine = &fixture.engine;
    start(engine, "prober");
    // The dependency's worker dies (killed here, by the pid of the worker this test's
    // engine started); its restart takes a second of `create`.
    let slowhook = plugin(engine, "slowhook");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(slowhook.worker_pid.unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(engine, "slowhook", Duration::from_secs(3), |slowhook| {
        slowhook.state == PluginState::Starting
    });
    // Meanwhile the dependent crashes; its restart, 100 ms later, finds slowhook starting.
    assert_eq!(call(engine, "prober", "crash", "").status, "gone");
    let restarted = wait_until(engine, "prober", Duration::from_secs(5), |prober| {
        prober.state == PluginState::Running && prober.supervision.restarts == 1
    });
    assert_eq!(restarted.supervision.restart_budget_left, 0);
    assert_eq!(plugin(engine, "slowhook").state, PluginState::Running);
}

/// A restarted worker does not show its predecessor's last resource sample (the memory
/// it died with) as its own before it is sampled itself.
#[test]
fn a_restarted_worker_shows_no_sample_of_the_one_before() {
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.restart = restart_policy(100, 1);
        config.sample_interval = Duration::from_secs(3);
    });
    let engine = &fixture.engine;
    start(engine, "prober");
    let sampled = wait_until(engine, "prober", Duration::from_secs(8), |prober| {
        prober.resources.is_some()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(sampled.worker_pid.unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = wait_until(engine, "prober", Duration::from_secs(3), |prober| {
        prober.state == PluginState::Running && prober.supervision.restarts == 1
    });
    let started_ms = restarted.supervision.last_start_ms.unwrap();
    assert!(
        restarted
            .resources
            .is_none_or(|sample| sample.at_ms >= started_ms),
        "a sample from before the restart at {started_ms}: {:?}",
        restarted.resources
    );
}

/// Hook timeouts of the old worker, handled by the actor only after a reload swapped it
/// out, are recorded but do not count against the new worker: the default policy (restart
/// at the third) would otherwise stop the fixed version for the old one's faults.
#[test]
fn violations_of_a_replaced_worker_do_not_hit_its_successor() {
    let fixture = engine_configured(&[("slowhook", "slowhook", same)], |config| {
        config.restart = restart_policy(100, 3);
    });
    let engine = &fixture.engine;
    start(engine, "slowhook");
    // The new version takes 1.5 s to create: the actor is busy with the reload meanwhile.
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "slowhook",
        "slowhook",
        |manifest| {
            manifest.replace(
                "[config.create_ms]\ntype = \"integer\"\ndefault = 0",
                "[config.create_ms]\ntype = \"integer\"\ndefault = 1500",
            )
        },
    );
    std::thread::scope(|scope| {
        let reload = scope.spawn(|| {
            engine.execute(Command::Reload {
                plugin: "slowhook".into(),
            })
        });
        wait_until(engine, "slowhook", Duration::from_secs(3), |slowhook| {
            slowhook.state == PluginState::Reloading
        });
        for _ in 0..3 {
            assert_eq!(call(engine, "slowhook", "chaos", "400").status, "timeout");
        }
        reload.join().unwrap().expect("the reload completes");
    });
    let reloaded = plugin(engine, "slowhook");
    let deadline = Instant::now() + Duration::from_secs(2);
    let replaced_violations = loop {
        let count = engine
            .recent_events()
            .iter()
            .filter(|event| {
                matches!(&event.kind, EventKind::Violation { violation }
                    if violation.facts.get("worker_replaced") == Some(&serde_json::json!(true)))
            })
            .count();
        if count == 3 || Instant::now() > deadline {
            break count;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(replaced_violations, 3, "each is recorded, marked");
    std::thread::sleep(Duration::from_millis(300));
    let now = plugin(engine, "slowhook");
    assert_eq!(now.state, PluginState::Running);
    assert_eq!(
        now.worker_pid, reloaded.worker_pid,
        "the new worker serves on"
    );
    assert_eq!(now.supervision.restarts, 0);
}

#[test]
fn a_quarantine_survives_an_engine_restart_until_an_operator_clears_it() {
    use plugboard_engine::supervisor::state_file::PersistedState;
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("state.json");
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.state_file = Some(state_file.clone());
    });
    start(&fixture.engine, "prober");
    let _ = call(&fixture.engine, "prober", "forge", "");
    wait_until(
        &fixture.engine,
        "prober",
        Duration::from_secs(3),
        |prober| prober.state == PluginState::Quarantined,
    );
    // Neither an unload nor a load and start lifts it.
    fixture
        .engine
        .execute(Command::Unload {
            plugin: "prober".into(),
            force: false,
        })
        .unwrap();
    assert_eq!(
        plugin(&fixture.engine, "prober").state,
        PluginState::Quarantined
    );
    let err = refused_start(&fixture.engine, "prober");
    assert!(
        err.to_string().contains("cleared from quarantine first"),
        "{err}"
    );
    let saved = PersistedState::load(&state_file).unwrap();
    let quarantine = saved.plugins["prober"]
        .quarantined
        .clone()
        .expect("persisted");
    assert!(
        quarantine.reason.contains("protocol_violation"),
        "{quarantine:?}"
    );

    // The next engine keeps it quarantined.
    let (plugins, store) = (fixture.plugins.clone(), fixture.signer.store_dir.clone());
    drop(fixture.engine);
    let restart = || {
        let mut config = plugboard_engine::EngineConfig::new(crate::worker::host_binary());
        config.plugin_dirs = vec![plugins.clone()];
        config.trust_store = Some(store.clone());
        config.state_file = Some(state_file.clone());
        plugboard_engine::Engine::start(config).unwrap()
    };
    let engine = restart();
    let prober = plugin(&engine, "prober");
    assert_eq!(prober.state, PluginState::Quarantined);
    assert!(prober.reason.unwrap_or_default().contains("quarantined"));
    let err = refused_start(&engine, "prober");
    assert!(
        err.to_string().contains("cleared from quarantine first"),
        "{err}"
    );
    engine
        .execute(Command::ClearQuarantine {
            plugin: "prober".into(),
        })
        .unwrap();
    start(&engine, "prober");
    assert!(
        PersistedState::load(&state_file)
            .unwrap()
            .plugins
            .get("prober")
            .is_none_or(|t| t.quarantined.is_none())
    );

    // Cleared from a shell while an engine runs: its next start goes through.
    let _ = call(&engine, "prober", "forge", "");
    wait_until(&engine, "prober", Duration::from_secs(3), |prober| {
        prober.state == PluginState::Quarantined
    });
    let mut state = PersistedState::load(&state_file).unwrap();
    state.plugins.get_mut("prober").unwrap().quarantined = None;
    state.save(&state_file).unwrap();
    start(&engine, "prober");
    assert_eq!(plugin(&engine, "prober").state, PluginState::Running);
}

/// A reload that would close a dependency cycle among running plugins is refused naming
/// it (a start refuses one; a reload changes a manifest under plugins already up), and the
/// old version serves on: stopping the plugin at the cycle's root still answers.
#[test]
fn a_reload_that_would_close_a_dependency_cycle_is_refused_naming_it() {
    let fixture = engine_configured(
        &[
            ("prober", "prober", same),
            ("counter", "counter", |manifest| {
                format!("{manifest}\n[dependencies]\nprober = \"^0.1\"\n")
            }),
            ("hello", "hello", |manifest| {
                format!("{manifest}\n[dependencies]\ncounter = \"^0.1\"\n")
            }),
        ],
        |_| {},
    );
    let engine = Arc::new(fixture.engine);
    start(&engine, "hello");
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "counter",
        "counter",
        |manifest| format!("{manifest}\n[dependencies]\nprober = \"^0.1\"\nhello = \"^0.1\"\n"),
    );
    let refused = engine
        .execute(Command::Reload {
            plugin: "counter".into(),
        })
        .expect_err("a reload into a cycle");
    let text = refused.to_string();
    assert!(
        text.contains("dependency cycle: counter → hello → counter"),
        "{text}"
    );
    assert_eq!(plugin(&engine, "counter").state, PluginState::Running);
    // The dependents walk ends: the stop is refused, naming them, at once.
    let (done, finished) = std::sync::mpsc::channel();
    {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            let _ = done.send(stop(&engine, "prober", false).map_err(|err| err.to_string()));
        });
    }
    let answer = finished
        .recv_timeout(Duration::from_secs(5))
        .expect("`stop prober` answers");
    let err = answer.expect_err("prober has running dependents");
    assert!(err.contains("counter") && err.contains("hello"), "{err}");
}

/// An operator's start of a plugin waiting to restart that the host refuses
/// (`max_plugins` reached) leaves its pending restart in place: it restarts once there is
/// room, instead of staying BackingOff with nothing scheduled.
#[test]
fn a_refused_start_while_backing_off_keeps_the_pending_restart() {
    let fixture = engine_configured(
        &[("prober", "prober", same), ("hello", "hello", same)],
        |config| {
            config.max_plugins = Some(1);
            config.restart = restart_policy(1500, 3);
        },
    );
    let engine = &fixture.engine;
    start(engine, "prober");
    assert_eq!(call(engine, "prober", "crash", "").status, "gone");
    wait_for(&fixture.events, Duration::from_secs(2), |event| {
        matches!(event.kind, EventKind::BackingOff { .. })
    });
    start(engine, "hello");
    let refused = engine.execute(Command::Start {
        plugin: "prober".into(),
    });
    assert!(refused.is_err(), "{refused:?}");
    let prober = plugin(engine, "prober");
    assert_eq!(prober.state, PluginState::BackingOff);
    assert!(prober.supervision.next_retry_ms.is_some(), "{prober:#?}");
    stop(engine, "hello", false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let prober = plugin(engine, "prober");
        if prober.state == PluginState::Running {
            assert_eq!(prober.supervision.restarts, 1, "{prober:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "never restarted: {prober:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plugin disabled while quarantined is still disabled after an engine restart: clearing
/// the quarantine leaves it Disabled, and it does not start.
#[test]
fn a_plugin_disabled_while_quarantined_stays_disabled_across_an_engine_restart() {
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("state.json");
    std::fs::write(
        &state_file,
        r#"{"version": 1, "plugins": {"hello": {"enabled": false, "quarantined": {"reason": "protocol violation", "at_ms": 1}}}}"#,
    )
    .unwrap();
    let file = state_file.clone();
    let fixture = engine_configured(&[("hello", "hello", same)], move |config| {
        config.state_file = Some(file);
    });
    let engine = &fixture.engine;
    let hello = plugin(engine, "hello");
    assert_eq!(
        (hello.state, hello.enabled),
        (PluginState::Quarantined, false)
    );
    engine
        .execute(Command::ClearQuarantine {
            plugin: "hello".into(),
        })
        .unwrap();
    assert_eq!(plugin(engine, "hello").state, PluginState::Disabled);
    let started = engine.execute(Command::Start {
        plugin: "hello".into(),
    });
    assert!(started.is_err(), "{started:?}");
}

/// A configured single bundle gone from disk does not keep discovery from registering a
/// new bundle in a plugin directory; the missing one is still named in the error.
#[test]
fn a_removed_single_bundle_does_not_stop_discovery_of_new_bundles() {
    let temp = tempfile::tempdir().unwrap();
    let signer = crate::support::Signer::new(temp.path());
    let plugins = temp.path().join("plugins");
    let single = temp.path().join("single");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::create_dir_all(&single).unwrap();
    add_bundle(&single, &signer, "hello", "hello", same);
    let mut config = plugboard_engine::EngineConfig::new(crate::worker::host_binary());
    config.plugin_dirs = vec![plugins.clone()];
    config.bundles = vec![single.join("hello")];
    config.trust_store = Some(signer.store_dir.clone());
    config.watch.enabled = false;
    let engine = plugboard_engine::Engine::start(config).expect("engine starts");
    std::fs::remove_dir_all(single.join("hello")).unwrap();
    add_bundle(&plugins, &signer, "counter", "counter", same);
    let discovered = engine.execute(Command::Discover);
    let err = discovered
        .expect_err("the single bundle is gone")
        .to_string();
    assert!(
        err.contains("single/hello") && err.contains("no plugin.toml"),
        "{err}"
    );
    assert!(engine.plugins().iter().any(|name| name == "counter"));
}

/// A deploy that copies a bundle to a hidden directory and renames it into place: the
/// temporary copy is never taken for a plugin, so the bundle in the directory of its name
/// gets the name and starts.
#[test]
fn a_bundle_in_a_hidden_directory_is_not_discovered() {
    let fixture = engine_configured(&[("counter", "counter", same)], |_| {});
    let engine = &fixture.engine;
    add_bundle(
        &fixture.plugins,
        &fixture.signer,
        "hello",
        ".hello.tmp",
        same,
    );
    engine.execute(Command::Discover).expect("discovers");
    assert!(!engine.plugins().iter().any(|name| name.contains("hello")));
    std::fs::rename(
        fixture.plugins.join(".hello.tmp"),
        fixture.plugins.join("hello"),
    )
    .unwrap();
    engine.execute(Command::Discover).expect("discovers");
    start(engine, "hello");
    assert_eq!(plugin(engine, "hello").state, PluginState::Running);
}

/// A load refused says so (not "could not start"), and the rejected plugin shows nothing
/// an earlier load verified: no version, no capabilities, no limits.
#[test]
fn a_refused_load_is_said_as_a_load_and_shows_nothing_verified_before() {
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = &fixture.engine;
    engine
        .execute(Command::Load {
            plugin: "hello".into(),
        })
        .unwrap();
    let verified = plugin(engine, "hello");
    assert_eq!(verified.version.as_deref(), Some("0.1.0"));
    assert!(verified.trust.key_id.is_some() && verified.trust.library_sha3_512.is_some());
    engine
        .execute(Command::Unload {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap();
    let manifest = fixture.plugins.join("hello/plugin.toml");
    let edited = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("version = \"0.1.0\"", "version = \"0.2.0\"");
    std::fs::write(&manifest, edited).unwrap();
    let err = engine
        .execute(Command::Load {
            plugin: "hello".into(),
        })
        .unwrap_err();
    assert!(
        matches!(err, EngineError::LoadFailed { .. })
            && err.to_string().contains("`hello` could not be loaded"),
        "{err}"
    );
    let hello = plugin(engine, "hello");
    assert_eq!(hello.state, PluginState::Rejected);
    assert_eq!(hello.version, None);
    assert!(hello.capabilities.is_none() && hello.limits.is_none());
    assert_eq!(
        hello.trust,
        plugboard_engine::snapshot::TrustInfo::default(),
        "no signer or digest of the bundle verified before"
    );
}

/// A call a reload overtakes finishes on the old worker, and an emit it makes then is
/// still admitted (under the old version's own grants): the reload is not seen by it.
#[test]
fn an_emit_from_a_call_a_reload_overtook_is_admitted() {
    let fixture = engine_configured(&[("prober", "prober", same)], |config| {
        config.grace = Duration::from_secs(5);
    });
    let engine = Arc::new(fixture.engine);
    start(&engine, "prober");
    let before = plugin(&engine, "prober").worker_pid;
    let calling = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || call(&engine, "prober", "emit_later", "600"))
    };
    std::thread::sleep(Duration::from_millis(150));
    engine
        .execute(Command::Reload {
            plugin: "prober".into(),
        })
        .unwrap();
    assert_ne!(plugin(&engine, "prober").worker_pid, before);
    let report = calling.join().unwrap();
    assert_eq!(
        (report.status.as_str(), report.reply.as_str()),
        ("ok", "ok: emitted prober.allowed"),
        "{report:?}"
    );
}

/// Under a policy that quarantines trust failures, a reload to a tampered bundle
/// quarantines the plugin, and the failed reload says so (not that the old version serves
/// on).
#[test]
fn a_reload_refused_for_trust_under_a_quarantine_policy_says_the_plugin_was_quarantined() {
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.policy.rules.insert(
            plugboard_engine::policy::ViolationKind::TrustFailure,
            plugboard_engine::policy::Rule {
                action: plugboard_engine::policy::Action::Quarantine,
                ..plugboard_engine::policy::Rule::default()
            },
        );
    });
    let engine = &fixture.engine;
    start(engine, "hello");
    tamper_library(&fixture.plugins.join("hello/libhello.so"));
    let err = engine
        .execute(Command::Reload {
            plugin: "hello".into(),
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("was quarantined by the host's policy: its reload was refused"),
        "{err}"
    );
    assert!(!err.contains("keeps serving"), "{err}");
    let hello = plugin(engine, "hello");
    assert_eq!(hello.state, PluginState::Quarantined);
    assert_eq!(hello.worker_pid, None);
}

/// Flips a bit of a signed bundle's library: the signature no longer matches it.
fn tamper_library(library: &std::path::Path) {
    let mut bytes = std::fs::read(library).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(library, bytes).unwrap();
}

/// The final snapshot after a shutdown still shows what broke: a crashed plugin stays
/// Failed (not acknowledged as Stopped), one waiting for its restart ends Failed saying
/// the restart will not come, and a running one is stopped.
#[test]
fn a_shutdown_keeps_failed_plugins_failed_for_the_final_snapshot() {
    let fixture = engine_configured(
        &[("prober", "prober", same), ("hello", "hello", same)],
        |config| {
            config.restart.initial_delay_ms = 60_000;
            config.restart.max_delay_ms = 60_000;
        },
    );
    let engine = &fixture.engine;
    start(engine, "prober");
    start(engine, "hello");
    assert_eq!(call(engine, "prober", "crash", "").status, "gone");
    wait_until(engine, "prober", Duration::from_secs(3), |prober| {
        prober.state == PluginState::BackingOff
    });
    engine.shutdown();
    let prober = plugin(engine, "prober");
    assert_eq!(prober.state, PluginState::Failed);
    let reason = prober.reason.unwrap_or_default();
    assert!(
        reason.contains("the engine shut down before its restart"),
        "{reason}"
    );
    assert!(
        prober.supervision.next_retry_ms.is_none(),
        "{:?}",
        prober.supervision
    );
    assert_eq!(plugin(engine, "hello").state, PluginState::Stopped);
}

/// A state file that cannot be written (here its directory is a file; on a host, a full
/// disk) loses nothing: the change holds in the engine, the command says it is not on
/// disk yet, and it is written as soon as the file can be — so it survives a restart.
#[test]
fn a_toggle_the_state_file_cannot_take_yet_holds_and_is_written_once_it_can_be() {
    let state_dir = tempfile::tempdir().unwrap();
    let blocked = state_dir.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    let state_file = blocked.join("state.json");
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        config.state_file = Some(state_file.clone());
    });
    let engine = &fixture.engine;
    // Once the engine runs, its state file's directory becomes a file.
    std::fs::rename(&blocked, state_dir.path().join("set-aside")).unwrap();
    std::fs::write(&blocked, "not a directory").unwrap();
    let err = engine
        .execute(Command::Disable {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is written to the state file as soon as it can be"),
        "{err}"
    );
    assert_eq!(plugin(engine, "hello").state, PluginState::Disabled);
    // Read over the file, which says nothing of it yet.
    let refused = refused_start(engine, "hello");
    assert!(refused.to_string().contains("enabled first"), "{refused}");

    std::fs::remove_file(&blocked).unwrap();
    std::fs::create_dir(&blocked).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !state_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let saved = std::fs::read_to_string(&state_file).expect("written once it can be");
    assert!(saved.contains("hello"), "{saved}");
    wait_for(
        &fixture.events,
        Duration::from_secs(2),
        |event| matches!(&event.kind, EventKind::Engine { message, .. } if message.contains("is written again")),
    );
}

/// Disabling an unloaded plugin shows it disabled at once (it stayed `unloaded` until the
/// next start was refused); enabled again, it is discovered and starts.
#[test]
fn an_unloaded_plugin_disabled_shows_as_disabled_and_starts_once_enabled() {
    let fixture = engine_configured(&[("hello", "hello", same)], |_| {});
    let engine = &fixture.engine;
    start(engine, "hello");
    engine
        .execute(Command::Unload {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap();
    assert_eq!(plugin(engine, "hello").state, PluginState::Unloaded);
    engine
        .execute(Command::Disable {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap();
    assert_eq!(plugin(engine, "hello").state, PluginState::Disabled);
    engine
        .execute(Command::Enable {
            plugin: "hello".into(),
        })
        .unwrap();
    assert_eq!(plugin(engine, "hello").state, PluginState::Discovered);
    start(engine, "hello");
    assert_eq!(plugin(engine, "hello").state, PluginState::Running);
}

/// A `trust.toml` that is a link to a file kept elsewhere, rewritten there with a
/// revocation, is seen as the store reads it: the plugin the revoked key signed is stopped.
#[test]
fn a_revocation_written_through_a_linked_trust_toml_stops_what_it_covers() {
    let linked = std::sync::Mutex::new(None);
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        let store = config.trust_store.clone().expect("a store");
        let kept = store.parent().unwrap().join("kept-elsewhere");
        std::fs::create_dir_all(&kept).unwrap();
        let outside = kept.join("trust.toml");
        std::fs::write(&outside, "").unwrap();
        std::os::unix::fs::symlink(&outside, store.join("trust.toml")).unwrap();
        *linked.lock().unwrap() = Some(outside);
    });
    let engine = &fixture.engine;
    start(engine, "hello");
    let outside = linked.lock().unwrap().take().unwrap();
    let key_id = fixture.signer.key.public_key().key_id();
    // Replaced whole: the link is untouched.
    replace_whole(&outside, format!("[revoked]\nkeys = [\"{key_id}\"]\n"));
    let hello = once_rejected(engine, "hello", Duration::from_secs(5));
    let reason = hello.reason.unwrap_or_default();
    assert!(reason.contains("revoked"), "{reason}");
}

/// A trust list kept outside the store (where `trust.toml` says) is looked at too: the
/// list rewritten without the running plugin's bundle stops it.
#[test]
fn a_trust_list_kept_outside_the_store_rewritten_without_the_bundle_stops_it() {
    use plugboard_engine::bundle::Bundle;
    use plugboard_engine::manifest::HostLimits;
    use plugboard_engine::trust::{TrustList, generate_trust_list_key, seal_trust_list};
    let sealed_list = std::sync::Mutex::new(None);
    let fixture = engine_configured(&[("hello", "hello", same)], |config| {
        let store = config.trust_store.clone().expect("a store");
        let kept = store.parent().unwrap().join("kept-elsewhere");
        std::fs::create_dir_all(&kept).unwrap();
        let key_file = kept.join("list.key");
        let key = generate_trust_list_key(&key_file).unwrap();
        let bundle =
            Bundle::open(&config.plugin_dirs[0].join("hello"), &HostLimits::default()).unwrap();
        let mut list = TrustList::new();
        list.allow(
            "hello",
            &bundle.manifest().plugin.version.to_string(),
            bundle.digests().bundle_digest(),
        );
        let list_file = kept.join("list.sealed");
        std::fs::write(&list_file, seal_trust_list(&key, &list)).unwrap();
        std::fs::write(
            store.join("trust.toml"),
            format!(
                "[trust_list]\nfile = {:?}\nkey_file = {:?}\n",
                list_file.display().to_string(),
                key_file.display().to_string()
            ),
        )
        .unwrap();
        *sealed_list.lock().unwrap() = Some((list_file, key));
    });
    let engine = &fixture.engine;
    start(engine, "hello");
    let (list_file, key) = sealed_list.lock().unwrap().take().unwrap();
    replace_whole(&list_file, seal_trust_list(&key, &TrustList::new()));
    let hello = once_rejected(engine, "hello", Duration::from_secs(5));
    let reason = hello.reason.unwrap_or_default();
    assert!(reason.contains("trust list"), "{reason}");
}

/// What the state file could not take is written a last time at shutdown (here no sample
/// comes to do it first); what still cannot be written then is said to be lost.
#[test]
fn a_kept_toggle_is_written_at_shutdown_or_said_lost() {
    for writable_again in [true, false] {
        let state_dir = tempfile::tempdir().unwrap();
        let blocked = state_dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        let state_file = blocked.join("state.json");
        let fixture = engine_configured(&[("hello", "hello", same)], |config| {
            config.state_file = Some(state_file.clone());
            config.sample_interval = Duration::from_secs(3600);
        });
        let engine = &fixture.engine;
        std::fs::rename(&blocked, state_dir.path().join("set-aside")).unwrap();
        std::fs::write(&blocked, "not a directory").unwrap();
        assert!(
            engine
                .execute(Command::Disable {
                    plugin: "hello".into(),
                    force: false,
                })
                .is_err()
        );
        if writable_again {
            std::fs::remove_file(&blocked).unwrap();
            std::fs::create_dir(&blocked).unwrap();
        }
        engine.shutdown();
        if writable_again {
            let saved = std::fs::read_to_string(&state_file).expect("written at shutdown");
            assert!(saved.contains("hello"), "{saved}");
        } else {
            assert!(
                engine.recent_events().iter().any(|event| matches!(
                    &event.kind,
                    EventKind::Engine { message, .. } if message.contains("is lost with this engine")
                )),
                "the loss is said"
            );
        }
    }
}
