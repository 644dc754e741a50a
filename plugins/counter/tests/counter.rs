//! Loads the built `libcounter.so` through the ABI, as a host does.

use plugboard_sdk::testing::{TestPlugin, cdylib_path};
use serde_json::{Value, json};

#[test]
fn keeps_state_across_calls_and_reads_its_config() {
    let plugin =
        TestPlugin::load_with_config(cdylib_path("counter"), &json!({"start": 10, "step": 5}))
            .expect("libcounter.so loads (run `cargo build --workspace` first)");
    let first: Value = plugin.call_json("count", &json!(null)).unwrap();
    let second: Value = plugin.call_json("count", &json!(null)).unwrap();
    assert_eq!(first["count"], 15);
    assert_eq!(second["count"], 20);
    let reset: Value = plugin.call_json("reset", &json!(null)).unwrap();
    assert_eq!(reset, json!({"count": 10, "notified": true}));
    let again: Value = plugin.call_json("count", &json!(null)).unwrap();
    assert_eq!(again["count"], 15);
}

#[test]
fn reset_emits_through_the_host_and_respects_denial() {
    let plugin = TestPlugin::load(cdylib_path("counter")).unwrap();
    plugin.call("count", b"").unwrap();
    plugin.call("reset", b"").unwrap();
    let emitted = plugin.emitted();
    assert_eq!(emitted.len(), 1);
    assert_eq!(emitted[0].hook, "counter.reset");
    assert_eq!(emitted[0].payload, b"0");

    plugin.allow_emits(&[]);
    let reset: Value = plugin.call_json("reset", &json!(null)).unwrap();
    assert_eq!(reset["notified"], false);
    assert_eq!(plugin.emitted().len(), 1);
}

#[test]
fn invalid_config_refuses_creation_with_the_reason() {
    let err =
        TestPlugin::load_with_config(cdylib_path("counter"), &json!({"step": 0})).unwrap_err();
    assert!(err.to_string().contains("`step` must not be 0"), "{err}");
}
