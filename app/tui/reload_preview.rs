//! What a reload would change: the bundle on disk read (off the UI thread) and set
//! against what runs — version, library digest, signer — plus the capabilities and
//! limits the new manifest asks for, so the operator confirms knowing what changes.

use std::path::Path;

use plugboard_engine::PluginSnapshot;
use plugboard_engine::bundle::Bundle;
use plugboard_engine::manifest::HostLimits;

/// Reads the bundle in `dir` and describes the change from `running`, one line each.
/// A bundle that cannot be read is described too: the reload would fail the same way.
pub fn preview(running: &PluginSnapshot, dir: &Path) -> Vec<String> {
    match Bundle::open(dir, &HostLimits::default()) {
        Ok(bundle) => describe_change(running, &bundle),
        Err(err) => vec![
            format!("The bundle on disk cannot be read: {err}"),
            "The reload will fail and the running version keep serving.".to_owned(),
        ],
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
}

/// `old → new`, or `value (unchanged)`.
fn change(label: &str, old: Option<&str>, new: &str) -> String {
    match old {
        Some(old) if old == new => format!("{label:<9} {new} (unchanged)"),
        Some(old) => format!("{label:<9} {old} → {new}   CHANGED"),
        None => format!("{label:<9} {new}"),
    }
}

pub fn describe_change(running: &PluginSnapshot, bundle: &Bundle) -> Vec<String> {
    let manifest = bundle.manifest();
    let mut lines = Vec::new();
    lines.push(change(
        "version",
        running.version.as_deref(),
        &manifest.plugin.version.to_string(),
    ));
    let library = bundle.digests().library.to_hex();
    lines.push(change(
        "library",
        running.trust.library_sha3_512.as_deref().map(short),
        short(&library),
    ));
    let signer = bundle.signature().map_or_else(
        || "unsigned".to_owned(),
        |signature| signature.key_id.to_string(),
    );
    lines.push(change("signer", running.trust.key_id.as_deref(), &signer));
    let capabilities = &manifest.capabilities;
    let paths = |paths: &[std::path::PathBuf]| -> String {
        if paths.is_empty() {
            "none".to_owned()
        } else {
            paths
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let yes_no = |granted: bool| if granted { "YES" } else { "no" };
    lines.push(format!(
        "grants    network {}, spawn {}, read {}, write {}",
        yes_no(capabilities.network),
        yes_no(capabilities.spawn),
        paths(&capabilities.fs_read),
        paths(&capabilities.fs_write)
    ));
    let resources = &manifest.resources;
    let limit = |value: Option<String>| value.unwrap_or_else(|| "host default".to_owned());
    lines.push(format!(
        "limits    memory {}, cpu {}, threads {}",
        limit(resources.memory_mb.map(|mb| format!("{mb} MiB"))),
        limit(resources.cpu_percent.map(|percent| format!("{percent}%"))),
        limit(resources.max_threads.map(|threads| threads.to_string())),
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_names_what_changes_and_what_does_not() {
        let binaries = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf();
        if !binaries.join("libhello.so").is_file() {
            eprintln!("skipped: run `cargo build --workspace` first to build the example plugins");
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let prepared = super::super::demo::prepare(work.path(), &binaries).unwrap();
        let dir = prepared.plugins.join("hello");
        let bundle = Bundle::open(&dir, &HostLimits::default()).unwrap();
        let library = bundle.digests().library.to_hex();
        let mut running: PluginSnapshot = serde_json::from_value(serde_json::json!({
            "name": "hello", "version": "0.0.9", "dir": dir, "state": "running",
            "reason": null, "health": "healthy", "health_failures": 0,
            "health_checked_ms": null, "health_detail": null, "isolation": "process",
            "mechanisms": {}, "active_mechanisms": [], "worker_pid": null, "sandbox_pid": null,
            "cgroup": null,
            "trust": {"signed": true, "key_id": prepared.key_id, "level": "sandboxed",
                      "library_sha3_512": library, "unverified": false},
            "hooks": {}, "violations": 0, "emitted": 0, "last_exit": null,
            "output_dropped": 0, "recent_output": [], "enabled": true, "disabled_hooks": [],
            "dependencies": {}, "changed_on_disk": false, "removed_from_disk": false,
            "supervision": {"starts": 1, "restarts": 0, "last_start_ms": null,
                            "last_reload_ms": null, "backoff_step": 0, "next_retry_ms": null,
                            "restart_budget_left": 5},
            "resources": null,
        }))
        .unwrap();
        let lines = describe_change(&running, &bundle);
        assert!(lines[0].contains("0.0.9 → 0.1.0   CHANGED"), "{lines:?}");
        assert!(lines[1].contains("(unchanged)"), "{lines:?}");
        assert!(
            lines[2].contains(&format!("{} (unchanged)", prepared.key_id)),
            "{lines:?}"
        );
        assert!(
            lines[3].starts_with("grants    network no, spawn no"),
            "{lines:?}"
        );
        assert!(lines[4].starts_with("limits    memory"), "{lines:?}");

        running.trust.key_id = Some("0000000000000000".to_owned());
        let lines = describe_change(&running, &bundle);
        assert!(lines[2].contains("0000000000000000 → "), "{lines:?}");

        std::fs::remove_file(dir.join("libhello.so")).unwrap();
        let lines = preview(&running, &dir);
        assert!(
            lines[0].starts_with("The bundle on disk cannot be read"),
            "{lines:?}"
        );
    }
}
