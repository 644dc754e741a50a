//! Loads the built `libhello.so` through the ABI, as a host does.

use plugboard_sdk::LogLevel;
use plugboard_sdk::testing::{TestPlugin, cdylib_path};

#[test]
fn greets_by_name_with_the_configured_greeting() {
    let plugin = TestPlugin::load_with_config(
        cdylib_path("hello"),
        &serde_json::json!({"greeting": "Bonjour"}),
    )
    .expect("libhello.so loads (run `cargo build --workspace` first)");
    assert_eq!(plugin.call("greet", b"Ada").unwrap(), b"Bonjour, Ada!");
    assert_eq!(plugin.call("greet", b"").unwrap(), b"Bonjour, world!");
    assert_eq!(plugin.logs()[0].level, LogLevel::Info);
    assert!(plugin.logs()[0].message.contains("Bonjour"));
}

#[test]
fn unknown_hook_and_bad_payload_are_typed_errors() {
    let plugin = TestPlugin::load(cdylib_path("hello")).unwrap();
    assert_eq!(plugin.call("greet", b"x").unwrap(), b"Hello, x!");
    let err = plugin.call("frobnicate", b"").unwrap_err();
    assert!(err.is_unknown_hook(), "{err}");
    assert!(err.message.contains("frobnicate"), "{err}");
    let err = plugin.call("greet", &[0xff, 0xfe]).unwrap_err();
    assert!(err.message.contains("UTF-8"), "{err}");
    assert!(plugin.health().is_ok());
}
