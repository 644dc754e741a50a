//! In-process mode through the engine: the same commands and statistics, no sandbox.

use std::time::Duration;

use plugboard_engine::trust::{TrustLevel, TrustStore};
use plugboard_engine::{Command, EngineConfig, EngineError, HookCallError, PluginState};

use crate::runtime::{call, engine_configured, plugin, start};

fn in_process(manifest: &str) -> String {
    format!("{manifest}\n[isolation]\nmode = \"in-process\"\n")
}

/// Raises the test signer (pinned by the fixture) to level `in-process`.
fn trust_in_process(config: &mut EngineConfig) {
    let store = config.trust_store.clone().unwrap();
    let public = store.parent().unwrap().join("keys/test.pub");
    TrustStore::add_key(&store, &public, TrustLevel::InProcess).unwrap();
}

#[test]
fn an_in_process_plugin_answers_calls_with_statistics_and_no_sandbox() {
    let fixture = engine_configured(
        &[
            ("hello", "hello", in_process),
            ("panicky", "panicky", in_process),
        ],
        |config| {
            trust_in_process(config);
            // The panic hook may print a symbolized backtrace first, which takes a while.
            config.plugins.insert(
                "panicky".into(),
                plugboard_engine::supervisor::PluginOverrides {
                    resources: plugboard_engine::manifest::Resources {
                        hook_timeout_ms: Some(20_000),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
        },
    );
    let engine = &fixture.engine;
    start(engine, "hello");
    start(engine, "panicky");
    let hello = plugin(engine, "hello");
    assert_eq!(hello.isolation, "in-process");
    // Nothing enforces a memory or CPU limit in the engine's own process.
    assert_eq!(hello.limits, None);
    assert!(
        hello.active_mechanisms.is_empty(),
        "{:?}",
        hello.active_mechanisms
    );
    assert!(hello.mechanisms.values().all(|state| !state.active));
    assert_eq!(hello.worker_pid, Some(std::process::id()));
    assert!(
        engine
            .recent_events()
            .iter()
            .any(|event| event.plugin.as_deref() == Some("hello")
                && matches!(
                    event.kind,
                    plugboard_engine::EventKind::Started {
                        in_process: true,
                        ..
                    }
                ))
    );
    assert_eq!(hello.trust.level.as_deref(), Some("in-process"));
    assert!(hello.cgroup.is_none());
    for _ in 0..10 {
        assert_eq!(
            call(engine, "hello", "greet", "inside").reply,
            "Hello, inside!"
        );
    }
    assert_eq!(plugin(engine, "hello").hooks["greet"].calls, 10);
    // A panic is an error reply; the engine lives on.
    let panicked = call(engine, "panicky", "panic", "");
    assert_eq!(panicked.status, "panic", "{panicked:?}");
    // Where it panicked is in the reply (the SDK keeps it off the engine's stderr).
    assert!(
        panicked
            .reply
            .starts_with("plugin panicked at plugins/panicky/src/lib.rs:"),
        "{panicked:?}"
    );
    assert_eq!(call(engine, "hello", "greet", "after").status, "ok");
    engine
        .execute(Command::Stop {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap();
    assert_eq!(plugin(engine, "hello").state, PluginState::Stopped);
    start(engine, "hello");
    assert_eq!(call(engine, "hello", "greet", "again").status, "ok");
    // Health checks run in-process too.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while plugin(engine, "hello").health != plugboard_engine::snapshot::Health::Healthy {
        assert!(std::time::Instant::now() < deadline, "never healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn in_process_is_refused_for_a_signer_trusted_only_for_the_sandbox() {
    let fixture = engine_configured(&[("hello", "hello", in_process)], |_| {});
    let engine = &fixture.engine;
    let err = engine
        .execute(Command::Start {
            plugin: "hello".into(),
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("in-process") && err.contains("trusted at level `sandboxed`"),
        "{err}"
    );
    assert_eq!(plugin(engine, "hello").state, PluginState::Rejected);
}

#[test]
fn a_hook_handle_calls_as_the_command_does_and_follows_stops_starts_and_toggles() {
    let fixture = engine_configured(&[("hello", "hello", in_process)], trust_in_process);
    let engine = &fixture.engine;
    // Made before the plugin runs: its first call finds it not running.
    let mut handle = engine.hook_handle("hello", "greet").unwrap();
    assert_eq!(
        handle.call(b"early"),
        Err(HookCallError::NotRunning {
            plugin: "hello".into()
        })
    );
    start(engine, "hello");
    // Once verified, the manifest says which hooks there are.
    let unknown = engine.hook_handle("hello", "nonexistent").unwrap_err();
    assert!(
        matches!(unknown, EngineError::UnknownHook { .. }),
        "{unknown}"
    );
    let reply = handle.call(b"handle").unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(reply.body, b"Hello, handle!");
    assert_eq!(call(engine, "hello", "greet", "command").status, "ok");
    let stats = &plugin(engine, "hello").hooks["greet"];
    // The refused early call is not counted: it never began.
    assert_eq!((stats.calls, stats.errors, stats.in_flight), (2, 0, 0));
    assert!(stats.last_call.is_some());
    assert!(!plugin(engine, "hello").hooks.contains_key("nonexistent"));

    let toggle = |enabled: bool| {
        let (plugin, hook) = ("hello".to_owned(), "greet".to_owned());
        engine
            .execute(if enabled {
                Command::EnableHook { plugin, hook }
            } else {
                Command::DisableHook { plugin, hook }
            })
            .unwrap();
    };
    toggle(false);
    assert!(matches!(
        handle.call(b"off"),
        Err(HookCallError::Disabled { .. })
    ));
    toggle(true);
    assert!(handle.call(b"on").unwrap().is_ok());

    engine
        .execute(Command::Stop {
            plugin: "hello".into(),
            force: false,
        })
        .unwrap();
    assert!(matches!(
        handle.call(b"stopped"),
        Err(HookCallError::NotRunning { .. })
    ));
    start(engine, "hello");
    let mut other_thread = handle.clone();
    let reply = std::thread::spawn(move || other_thread.call(b"again"))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(reply.body, b"Hello, again!");
    assert_eq!(plugin(engine, "hello").hooks["greet"].calls, 4);
}

#[test]
fn stopping_an_in_process_plugin_waits_for_the_call_running_in_it() {
    let fixture = engine_configured(&[("slowhook", "slowhook", in_process)], |config| {
        trust_in_process(config);
        config.grace = Duration::from_secs(10);
    });
    let engine = std::sync::Arc::new(fixture.engine);
    start(&engine, "slowhook");
    let caller = {
        let engine = std::sync::Arc::clone(&engine);
        // `chaos` with a payload of digits sleeps that many milliseconds.
        std::thread::spawn(move || call(&engine, "slowhook", "chaos", "600"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while plugin(&engine, "slowhook").hooks["chaos"].in_flight == 0 {
        assert!(std::time::Instant::now() < deadline, "the call never began");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stopping = std::time::Instant::now();
    engine
        .execute(Command::Stop {
            plugin: "slowhook".into(),
            force: false,
        })
        .unwrap();
    let waited = stopping.elapsed();
    let report = caller.join().unwrap();
    // In-process, nothing interrupts the call: it ends (late, so as a timeout), and only
    // then is the plugin stopped.
    assert_eq!(report.status, "timeout", "{report:?}");
    assert!(
        waited >= Duration::from_millis(300),
        "the stop returned after {waited:?}, while the call was still running"
    );
    let stopped = plugin(&engine, "slowhook");
    assert_eq!(stopped.state, PluginState::Stopped);
    assert_eq!(stopped.hooks["chaos"].in_flight, 0);
}

#[test]
fn a_hook_handle_call_past_its_timeout_is_a_timeout_counted_as_one() {
    let fixture = engine_configured(&[("slowhook", "slowhook", in_process)], trust_in_process);
    let engine = &fixture.engine;
    start(engine, "slowhook");
    let mut handle = engine.hook_handle("slowhook", "chaos").unwrap();
    // `chaos` sleeps the payload's milliseconds; its timeout is 200 ms.
    let late = handle.call(b"300");
    assert!(
        matches!(&late, Err(HookCallError::Timeout { timeout, .. }) if *timeout == Duration::from_millis(200)),
        "{late:?}"
    );
    assert_eq!(handle.call(b"1").unwrap().body, b"slept 1 ms");
    let stats = &plugin(engine, "slowhook").hooks["chaos"];
    assert_eq!((stats.calls, stats.timeouts, stats.in_flight), (2, 1, 0));
    // Recorded at what it took, as `Command::Call` records it: in process a call runs to
    // its end, so the statistics can say how late it was.
    assert!(
        stats.since_start.max_us >= 300_000,
        "max {} µs",
        stats.since_start.max_us
    );
}

/// A reload waits for the old instance's running call at most the grace period in all: the
/// drain and the stop share it (they used to wait one grace period each).
#[test]
fn a_reload_waits_for_a_stuck_call_once_not_twice() {
    const GRACE: Duration = Duration::from_millis(400);
    let fixture = engine_configured(&[("slowhook", "slowhook", in_process)], |config| {
        trust_in_process(config);
        config.grace = GRACE;
    });
    let engine = std::sync::Arc::new(fixture.engine);
    start(&engine, "slowhook");
    let caller = {
        let engine = std::sync::Arc::clone(&engine);
        // `chaos` with a payload of digits sleeps that many milliseconds.
        std::thread::spawn(move || call(&engine, "slowhook", "chaos", "3000"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while plugin(&engine, "slowhook").hooks["chaos"].in_flight == 0 {
        assert!(std::time::Instant::now() < deadline, "the call never began");
        std::thread::sleep(Duration::from_millis(5));
    }
    let reloading = std::time::Instant::now();
    engine
        .execute(Command::Reload {
            plugin: "slowhook".into(),
        })
        .unwrap();
    let waited = reloading.elapsed();
    assert!(
        waited >= GRACE,
        "the reload returned after {waited:?}, before the grace period was over"
    );
    assert!(
        waited < GRACE * 7 / 4,
        "the reload waited {waited:?} for a stuck call: more than one grace period ({GRACE:?})"
    );
    assert_eq!(plugin(&engine, "slowhook").state, PluginState::Running);
    assert_eq!(call(&engine, "slowhook", "ping", "").status, "ok");
    assert_eq!(caller.join().unwrap().status, "timeout");
}

/// A hook handle left idle keeps the stopped instance until its next call: a start (the
/// operator's, or a restart's) loads the plugin again all the same, as an image of its
/// own, and the handle's next call reaches the new instance.
#[test]
fn an_idle_hook_handle_holding_the_stopped_instance_does_not_keep_the_plugin_from_starting() {
    let fixture = engine_configured(&[("counter", "counter", in_process)], trust_in_process);
    let engine = &fixture.engine;
    start(engine, "counter");
    let mut handle = engine.hook_handle("counter", "count").unwrap();
    assert_eq!(handle.call(b"").unwrap().body, br#"{"count":1}"#);
    assert_eq!(handle.call(b"").unwrap().body, br#"{"count":2}"#);
    for round in 0..2 {
        engine
            .execute(Command::Stop {
                plugin: "counter".into(),
                force: false,
            })
            .unwrap();
        let started = engine.execute(Command::Start {
            plugin: "counter".into(),
        });
        assert!(started.is_ok(), "round {round}: {started:?}");
        assert_eq!(plugin(engine, "counter").state, PluginState::Running);
        // A fresh instance: its count starts again.
        assert_eq!(
            handle.call(b"").unwrap().body,
            br#"{"count":1}"#,
            "round {round}"
        );
    }
}

/// An emit while the plugin is being created finds no instance serving — on a first start
/// and, in process, during a reload too, where the old version serves meanwhile: the new
/// one's emit is not admitted under the old one's grants (as a sandboxed worker's is not).
#[test]
fn an_emit_while_created_is_refused_in_process_during_a_reload_too() {
    let emitting_on_create = |manifest: &str| {
        let manifest = manifest.replacen(
            "[config.emit_on_create]\ntype = \"string\"\ndefault = \"\"",
            "[config.emit_on_create]\ntype = \"string\"\ndefault = \"prober.allowed\"",
            1,
        );
        assert!(manifest.contains("default = \"prober.allowed\""));
        in_process(&manifest)
    };
    let fixture = engine_configured(
        &[("prober", "prober", emitting_on_create)],
        trust_in_process,
    );
    let engine = &fixture.engine;
    let lines = || -> Vec<String> {
        plugin(engine, "prober")
            .recent_output
            .iter()
            .filter(|line| line.line.starts_with("emit on create"))
            .map(|line| line.line.clone())
            .collect()
    };
    start(engine, "prober");
    engine
        .execute(Command::Reload {
            plugin: "prober".into(),
        })
        .unwrap();
    let seen = lines();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|line| line.contains("denied")), "{seen:?}");
    assert_eq!(plugin(engine, "prober").emitted, 0);
}
