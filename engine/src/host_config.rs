//! The host's configuration file (TOML): where plugins are, which keys are trusted, which
//! confinement mechanisms are required, resource defaults and maxima. Unknown keys are
//! refused; every error names the file, the key and what was expected.
//!
//! ```toml
//! plugin_dirs = ["/var/lib/plugboard/plugins"]
//! trust_store = "/etc/plugboard/trust"
//! allow_unsigned = false        # development only: unsigned bundles still run sandboxed
//! grace_ms = 2000               # how long a stopping plugin gets before it is killed
//! cgroup_root = "/sys/fs/cgroup"
//! log_file = "/var/log/plugboard/engine.log"     # captured plugin output
//! audit_file = "/var/log/plugboard/audit.jsonl"  # every event, one JSON line each
//!
//! [sandbox]
//! # Mechanisms whose failure refuses a plugin (default: all of them). Lower this only on
//! # hosts that cannot provide one; the dashboard then shows the missing mechanism.
//! require = ["unprivileged-uid", "namespaces", "cgroup", "rlimits", "no-new-privs",
//!            "landlock", "capabilities", "seccomp"]
//! env = { LANG = "C.UTF-8" }    # the only environment a worker gets
//! tmpfs_mb = 16                 # each worker's private /tmp
//!
//! [limits]                      # defaults for manifests that say nothing, and maxima
//! default_memory_mb = 128
//! max_memory_mb = 8192
//! # … every field of HostLimits
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::EngineConfig;
use crate::manifest::HostLimits;
use crate::sandbox::Mechanism;

/// Why a host configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostConfigError {
    #[error("cannot read host configuration {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", file.display())]
    Invalid { file: PathBuf, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    plugin_dirs: Vec<PathBuf>,
    trust_store: Option<PathBuf>,
    #[serde(default)]
    allow_unsigned: bool,
    grace_ms: Option<u64>,
    cgroup_root: Option<PathBuf>,
    log_file: Option<PathBuf>,
    audit_file: Option<PathBuf>,
    #[serde(default)]
    sandbox: SandboxSection,
    limits: Option<HostLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxSection {
    require: Option<Vec<Mechanism>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    tmpfs_mb: Option<u64>,
}

fn invalid(file: &Path, message: impl Into<String>) -> HostConfigError {
    HostConfigError::Invalid {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// Reads `file` and applies it over `config` (relative paths are relative to the file).
pub fn apply_file(config: &mut EngineConfig, file: &Path) -> Result<(), HostConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| HostConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    let parsed: FileConfig = toml::from_str(&text).map_err(|err| {
        let line = err
            .span()
            .map(|span| text[..span.start].lines().count().max(1));
        let message = err.message().trim().to_owned();
        invalid(
            file,
            match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            },
        )
    })?;
    let base = file.parent().unwrap_or_else(|| Path::new("."));
    let resolve = |path: PathBuf| {
        if path.is_absolute() {
            path
        } else {
            base.join(path)
        }
    };
    config
        .plugin_dirs
        .extend(parsed.plugin_dirs.into_iter().map(resolve));
    if let Some(store) = parsed.trust_store {
        config.trust_store = Some(resolve(store));
    }
    config.allow_unsigned |= parsed.allow_unsigned;
    if let Some(grace) = parsed.grace_ms {
        config.grace = Duration::from_millis(grace);
    }
    if let Some(root) = parsed.cgroup_root {
        config.cgroup_root = resolve(root);
    }
    if let Some(log) = parsed.log_file {
        config.log_file = Some(resolve(log));
    }
    if let Some(audit) = parsed.audit_file {
        config.audit_file = Some(resolve(audit));
    }
    if let Some(require) = parsed.sandbox.require {
        config.worker.require = require;
    }
    config.worker.env.extend(parsed.sandbox.env);
    if let Some(mb) = parsed.sandbox.tmpfs_mb {
        if mb == 0 {
            return Err(invalid(
                file,
                "`sandbox.tmpfs_mb` = 0: expected at least 1 (MiB)",
            ));
        }
        config.worker.tmpfs_bytes = mb * 1024 * 1024;
    }
    if let Some(limits) = parsed.limits {
        check_limits(&limits).map_err(|message| invalid(file, message))?;
        config.limits = limits;
    }
    Ok(())
}

/// Each default must be at least 1 and within its maximum.
fn check_limits(limits: &HostLimits) -> Result<(), String> {
    let pairs: [(&str, u64, u64); 6] = [
        ("memory_mb", limits.default_memory_mb, limits.max_memory_mb),
        (
            "cpu_percent",
            limits.default_cpu_percent.into(),
            limits.max_cpu_percent.into(),
        ),
        (
            "max_threads",
            limits.default_max_threads.into(),
            limits.max_threads.into(),
        ),
        (
            "max_open_files",
            limits.default_max_open_files.into(),
            limits.max_open_files.into(),
        ),
        (
            "hook_timeout_ms",
            limits.default_hook_timeout_ms,
            limits.max_hook_timeout_ms,
        ),
        (
            "max_in_flight",
            limits.default_max_in_flight.into(),
            limits.max_in_flight.into(),
        ),
    ];
    for (name, default, max) in pairs {
        if default == 0 || default > max {
            return Err(format!(
                "`limits.default_{}` = {default}: expected from 1 to `limits.max_{}` ({max})",
                name.trim_start_matches("max_"),
                name.trim_start_matches("max_")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str) -> Result<EngineConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("host.toml");
        std::fs::write(&file, text).unwrap();
        let mut config = EngineConfig::new(PathBuf::from("/usr/bin/plugboard-host"));
        apply_file(&mut config, &file)
            .map(|()| config)
            .map_err(|err| err.to_string())
    }

    #[test]
    fn a_full_file_is_applied_and_relative_paths_follow_the_file() {
        let config = apply(
            "plugin_dirs = [\"plugins\"]\ntrust_store = \"/etc/pb/trust\"\ngrace_ms = 500\n[sandbox]\nrequire = [\"seccomp\", \"cgroup\"]\nenv = { LANG = \"C\" }\ntmpfs_mb = 4\n[limits]\nmax_memory_mb = 512\n",
        )
        .unwrap();
        assert!(config.plugin_dirs[0].ends_with("plugins") && config.plugin_dirs[0].is_absolute());
        assert_eq!(config.grace, Duration::from_millis(500));
        assert_eq!(
            config.worker.require,
            [Mechanism::Seccomp, Mechanism::Cgroup]
        );
        assert_eq!(config.worker.env, [("LANG".to_owned(), "C".to_owned())]);
        assert_eq!(config.worker.tmpfs_bytes, 4 << 20);
        assert_eq!(config.limits.max_memory_mb, 512);
    }

    #[test]
    fn unknown_keys_bad_mechanisms_and_bad_limits_are_refused_with_the_key() {
        let err = apply("plugin_dir = []\n").unwrap_err();
        assert!(
            err.contains("host.toml") && err.contains("line 1") && err.contains("plugin_dir"),
            "{err}"
        );
        let err = apply("[sandbox]\nrequire = [\"selinux\"]\n").unwrap_err();
        assert!(err.contains("selinux") && err.contains("line 2"), "{err}");
        let err = apply("[limits]\ndefault_memory_mb = 900\nmax_memory_mb = 512\n").unwrap_err();
        assert!(
            err.contains("limits.default_memory_mb") && err.contains("512"),
            "{err}"
        );
    }
}
