//! From audit mode to enforcement: what a plugin was seen to need (the `audited` events of
//! its audit-mode runs, read back from the audit file) turned into the `[capabilities]`
//! block that would let it run enforced.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::audit::AuditRecord;
use crate::events::EventKind;
use crate::manifest::Capabilities;

/// The capabilities a plugin needs, with the evidence for what was added.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub plugin: String,
    /// How many times it was started in audit mode, according to the records.
    pub audit_runs: usize,
    /// Distinct things it did beyond its manifest.
    pub observations: usize,
    /// Its manifest's grants were known (and are kept in the block).
    pub manifest_known: bool,
    pub fs_read: Vec<PathBuf>,
    pub fs_write: Vec<PathBuf>,
    pub network: bool,
    pub spawn: bool,
    pub emit: Vec<String>,
    /// Per key of the block, what was seen that needs it (`socket (domain AF_INET, …)`).
    pub evidence: BTreeMap<String, BTreeSet<String>>,
}

/// What `records` (oldest first) show of `plugin` in audit mode, over its manifest's
/// current grants (`None`: unknown, only what was seen is listed).
pub fn suggest(
    plugin: &str,
    current: Option<&Capabilities>,
    records: &[AuditRecord],
) -> Suggestion {
    let mut suggestion = Suggestion {
        plugin: plugin.to_owned(),
        audit_runs: 0,
        observations: 0,
        manifest_known: current.is_some(),
        fs_read: current.map(|c| c.fs_read.clone()).unwrap_or_default(),
        fs_write: current.map(|c| c.fs_write.clone()).unwrap_or_default(),
        network: current.is_some_and(|c| c.network),
        spawn: current.is_some_and(|c| c.spawn),
        emit: current.map(|c| c.emit.clone()).unwrap_or_default(),
        evidence: BTreeMap::new(),
    };
    for record in records {
        if record.event.plugin.as_deref() != Some(plugin) {
            continue;
        }
        match &record.event.kind {
            EventKind::Started { audit: true, .. } => suggestion.audit_runs += 1,
            EventKind::Audited {
                capability,
                syscall,
                path,
                creates,
                detail,
            } => {
                suggestion.observations += 1;
                let seen = if detail.is_empty() {
                    syscall.clone()
                } else {
                    format!("{syscall} ({detail})")
                };
                match (capability.as_str(), path) {
                    ("network", _) => suggestion.network = true,
                    ("spawn", _) => suggestion.spawn = true,
                    ("fs_write", Some(path)) => {
                        // Creating a name needs the right on its directory.
                        let path = Path::new(path);
                        let grant = if *creates {
                            path.parent().unwrap_or(path)
                        } else {
                            path
                        };
                        suggestion.fs_write.push(grant.to_owned());
                    }
                    ("fs_read", Some(path)) => suggestion.fs_read.push(PathBuf::from(path)),
                    // A record from a newer engine: shown as evidence, granted nothing.
                    _ => {}
                }
                let seen = match path {
                    Some(path) => format!("{seen}: {path}"),
                    None => seen,
                };
                suggestion
                    .evidence
                    .entry(capability.clone())
                    .or_default()
                    .insert(seen);
            }
            _ => {}
        }
    }
    suggestion.fs_write = outermost(&suggestion.fs_write, &[]);
    suggestion.fs_read = outermost(&suggestion.fs_read, &suggestion.fs_write);
    suggestion
}

/// `paths` without duplicates and without those beneath another of them or beneath one of
/// `covered` (what `fs_write` grants covers reading).
fn outermost(paths: &[PathBuf], covered: &[PathBuf]) -> Vec<PathBuf> {
    let unique: BTreeSet<&PathBuf> = paths.iter().collect();
    unique
        .iter()
        .filter(|path| {
            !covered.iter().any(|outer| path.starts_with(outer))
                && !unique
                    .iter()
                    .any(|outer| outer != *path && path.starts_with(outer))
        })
        .map(|path| (*path).clone())
        .collect()
}

/// A TOML string (quoted, escaped).
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn array<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(quoted).collect();
    format!("[{}]", items.join(", "))
}

impl Suggestion {
    /// The block as TOML for the manifest, with the evidence as comments above each key
    /// that it changed.
    pub fn to_toml(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# `{}`: {} audit-mode run{}, {} distinct observation{} beyond its manifest.",
            self.plugin,
            self.audit_runs,
            if self.audit_runs == 1 { "" } else { "s" },
            self.observations,
            if self.observations == 1 { "" } else { "s" },
        );
        if self.manifest_known {
            text.push_str("# Its manifest's grants are kept; what it was seen to need is added.\n");
        } else {
            text.push_str(
                "# Its manifest was not found (pass --plugins DIR): only what was seen is listed.\n",
            );
        }
        text.push_str("[capabilities]\n");
        let evidence = |text: &mut String, key: &str| {
            for seen in self.evidence.get(key).into_iter().flatten() {
                let _ = writeln!(text, "# seen: {seen}");
            }
        };
        evidence(&mut text, "fs_read");
        let _ = writeln!(
            text,
            "fs_read = {}",
            array(self.fs_read.iter().filter_map(|path| path.to_str()))
        );
        evidence(&mut text, "fs_write");
        let _ = writeln!(
            text,
            "fs_write = {}",
            array(self.fs_write.iter().filter_map(|path| path.to_str()))
        );
        evidence(&mut text, "network");
        let _ = writeln!(text, "network = {}", self.network);
        evidence(&mut text, "spawn");
        let _ = writeln!(text, "spawn = {}", self.spawn);
        let _ = writeln!(
            text,
            "emit = {}",
            array(self.emit.iter().map(String::as_str))
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    fn record(seq: u64, plugin: &str, kind: EventKind) -> AuditRecord {
        AuditRecord {
            schema: crate::audit::AUDIT_SCHEMA,
            engine_pid: None,
            event: Event {
                seq,
                at_ms: 0,
                plugin: Some(plugin.to_owned()),
                kind,
            },
        }
    }

    fn audited(capability: &str, syscall: &str, path: Option<&str>, creates: bool) -> EventKind {
        EventKind::Audited {
            capability: capability.to_owned(),
            syscall: syscall.to_owned(),
            path: path.map(str::to_owned),
            creates,
            detail: String::new(),
        }
    }

    #[test]
    fn observations_become_grants_over_the_manifest() {
        let current = Capabilities {
            fs_write: vec![PathBuf::from("/tmp")],
            emit: vec!["tick".to_owned()],
            ..Capabilities::default()
        };
        let records = [
            record(
                1,
                "p",
                EventKind::Started {
                    worker_pid: 1,
                    sandbox_pid: 2,
                    mechanisms: Vec::new(),
                    audit: true,
                    in_process: false,
                },
            ),
            record(2, "p", audited("network", "connect", None, false)),
            record(
                3,
                "p",
                audited("fs_write", "openat", Some("/var/lib/p/new.db"), true),
            ),
            record(
                4,
                "p",
                audited("fs_write", "unlink", Some("/var/lib/p/old.db"), false),
            ),
            record(
                5,
                "p",
                audited("fs_read", "openat", Some("/var/lib/p/seed"), false),
            ),
            record(
                6,
                "p",
                audited("fs_read", "openat", Some("/etc/p.conf"), false),
            ),
            // Someone else's observation changes nothing.
            record(7, "other", audited("spawn", "execve", None, false)),
        ];
        let suggestion = suggest("p", Some(&current), &records);
        assert_eq!(suggestion.audit_runs, 1);
        assert_eq!(suggestion.observations, 5);
        assert!(suggestion.network && !suggestion.spawn);
        assert_eq!(
            suggestion.fs_write,
            [PathBuf::from("/tmp"), PathBuf::from("/var/lib/p")]
        );
        // /var/lib/p/seed is covered by the write grant of its directory.
        assert_eq!(suggestion.fs_read, [PathBuf::from("/etc/p.conf")]);
        let block = suggestion.to_toml();
        let parsed: toml::Value = toml::from_str(&block).unwrap();
        let capabilities = &parsed["capabilities"];
        assert_eq!(capabilities["network"].as_bool(), Some(true));
        assert_eq!(capabilities["emit"][0].as_str(), Some("tick"));
        assert!(block.contains("# seen: connect\n"), "{block}");
    }

    #[test]
    fn without_the_manifest_only_what_was_seen_is_listed() {
        let records = [record(1, "p", audited("spawn", "clone", None, false))];
        let suggestion = suggest("p", None, &records);
        assert!(suggestion.spawn && !suggestion.network);
        assert!(suggestion.to_toml().contains("was not found"));
    }
}
