//! `plugboard quarantine list|clear` over a state file.

use std::process::Command;

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
    // The clear is put in the audit trail, which an incident's review reads.
    let audit = dir.path().join("audit.jsonl");
    ok(&plugboard(&[
        &"quarantine",
        &"clear",
        &"netprobe",
        &"--state-file",
        &state,
        &"--audit-file",
        &audit,
    ]));
    let trail = ok(&plugboard(&[&"audit", &audit, &"--json"]));
    let record: serde_json::Value = serde_json::from_str(trail.trim()).expect("one record");
    assert_eq!(record["kind"], "quarantine_cleared", "{trail}");
    assert_eq!(record["plugin"], "netprobe", "{trail}");
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

#[test]
fn a_state_file_that_does_not_exist_is_reported_unless_it_is_the_default_not_written_yet() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo/state.json");
    for args in [
        vec![
            &"quarantine" as &dyn AsRef<std::ffi::OsStr>,
            &"list",
            &"--state-file",
            &typo,
        ],
        vec![&"quarantine", &"clear", &"netprobe", &"--state-file", &typo],
    ] {
        let err = fails(&plugboard(&args));
        assert!(
            err.contains(&format!(
                "state file {} (given by --state-file) does not exist",
                typo.display()
            )),
            "{err}"
        );
    }
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!("state_file = {:?}\n", typo.display().to_string()),
    )
    .unwrap();
    let err = fails(&plugboard(&[&"quarantine", &"list", &"--config", &config]));
    assert!(
        err.contains("given by `state_file` in the host configuration"),
        "{err}"
    );
    // Once an engine has run on it (its claim is beside it), a state file not written yet
    // means nothing changed: a monitoring check on a healthy host passes.
    std::fs::create_dir_all(typo.parent().unwrap()).unwrap();
    std::fs::write(dir.path().join("typo/state.json.engine"), "1\n").unwrap();
    ok(&plugboard(&[&"quarantine", &"list", &"--config", &config]));

    // The default state file is written on the engine's first change only.
    let state_home = dir.path().join("state");
    let config_home = dir.path().join("config");
    let default = state_home.join("plugboard/state.json");
    let in_fresh_home = |args: &[&str]| {
        crate::support::plugboard_bin()
            .args(args)
            .env("XDG_STATE_HOME", &state_home)
            .env("XDG_CONFIG_HOME", &config_home)
            .output()
            .unwrap()
    };
    let listed = ok(&in_fresh_home(&["quarantine", "list"]));
    assert!(
        listed.contains(&format!(
            "no state file exists yet at {}",
            default.display()
        )),
        "{listed}"
    );
    let err = fails(&in_fresh_home(&["quarantine", "clear", "netprobe"]));
    assert!(
        err.contains("`netprobe` is not quarantined: no state file exists yet"),
        "{err}"
    );
    assert!(!default.exists());
}

/// The quarantine lives in the state file alone: no worker binary or plugin directory is
/// needed to read or clear it.
#[test]
fn quarantine_needs_no_worker_binary() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("plugboard");
    std::fs::copy(env!("CARGO_BIN_EXE_plugboard"), &alone).unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        r#"{"version": 1, "plugins": {"netprobe": {"quarantined": {"reason": "protocol_violation", "at_ms": 1}}}}"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(&alone)
            .args(args)
            .arg("--state-file")
            .arg(&state)
            .output()
            .unwrap()
    };
    let listed = ok(&run(&["quarantine", "list"]));
    assert!(listed.contains("netprobe"), "{listed}");
    ok(&run(&["quarantine", "clear", "netprobe"]));
    assert!(
        !std::fs::read_to_string(&state)
            .unwrap()
            .contains("netprobe")
    );
}
