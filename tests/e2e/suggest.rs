//! Audit mode and `plugboard suggest`: a plugin whose host section says `audit = true` does
//! what its manifest does not allow, the engine records it instead of denying it, and
//! `suggest` turns the record into the `[capabilities]` block it needs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::support::{fails, keys, ok, plugboard, signed_example, stderr};

fn violations(snapshot: &Value, plugin: &str) -> usize {
    snapshot["recent_events"]
        .as_array()
        .expect("a snapshot has recent_events")
        .iter()
        .filter(|event| event["kind"] == "violation" && event["plugin"] == plugin)
        .count()
}

#[test]
fn audit_mode_records_instead_of_denying_and_suggest_prints_what_to_grant() {
    let temp = tempfile::tempdir().unwrap();
    let keys = keys(temp.path(), "audit");
    let plugins = temp.path().join("plugins");
    for name in ["netprobe", "fswriter"] {
        signed_example(&plugins, name, &keys);
    }
    // fswriter writes outside its grant: into a directory of this test, not under /tmp
    // (a worker's /tmp is its own), writable by the worker's unprivileged uid.
    let outside = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let audit_file = temp.path().join("audit.jsonl");
    let config = temp.path().join("plugboard.toml");
    std::fs::write(
        &config,
        format!(
            "audit_file = {audit:?}\n\
             [plugins.netprobe]\naudit = true\n\
             [plugins.fswriter]\naudit = true\nconfig = {{ dir = {dir:?} }}\n",
            audit = audit_file.display().to_string(),
            dir = outside.path().display().to_string(),
        ),
    )
    .unwrap();
    let output = crate::support::plugboard_bin()
        .arg("headless")
        .arg("--config")
        .arg(&config)
        .arg("--plugins")
        .arg(&plugins)
        .arg("--trust-store")
        .arg(&keys.store)
        .args(["--emit", "chaos@1s", "--json", "--duration", "3s"])
        .env("NO_COLOR", "1")
        .output()
        .expect("plugboard runs");
    let stdout = ok(&output);
    let last: Value = serde_json::from_str(stdout.lines().last().expect("a final snapshot"))
        .expect("the final snapshot is JSON");
    // Let through, not denied: no violation, and the socket call got past the filter (the
    // connection itself fails in the worker's empty network namespace).
    assert_eq!(violations(&last, "netprobe"), 0, "{last}");
    assert_eq!(violations(&last, "fswriter"), 0, "{last}");
    let err = stderr(&output);
    assert!(err.contains("emitted `chaos` to netprobe: ok"), "{err}");
    assert!(!err.contains("Operation not permitted"), "{err}");

    let suggest = |plugin: &str| {
        ok(&plugboard(&[
            &"suggest",
            &plugin,
            &"--config",
            &config,
            &"--plugins",
            &plugins,
        ]))
    };
    let netprobe = suggest("netprobe");
    let block: toml::Value = toml::from_str(&netprobe).expect("the suggestion is TOML");
    let capabilities = &block["capabilities"];
    assert_eq!(capabilities["network"].as_bool(), Some(true), "{netprobe}");
    assert_eq!(capabilities["spawn"].as_bool(), Some(false), "{netprobe}");
    assert_eq!(capabilities["fs_write"].as_array().map(Vec::len), Some(0));
    assert!(
        netprobe.contains("# seen: socket (domain AF_INET, type SOCK_STREAM"),
        "{netprobe}"
    );

    let fswriter = suggest("fswriter");
    let block: toml::Value = toml::from_str(&fswriter).expect("the suggestion is TOML");
    let written: Vec<&str> = block["capabilities"]["fs_write"]
        .as_array()
        .expect("fs_write is an array")
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    // Its manifest's grant is kept; the directory it created a file in is added.
    assert_eq!(
        written,
        ["/tmp", outside.path().to_str().unwrap()],
        "{fswriter}"
    );
    assert_eq!(block["capabilities"]["network"].as_bool(), Some(false));
    assert!(!Path::new(&outside.path().join("plugboard-fswriter-1")).exists());
}

#[test]
fn suggest_without_an_audit_mode_run_says_what_to_do() {
    let temp = tempfile::tempdir().unwrap();
    let audit_file = temp.path().join("audit.jsonl");
    std::fs::write(&audit_file, "").unwrap();
    let message = fails(&plugboard(&[
        &"suggest",
        &"netprobe",
        &"--audit-file",
        &audit_file,
    ]));
    assert!(
        message.contains("no audit-mode run") && message.contains("audit = true"),
        "{message}"
    );
}
