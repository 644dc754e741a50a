//! Output cut short by its reader (`plugboard … | head`): the command ends quietly, as Unix
//! filters do, and a running engine still stops its plugins first.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    closed_pipe, engine_scopes, is_alive, keys, plugboard_command, signed_example, stderr,
};

/// Runs `plugboard args` writing into a pipe nobody reads any more.
fn into_closed_pipe(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    plugboard_command(args)
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("plugboard runs")
}

#[track_caller]
fn ends_quietly(output: &Output) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "a closed stdout ends the command quietly: {}",
        stderr(output)
    );
    assert!(stderr(output).is_empty(), "{}", stderr(output));
}

#[test]
fn inspect_audit_and_completions_end_quietly_when_their_reader_has_gone() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    ends_quietly(&into_closed_pipe(&[&"inspect", &bundle]));
    ends_quietly(&into_closed_pipe(&[&"inspect", &bundle, &"--json"]));
    ends_quietly(&into_closed_pipe(&[&"completions", &"bash"]));

    let audit = root.path().join("audit.jsonl");
    let record =
        r#"{"schema":1,"seq":1,"at_ms":1,"plugin":"hello","kind":"engine","message":"hi"}"#;
    std::fs::write(&audit, format!("{record}\n").repeat(1000)).unwrap();
    ends_quietly(&into_closed_pipe(&[&"audit", &audit]));
    ends_quietly(&into_closed_pipe(&[&"audit", &audit, &"--json"]));
}

/// `plugboard pack … | head -1`: the report is cut short, the bundle is whole and signed —
/// and so is one packed again over an existing bundle.
#[test]
fn pack_and_sign_whose_reader_has_gone_still_write_the_whole_bundle() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let manifest = crate::support::repo_root().join("plugins/hello/plugin.toml");
    let library = crate::support::plugin_library("hello");
    let bundle = root.path().join("hello");
    for _ in 0..2 {
        ends_quietly(&into_closed_pipe(&[
            &"pack",
            &manifest,
            &"--library",
            &library,
            &"--out",
            &bundle,
            &"--key",
            &keys.private,
        ]));
        let verified =
            crate::support::plugboard(&[&"verify", &bundle, &"--trust-store", &keys.store]);
        assert!(verified.status.success(), "{}", stderr(&verified));
    }
    std::fs::remove_file(bundle.join("plugin.sig")).unwrap();
    ends_quietly(&into_closed_pipe(&[
        &"sign",
        &bundle,
        &"--key",
        &keys.private,
    ]));
    assert!(bundle.join("plugin.sig").is_file());
}

/// A stderr nobody reads (`2>&1 | head -0`): a failure still exits 1, not with a panic.
#[test]
fn a_failure_with_its_stderr_closed_exits_1_without_a_panic() {
    let output = plugboard_command(&[&"headless", &"--plugins", &"/nonexistent-plugboard-dir"])
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .output()
        .expect("plugboard runs");
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn headless_whose_reader_goes_away_stops_its_plugins_and_ends_quietly() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "fleet");
    let dir = root.path().join("plugins");
    signed_example(&dir, "hello", &keys);
    let mut engine = plugboard_command(&[
        &"headless",
        &"--plugins",
        &dir,
        &"--trust-store",
        &keys.store,
        &"--json",
        &"--interval",
        &"100ms",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("plugboard runs");
    let mut lines = BufReader::new(engine.stdout.take().unwrap()).lines();
    let pids = loop {
        let line = lines.next().expect("a snapshot line").unwrap();
        let snapshot: Value = serde_json::from_str(&line).unwrap();
        let hello = &snapshot["plugins"][0];
        if hello["state"] == "running" {
            break [&hello["sandbox_pid"], &hello["worker_pid"]].map(|pid| pid.as_u64().unwrap());
        }
    };
    assert!(
        !engine_scopes(engine.id()).is_empty(),
        "the engine has its cgroups"
    );
    drop(lines); // like `head -1` exiting

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = engine.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "headless went on without its reader"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(engine.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for pid in pids {
        assert!(!is_alive(pid), "worker {pid} outlived the engine");
    }
    assert!(
        engine_scopes(engine.id()).is_empty(),
        "the engine's cgroups were left: {:?}",
        engine_scopes(engine.id())
    );
}

/// A failed call still fails when nobody reads its `--json`: the call's outcome sets the
/// exit status, not the reader that went away.
#[test]
fn a_failed_call_fails_even_when_its_reader_has_gone() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    let output = into_closed_pipe(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"no_such_hook",
        &"--json",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no_such_hook"),
        "{}",
        stderr(&output)
    );
}
