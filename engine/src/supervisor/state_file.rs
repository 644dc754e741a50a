//! What an operator decided that must survive an engine restart: disabled plugins and
//! disabled hooks. A small JSON file, replaced atomically (write a temporary file beside it,
//! fsync, rename, fsync the directory), so a crash leaves the old or the new file, never a
//! torn one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's format version.
const STATE_VERSION: u32 = 1;

/// One plugin's persisted toggles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginToggles {
    /// The operator's last enable/disable (absent: the host configuration decides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub disabled_hooks: BTreeSet<String>,
    /// Set when policy quarantined the plugin; cleared only by an operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<Quarantine>,
}

/// Why and when a plugin was quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quarantine {
    pub reason: String,
    /// Unix time in milliseconds.
    pub at_ms: u64,
}

impl PluginToggles {
    fn is_empty(&self) -> bool {
        self.enabled.is_none() && self.disabled_hooks.is_empty() && self.quarantined.is_none()
    }
}

/// The whole state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub version: u32,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginToggles>,
}

impl Default for PersistedState {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            plugins: BTreeMap::new(),
        }
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read state file {}: {reason}", file.display())]
    Read { file: PathBuf, reason: String },
    #[error("state file {} is not valid: {reason} (expected a JSON object {{\"version\": {STATE_VERSION}, \"plugins\": {{…}}}}; move it away to start afresh)", file.display())]
    Invalid { file: PathBuf, reason: String },
    #[error("cannot write state file {}: {reason}", file.display())]
    Write { file: PathBuf, reason: String },
}

impl PersistedState {
    /// The state in `file`; an absent file is an empty state.
    pub fn load(file: &Path) -> Result<Self, StateFileError> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(err) => {
                return Err(StateFileError::Read {
                    file: file.to_owned(),
                    reason: err.to_string(),
                });
            }
        };
        let mut reader = serde_json::Deserializer::from_str(&text);
        let state: Self = serde_path_to_error::deserialize(&mut reader).map_err(|err| {
            StateFileError::Invalid {
                file: file.to_owned(),
                reason: format!("`{}`: {}", err.path(), err.inner()),
            }
        })?;
        if state.version != STATE_VERSION {
            return Err(StateFileError::Invalid {
                file: file.to_owned(),
                reason: format!("version {} is not supported", state.version),
            });
        }
        Ok(state)
    }

    /// Replaces `file` with this state, atomically.
    pub fn save(&self, file: &Path) -> Result<(), StateFileError> {
        let failed = |err: std::io::Error| StateFileError::Write {
            file: file.to_owned(),
            reason: err.to_string(),
        };
        let mut state = self.clone();
        state.plugins.retain(|_, toggles| !toggles.is_empty());
        let dir = file
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(dir).map_err(failed)?;
        let mut temporary = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
        let text = serde_json::to_string_pretty(&state).map_err(|err| StateFileError::Write {
            file: file.to_owned(),
            reason: err.to_string(),
        })?;
        temporary.write_all(text.as_bytes()).map_err(failed)?;
        temporary.write_all(b"\n").map_err(failed)?;
        temporary.as_file().sync_all().map_err(failed)?;
        temporary.persist(file).map_err(|err| failed(err.error))?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(failed)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_loads_back_and_empty_entries_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nested/state.json");
        let mut state = PersistedState::default();
        state.plugins.insert(
            "hello".to_owned(),
            PluginToggles {
                enabled: Some(false),
                disabled_hooks: BTreeSet::from(["greet".to_owned()]),
                quarantined: Some(Quarantine {
                    reason: "protocol violation".to_owned(),
                    at_ms: 1,
                }),
            },
        );
        state
            .plugins
            .insert("counter".to_owned(), PluginToggles::default());
        state.save(&file).unwrap();
        let loaded = PersistedState::load(&file).unwrap();
        assert_eq!(loaded.plugins.len(), 1);
        assert_eq!(loaded.plugins["hello"], state.plugins["hello"]);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_missing_file_is_empty_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        assert_eq!(
            PersistedState::load(&file).unwrap(),
            PersistedState::default()
        );
        std::fs::write(
            &file,
            "{\"version\": 1, \"plugins\": {\"a\": {\"enabled\": 3}}}",
        )
        .unwrap();
        let err = PersistedState::load(&file).unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("enabled"),
            "{err}"
        );
    }
}
