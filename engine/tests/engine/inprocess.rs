//! In-process mode with the real example plugins: calls, state, panics as error replies,
//! log lines to the sink, emits with their depth, and one load per sealed library.

use std::fs::File;
use std::sync::{Arc, Mutex};

use plugboard_engine::inprocess::{self, InProcessError, InProcessPlugin};
use plugboard_engine::loader::SealedLibrary;
use plugboard_engine::worker::{EmitHandler, EventSink, OutputStream, WorkerEvent};
use plugboard_sdk::abi;

use crate::support::built_plugin;

fn sealed(name: &str) -> SealedLibrary {
    let path = built_plugin(name);
    SealedLibrary::from_reader(name, File::open(&path).unwrap())
        .unwrap()
        .0
}

fn config(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match json {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// A sink that keeps every event.
fn recording_sink() -> (EventSink, Arc<Mutex<Vec<WorkerEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&events);
    let sink: EventSink = Arc::new(move |event| kept.lock().unwrap().push(event));
    (sink, events)
}

/// An emit as the handler saw it: hook, payload, depth.
type Emitted = (String, Vec<u8>, u32);

fn quiet_sink() -> EventSink {
    Arc::new(|_| {})
}

#[test]
fn hello_greets_with_its_configured_greeting_and_logs_to_the_sink() {
    let (sink, events) = recording_sink();
    let plugin = InProcessPlugin::start(
        "hello",
        &sealed("hello"),
        &config(serde_json::json!({ "greeting": "Hi" })),
        None,
        &sink,
    )
    .unwrap();
    assert_eq!(plugin.plugin(), "hello");
    assert_eq!(plugin.call("greet", b"Ada").unwrap(), b"Hi, Ada!");
    assert_eq!(plugin.call("greet", b"").unwrap(), b"Hi, world!");
    assert_eq!(plugin.health(), Ok(()));
    // `create` logged at info level; the line reached the sink as the worker's would.
    let events = events.lock().unwrap().clone();
    assert!(
        events.contains(&WorkerEvent::Output {
            stream: OutputStream::Log {
                level: abi::LOG_INFO
            },
            line: "hello ready, greeting with `Hi`".to_owned(),
        }),
        "{events:?}"
    );
    plugin.stop();
}

#[test]
fn counter_keeps_state_across_calls() {
    let plugin = InProcessPlugin::start(
        "counter",
        &sealed("counter"),
        &config(serde_json::json!({ "start": 10, "step": 5 })),
        None,
        &quiet_sink(),
    )
    .unwrap();
    assert_eq!(plugin.call("count", b"").unwrap(), br#"{"count":15}"#);
    assert_eq!(plugin.call("count", b"").unwrap(), br#"{"count":20}"#);
}

#[test]
fn a_panic_is_an_error_reply_and_the_plugin_keeps_answering() {
    let plugin = InProcessPlugin::start(
        "panicky",
        &sealed("panicky"),
        &serde_json::Map::new(),
        None,
        &quiet_sink(),
    )
    .unwrap();
    let err = plugin.call("panic", b"on purpose").unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert!(
        err.message.contains("panic number 1: on purpose"),
        "{err:?}"
    );
    assert_eq!(
        plugin.call("ok", b"").unwrap(),
        b"still alive after 1 panics"
    );
    // Its health check reports the panic it had.
    assert!(plugin.health().is_err());
}

#[test]
fn a_panic_in_create_refuses_the_start() {
    let err = InProcessPlugin::start(
        "panicky",
        &sealed("panicky"),
        &config(serde_json::json!({ "panic_in_create": true })),
        None,
        &quiet_sink(),
    )
    .unwrap_err();
    assert!(matches!(err, InProcessError::Create { .. }), "{err:?}");
    assert!(err.to_string().contains("panicky"), "{err}");
}

#[test]
fn an_unknown_hook_is_an_unknown_hook_error() {
    let plugin = InProcessPlugin::start(
        "hello",
        &sealed("hello"),
        &serde_json::Map::new(),
        None,
        &quiet_sink(),
    )
    .unwrap();
    let err = plugin.call("no-such-hook", b"").unwrap_err();
    assert!(err.is_unknown_hook(), "{err:?}");
}

#[test]
fn emits_reach_the_handler_with_the_depth_of_the_call() {
    let seen: Arc<Mutex<Vec<Emitted>>> = Arc::default();
    let kept = Arc::clone(&seen);
    let handler: EmitHandler = Arc::new(move |hook: &str, payload: &[u8], depth: u32| {
        kept.lock()
            .unwrap()
            .push((hook.to_owned(), payload.to_vec(), depth));
        abi::EMIT_OK
    });
    let plugin = InProcessPlugin::start(
        "counter",
        &sealed("counter"),
        &config(serde_json::json!({ "start": 3 })),
        Some(handler),
        &quiet_sink(),
    )
    .unwrap();
    assert_eq!(
        plugin.call("reset", b"").unwrap(),
        br#"{"count":3,"notified":true}"#
    );
    plugin.call_at_depth("reset", b"", 2).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("counter.reset".to_owned(), b"3".to_vec(), 0),
            ("counter.reset".to_owned(), b"3".to_vec(), 2),
        ]
    );
}

#[test]
fn without_a_handler_every_emit_is_denied() {
    let plugin = InProcessPlugin::start(
        "counter",
        &sealed("counter"),
        &serde_json::Map::new(),
        None,
        &quiet_sink(),
    )
    .unwrap();
    assert_eq!(
        plugin.call("reset", b"").unwrap(),
        br#"{"count":0,"notified":false}"#
    );
}

#[test]
fn a_nested_in_process_call_restores_the_outer_depth() {
    // The counter's emit calls hello in-process one level deeper; the counter's next emit,
    // still inside its own call, must carry its own depth again.
    let hello = Arc::new(
        InProcessPlugin::start(
            "hello",
            &sealed("hello"),
            &serde_json::Map::new(),
            None,
            &quiet_sink(),
        )
        .unwrap(),
    );
    let depths: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (kept, target) = (Arc::clone(&depths), Arc::clone(&hello));
    let handler: EmitHandler = Arc::new(move |_hook: &str, _payload: &[u8], depth: u32| {
        kept.lock().unwrap().push(depth);
        target.call_at_depth("greet", b"nested", depth + 1).unwrap();
        abi::EMIT_OK
    });
    let counter = InProcessPlugin::start(
        "counter",
        &sealed("counter"),
        &serde_json::Map::new(),
        Some(handler),
        &quiet_sink(),
    )
    .unwrap();
    counter.call_at_depth("reset", b"", 1).unwrap();
    counter.call_at_depth("reset", b"", 1).unwrap();
    assert_eq!(*depths.lock().unwrap(), vec![1, 1]);
}

#[test]
fn one_sealed_library_is_loaded_in_process_once_at_a_time() {
    let library = sealed("hello");
    let first = InProcessPlugin::start(
        "hello",
        &library,
        &serde_json::Map::new(),
        None,
        &quiet_sink(),
    )
    .unwrap();
    let err = InProcessPlugin::start(
        "hello",
        &library,
        &serde_json::Map::new(),
        None,
        &quiet_sink(),
    )
    .unwrap_err();
    assert!(matches!(err, InProcessError::AlreadyLoaded { .. }), "{err}");
    // Another sealed copy of the same file is another image: it loads.
    let other = InProcessPlugin::start(
        "hello",
        &sealed("hello"),
        &serde_json::Map::new(),
        None,
        &quiet_sink(),
    )
    .unwrap();
    assert_eq!(other.call("greet", b"B").unwrap(), b"Hello, B!");
    // Once the first is stopped, its library may be started again.
    first.stop();
    let again = InProcessPlugin::start(
        "hello",
        &library,
        &serde_json::Map::new(),
        None,
        &quiet_sink(),
    )
    .unwrap();
    assert_eq!(again.call("greet", b"A").unwrap(), b"Hello, A!");
}

#[test]
fn calls_from_many_threads_at_once_are_answered() {
    let plugin = InProcessPlugin::start(
        "counter",
        &sealed("counter"),
        &serde_json::Map::new(),
        None,
        &quiet_sink(),
    )
    .unwrap();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..1000 {
                    plugin.call("count", b"").unwrap();
                }
            });
        }
    });
    assert_eq!(plugin.call("count", b"").unwrap(), br#"{"count":8001}"#);
}

#[test]
fn no_sandbox_mechanism_is_shown_active() {
    let mechanisms = inprocess::mechanisms();
    assert_eq!(
        mechanisms.len(),
        plugboard_engine::sandbox::Mechanism::ALL.len()
    );
    assert!(mechanisms.values().all(|state| !state.active));
}
