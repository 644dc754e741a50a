//! In-process mode through the engine: the same commands and statistics, no sandbox.

use std::time::Duration;

use plugboard_engine::trust::{TrustLevel, TrustStore};
use plugboard_engine::{Command, EngineConfig, PluginState};

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
    assert!(
        hello.active_mechanisms.is_empty(),
        "{:?}",
        hello.active_mechanisms
    );
    assert!(hello.mechanisms.values().all(|state| !state.active));
    assert_eq!(hello.worker_pid, Some(std::process::id()));
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
