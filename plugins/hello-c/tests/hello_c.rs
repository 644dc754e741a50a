//! Loads the C plugin through the same ABI checks a host makes and calls it.

use plugboard_sdk::testing::TestPlugin;

#[test]
fn c_plugin_greets_through_the_abi() {
    let plugin = TestPlugin::load(hello_c::LIBRARY_PATH).expect("libhello_c.so loads");
    assert_eq!(
        plugin.call("greet", b"Grace").unwrap(),
        b"Hello from C, Grace!"
    );
    assert_eq!(plugin.call("greet", b"").unwrap(), b"Hello from C, world!");
    assert!(plugin.call("nope", b"").unwrap_err().is_unknown_hook());
    assert!(plugin.health().is_ok());
    assert_eq!(plugin.logs()[0].message, "hello-c ready");
}
