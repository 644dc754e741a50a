//! `plugboard call`: one bundle started sandboxed, one hook called, the worker stopped.

use serde_json::Value;

use crate::support::{fails, keys, ok, plugboard, signed_example};

#[test]
fn call_prints_the_reply_and_with_json_the_status_duration_and_mechanisms() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    let out = ok(&plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"greet",
        &"author",
    ]));
    assert!(out.contains("Hello") && out.contains("author"), "{out}");

    let out = ok(&plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"greet",
        &"json",
        &"--json",
    ]));
    let report: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(report["status"], "ok");
    assert!(
        report["reply"].as_str().unwrap().contains("json"),
        "{report}"
    );
    assert!(report["duration_us"].as_u64().unwrap() > 0);
    assert!(report["duration"].is_string());
    assert_eq!(report["isolation"], "process");
    let mechanisms: Vec<&str> = report["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|badge| badge.as_str().unwrap())
        .collect();
    for badge in ["ns", "uid", "nnp", "cap", "rl", "cg", "ll", "sc"] {
        assert!(
            mechanisms.contains(&badge),
            "{badge} missing from {mechanisms:?}"
        );
    }
    // The worker is gone once the command returns.
    let pid = report["worker_pid"].as_u64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty()
            || stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        "worker {pid} still runs: {stat}"
    );
}

#[test]
fn call_fails_with_the_reason_for_an_unknown_hook_an_untrusted_bundle_and_an_error_status() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    let err = fails(&plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"nope",
    ]));
    assert!(err.contains("no hook `nope`"), "{err}");

    let other = tempfile::tempdir().unwrap();
    let stranger = crate::support::keys(other.path(), "stranger");
    let err = fails(&plugboard(&[
        &"call",
        &"--trust-store",
        &stranger.store,
        &bundle,
        &"greet",
    ]));
    assert!(
        err.contains("did not start") && err.contains("key"),
        "{err}"
    );

    let panicky = signed_example(root.path(), "panicky", &keys);
    let err = fails(&plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &panicky,
        &"panic",
    ]));
    assert!(err.contains("status panic"), "{err}");
}
