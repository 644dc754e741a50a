//! What a reload would change: the bundle on disk read (off the UI thread) and set
//! against what runs — version, library digest, signer, each capability, each effective
//! limit and the hooks with their timeouts — old → new, so the operator confirms knowing
//! what changes.

use std::path::{Path, PathBuf};

use plugboard_engine::PluginSnapshot;
use plugboard_engine::bundle::Bundle;
use plugboard_engine::manifest::{Capabilities, EffectiveResources, HostLimits};
use plugboard_engine::trust::{TrustError, Verified};

/// What the engine's trust store says of a bundle's signature (`None`: no trust store).
pub type TrustVerdict = Option<Result<Verified, TrustError>>;

/// The engine's checks a preview reports: the bundle's signature, and whether its
/// dependencies let the reload through (`Err`: why not).
pub struct EngineChecks<V, D> {
    pub verify: V,
    pub dependencies: D,
}

/// Reads the bundle in `dir` (checked against the host's `limits`, as the engine will) and
/// describes the change from `running`, one line each, with whether its signature verifies
/// and whether its dependencies allow it (the engine's own checks). A bundle that cannot be
/// read is described too: the reload would fail the same way.
pub fn preview<V, D>(
    running: &PluginSnapshot,
    dir: &Path,
    limits: &HostLimits,
    checks: EngineChecks<V, D>,
) -> Vec<String>
where
    V: FnOnce(&Bundle) -> TrustVerdict,
    D: FnOnce(&Bundle) -> Result<(), String>,
{
    match Bundle::open(dir, limits) {
        Ok(bundle) => {
            let mut lines = describe_change(running, &bundle, limits);
            // Right after the signer: whether the reload would get past verification.
            let at = lines
                .iter()
                .position(|line| line.starts_with("signer"))
                .map_or(lines.len(), |at| at + 1);
            lines.insert(at, signature_line((checks.verify)(&bundle)));
            // Then whether its dependencies, or plugins depending on it, let it through.
            if let Err(why) = (checks.dependencies)(&bundle) {
                lines.insert(
                    at + 1,
                    format!(
                        "{:<12} REFUSED: {why}. The running version would keep serving.",
                        "dependency"
                    ),
                );
            }
            lines
        }
        Err(err) => vec![
            format!("The bundle on disk cannot be read: {err}"),
            "The reload will fail and the running version keep serving.".to_owned(),
        ],
    }
}

fn signature_line(verdict: TrustVerdict) -> String {
    let label = "signature";
    match verdict {
        Some(Ok(verified)) => format!(
            "{label:<12} verifies: key {} trusted at level {}",
            verified.key_id, verified.level
        ),
        Some(Err(err)) => format!(
            "{label:<12} DOES NOT VERIFY: {err}. The reload will be refused (unless the host runs unverified bundles for development) and the running version keep serving."
        ),
        None => format!("{label:<12} not checked: the engine has no trust store"),
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
}

/// `old → new   CHANGED`, or `value (unchanged)`, or the new value alone when what runs
/// is not known.
fn change(label: &str, old: Option<&str>, new: &str) -> String {
    match old {
        Some(old) if old == new => format!("{label:<12} {new} (unchanged)"),
        Some(old) => format!("{label:<12} {old} → {new}   CHANGED"),
        None => format!("{label:<12} {new}"),
    }
}

fn paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        "none".to_owned()
    } else {
        paths
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn yes_no(granted: bool) -> String {
    if granted { "YES" } else { "no" }.to_owned()
}

/// Each capability as the lines show it: (label, value).
fn capability_values(capabilities: &Capabilities) -> [(&'static str, String); 5] {
    let Capabilities {
        fs_read,
        fs_write,
        network,
        spawn,
        emit,
    } = capabilities;
    [
        ("network", yes_no(*network)),
        ("spawn", yes_no(*spawn)),
        ("fs_read", paths(fs_read)),
        ("fs_write", paths(fs_write)),
        (
            "emit",
            if emit.is_empty() {
                "none".to_owned()
            } else {
                emit.join(" ")
            },
        ),
    ]
}

/// Each effective limit as the lines show it: (label, value).
fn limit_values(limits: &EffectiveResources) -> [(&'static str, String); 6] {
    let EffectiveResources {
        memory_mb,
        cpu_percent,
        max_threads,
        max_open_files,
        hook_timeout_ms,
        max_in_flight,
    } = limits;
    [
        ("memory", format!("{memory_mb} MiB")),
        ("cpu", format!("{cpu_percent}%")),
        ("threads", max_threads.to_string()),
        ("open files", max_open_files.to_string()),
        ("hook timeout", format!("{hook_timeout_ms} ms")),
        ("in flight", max_in_flight.to_string()),
    ]
}

pub fn describe_change(
    running: &PluginSnapshot,
    bundle: &Bundle,
    host_limits: &HostLimits,
) -> Vec<String> {
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

    let old = running.capabilities.as_ref().map(capability_values);
    for (at, (label, new)) in capability_values(&manifest.capabilities)
        .into_iter()
        .enumerate()
    {
        let old = old.as_ref().map(|old| old[at].1.as_str());
        lines.push(change(label, old, &new));
    }
    // The new version gets the same host overrides; the engine fills in the same way.
    let new_limits = manifest.effective_resources_with(host_limits, &running.resource_overrides);
    let old = running.limits.as_ref().map(limit_values);
    for (at, (label, new)) in limit_values(&new_limits).into_iter().enumerate() {
        let old = old.as_ref().map(|old| old[at].1.as_str());
        lines.push(change(label, old, &new));
    }
    // Subscribed hooks with their effective timeouts.
    let new_hooks: Vec<String> = manifest
        .hooks
        .keys()
        .map(|hook| {
            let timeout =
                manifest.hook_timeout_with(hook, host_limits, &running.resource_overrides);
            format!("{hook} {}ms", timeout.as_millis())
        })
        .collect();
    let old_hooks: Vec<String> = running
        .hooks
        .iter()
        .filter(|(_, stats)| stats.priority.is_some())
        .map(|(hook, stats)| format!("{hook} {}ms", stats.timeout_ms.unwrap_or_default()))
        .collect();
    lines.push(change(
        "hooks",
        (running.limits.is_some())
            .then(|| old_hooks.join(", "))
            .as_deref(),
        &new_hooks.join(", "),
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo's bundles, and a snapshot of `hello` as if it ran in version 0.0.9; `None`
    /// (said) before the example plugins are built.
    fn hello_running() -> Option<(
        tempfile::TempDir,
        super::super::demo::Prepared,
        PathBuf,
        Bundle,
        PluginSnapshot,
    )> {
        let binaries = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf();
        if !binaries.join("libhello.so").is_file() {
            eprintln!("skipped: run `cargo build --workspace` first to build the example plugins");
            return None;
        }
        let work = tempfile::tempdir().unwrap();
        let prepared = super::super::demo::prepare(work.path(), &binaries).unwrap();
        let dir = prepared.plugins.join("hello");
        let bundle = Bundle::open(&dir, &HostLimits::default()).unwrap();
        let library = bundle.digests().library.to_hex();
        let running: PluginSnapshot = serde_json::from_value(serde_json::json!({
            "name": "hello", "version": "0.0.9", "dir": dir, "state": "running",
            "reason": null, "health": "healthy", "health_failures": 0,
            "health_checked_ms": null, "health_detail": null, "isolation": "process",
            "mechanisms": {}, "active_mechanisms": [], "worker_pid": null, "sandbox_pid": null,
            "cgroup": null,
            "trust": {"signed": true, "key_id": prepared.key_id, "level": "sandboxed",
                      "library_sha3_512": library, "unverified": false},
            "hooks": {}, "violations": 0, "violations_unrecorded": 0, "emitted": 0, "last_exit": null,
            "output_dropped": 0, "recent_output": [], "enabled": true, "disabled_hooks": [],
            "dependencies": {}, "changed_on_disk": false, "removed_from_disk": false,
            "supervision": {"starts": 1, "restarts": 0, "last_start_ms": null,
                            "last_reload_ms": null, "backoff_step": 0, "next_retry_ms": null,
                            "restart_budget_left": 5},
            "resources": null,
        }))
        .unwrap();
        Some((work, prepared, dir, bundle, running))
    }

    /// The engine's checks with the trust verdict `verify` and dependencies that allow it.
    fn trust_only(
        verify: impl FnOnce(&Bundle) -> TrustVerdict,
    ) -> EngineChecks<
        impl FnOnce(&Bundle) -> TrustVerdict,
        impl FnOnce(&Bundle) -> Result<(), String>,
    > {
        EngineChecks {
            verify,
            dependencies: |_: &Bundle| Ok(()),
        }
    }

    fn line(lines: &[String], label: &str) -> String {
        lines
            .iter()
            .find(|line| line.starts_with(&format!("{label:<12} ")))
            .unwrap_or_else(|| panic!("no {label} line in {lines:#?}"))
            .clone()
    }

    #[test]
    fn a_preview_names_what_changes_and_what_does_not() {
        let Some((_work, prepared, dir, bundle, mut running)) = hello_running() else {
            return;
        };
        let limits = HostLimits::default();
        // What runs is not known (a snapshot without the fields): the new values alone.
        let lines = describe_change(&running, &bundle, &limits);
        assert!(lines[0].contains("0.0.9 → 0.1.0   CHANGED"), "{lines:?}");
        assert!(lines[1].contains("(unchanged)"), "{lines:?}");
        assert!(
            lines[2].contains(&format!("{} (unchanged)", prepared.key_id)),
            "{lines:?}"
        );
        assert_eq!(line(&lines, "network").trim_end(), "network      no");
        assert_eq!(line(&lines, "memory").trim_end(), "memory       32 MiB");

        // What runs granted the network, had other limits and another hook.
        running.capabilities = Some(plugboard_engine::manifest::Capabilities {
            network: true,
            fs_read: vec!["/etc".into()],
            ..Default::default()
        });
        running.limits = Some(bundle.manifest().effective_resources(&limits));
        running.limits.as_mut().unwrap().memory_mb = 64;
        running.hooks.insert(
            "greet".to_owned(),
            plugboard_engine::hooks::HookStatsSnapshot {
                priority: Some(plugboard_engine::manifest::Priority::Normal),
                timeout_ms: Some(250),
                ..Default::default()
            },
        );
        let lines = describe_change(&running, &bundle, &limits);
        assert_eq!(
            line(&lines, "network"),
            "network      YES → no   CHANGED",
            "{lines:#?}"
        );
        assert_eq!(line(&lines, "spawn"), "spawn        no (unchanged)");
        assert_eq!(
            line(&lines, "fs_read"),
            "fs_read      /etc → none   CHANGED"
        );
        assert_eq!(
            line(&lines, "memory"),
            "memory       64 MiB → 32 MiB   CHANGED"
        );
        assert_eq!(line(&lines, "cpu"), "cpu          25% (unchanged)");
        assert!(line(&lines, "hook timeout").ends_with("(unchanged)"));
        assert_eq!(
            line(&lines, "hooks"),
            "hooks        greet 250ms → greet 100ms   CHANGED"
        );
        // The host's overrides apply to the new version as to the old.
        running.resource_overrides.memory_mb = Some(64);
        let lines = describe_change(&running, &bundle, &limits);
        assert_eq!(line(&lines, "memory"), "memory       64 MiB (unchanged)");

        running.trust.key_id = Some("0000000000000000".to_owned());
        let lines = describe_change(&running, &bundle, &limits);
        assert!(lines[2].contains("0000000000000000 → "), "{lines:?}");

        std::fs::remove_file(dir.join("libhello.so")).unwrap();
        let lines = preview(&running, &dir, &limits, trust_only(|_| None));
        assert!(
            lines[0].starts_with("The bundle on disk cannot be read"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_preview_says_whether_the_signature_on_disk_verifies() {
        let Some((_work, prepared, dir, _, running)) = hello_running() else {
            return;
        };
        let limits = HostLimits::default();
        // The signature as the engine's trust store sees it: good, then broken by an edit.
        let store = plugboard_engine::trust::TrustStore::open(&prepared.trust_store).unwrap();
        let lines = preview(
            &running,
            &dir,
            &limits,
            trust_only(|bundle| Some(bundle.verify(&store))),
        );
        assert!(
            line(&lines, "signature").contains(&format!(
                "verifies: key {} trusted at level sandboxed",
                prepared.key_id
            )),
            "{lines:#?}"
        );
        let manifest = dir.join("plugin.toml");
        let edited = std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("memory_mb = 32", "memory_mb = 48");
        std::fs::write(&manifest, edited).unwrap();
        let lines = preview(
            &running,
            &dir,
            &limits,
            trust_only(|bundle| Some(bundle.verify(&store))),
        );
        assert!(
            line(&lines, "signature").contains("DOES NOT VERIFY")
                && line(&lines, "signature").contains("will be refused"),
            "{lines:#?}"
        );
        let lines = preview(&running, &dir, &limits, trust_only(|_| None));
        assert!(
            line(&lines, "signature").contains("not checked"),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_preview_says_when_dependencies_would_refuse_the_reload() {
        let Some((_work, _prepared, dir, _, running)) = hello_running() else {
            return;
        };
        let refusal = "`counter` depends on `hello` ^0.1, but hello would be 0.2.0";
        let lines = preview(
            &running,
            &dir,
            &HostLimits::default(),
            EngineChecks {
                verify: |_: &Bundle| None,
                dependencies: |_: &Bundle| Err(refusal.to_owned()),
            },
        );
        let dependency = line(&lines, "dependency");
        assert!(
            dependency.contains("REFUSED") && dependency.contains(refusal),
            "{lines:#?}"
        );
    }
}
