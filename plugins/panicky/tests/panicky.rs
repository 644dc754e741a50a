//! A panic inside a plugin becomes an error reply carrying the panic message; it never
//! unwinds into the host, and the instance keeps answering.

use plugboard_sdk::testing::{TestPlugin, cdylib_path};

#[test]
fn panic_in_a_hook_is_an_error_reply_with_the_message() {
    let plugin = TestPlugin::load(cdylib_path("panicky"))
        .expect("libpanicky.so loads (run `cargo build --workspace` first)");
    let err = plugin.call("panic", b"boom").unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert!(err.message.contains("panic number 1: boom"), "{err}");
    assert_eq!(
        plugin.call("ok", b"").unwrap(),
        b"still alive after 1 panics"
    );
    let err = plugin.health().unwrap_err();
    assert!(err.message.contains("has panicked"), "{err}");
}

#[test]
fn panic_in_create_is_refused_with_the_message() {
    let err = TestPlugin::load_with_config(
        cdylib_path("panicky"),
        &serde_json::json!({"panic_in_create": true}),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("panic") && text.contains("asked to panic in create"),
        "{text}"
    );
}
