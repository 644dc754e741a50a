//! `plugboard quarantine list|clear` over a state file.

use crate::support::{fails, ok, plugboard};

#[test]
fn quarantine_lists_and_clears_what_the_state_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        r#"{"version": 1, "plugins": {"netprobe": {"quarantined": {"reason": "protocol_violation: garbage frame", "at_ms": 1}}, "hello": {"enabled": false}}}"#,
    )
    .unwrap();
    let listed = ok(&plugboard(&[
        &"quarantine",
        &"list",
        &"--state-file",
        &state,
    ]));
    assert!(
        listed.contains("netprobe")
            && listed.contains("garbage frame")
            && !listed.contains("hello"),
        "{listed}"
    );
    ok(&plugboard(&[
        &"quarantine",
        &"clear",
        &"netprobe",
        &"--state-file",
        &state,
    ]));
    let listed = ok(&plugboard(&[
        &"quarantine",
        &"list",
        &"--state-file",
        &state,
    ]));
    assert!(listed.contains("no plugin is quarantined"), "{listed}");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains("hello") && !saved.contains("netprobe"),
        "{saved}"
    );
    let err = fails(&plugboard(&[
        &"quarantine",
        &"clear",
        &"netprobe",
        &"--state-file",
        &state,
    ]));
    assert!(err.contains("`netprobe` is not quarantined"), "{err}");
}
