//! What an operator decided that must survive an engine restart: disabled plugins and
//! disabled hooks. A small JSON file, replaced atomically (write a temporary file beside it,
//! fsync, rename, fsync the directory), so a crash leaves the old or the new file, never a
//! torn one. Every change is a read-modify-write under an exclusive lock on a lock file
//! beside it (`<file>.lock`, left in place), so an engine and `plugboard quarantine clear`
//! writing at the same moment cannot lose each other's change.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

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

/// What one change did to a plugin's toggles, field by field: kept while the state file
/// cannot take it and replayed onto the file as it is then — so a field someone else
/// changed meanwhile (`plugboard quarantine clear` from a shell) is not put back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToggleDelta {
    enabled: FieldChange<Option<bool>>,
    quarantined: FieldChange<Option<Quarantine>>,
    hooks_disabled: BTreeSet<String>,
    hooks_enabled: BTreeSet<String>,
}

/// One field of a [`ToggleDelta`]: left as it is, or set to a value (which may be `None`:
/// a quarantine lifted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum FieldChange<T> {
    #[default]
    Unchanged,
    Set(T),
}

impl<T: Clone + PartialEq> FieldChange<T> {
    fn between(before: &T, after: &T) -> Self {
        if before == after {
            Self::Unchanged
        } else {
            Self::Set(after.clone())
        }
    }

    fn then(&mut self, later: Self) {
        if let Self::Set(_) = later {
            *self = later;
        }
    }

    fn apply(&self, field: &mut T) {
        if let Self::Set(value) = self {
            field.clone_from(value);
        }
    }
}

impl ToggleDelta {
    /// The fields `after` changed from `before`.
    pub fn between(before: &PluginToggles, after: &PluginToggles) -> Self {
        Self {
            enabled: FieldChange::between(&before.enabled, &after.enabled),
            quarantined: FieldChange::between(&before.quarantined, &after.quarantined),
            hooks_disabled: after
                .disabled_hooks
                .difference(&before.disabled_hooks)
                .cloned()
                .collect(),
            hooks_enabled: before
                .disabled_hooks
                .difference(&after.disabled_hooks)
                .cloned()
                .collect(),
        }
    }

    /// This change, then `later`.
    pub fn then(&mut self, later: Self) {
        self.enabled.then(later.enabled);
        self.quarantined.then(later.quarantined);
        for hook in later.hooks_disabled {
            self.hooks_enabled.remove(&hook);
            self.hooks_disabled.insert(hook);
        }
        for hook in later.hooks_enabled {
            self.hooks_disabled.remove(&hook);
            self.hooks_enabled.insert(hook);
        }
    }

    /// Makes the change on `toggles`.
    pub fn apply(&self, toggles: &mut PluginToggles) {
        self.enabled.apply(&mut toggles.enabled);
        self.quarantined.apply(&mut toggles.quarantined);
        for hook in &self.hooks_disabled {
            toggles.disabled_hooks.insert(hook.clone());
        }
        for hook in &self.hooks_enabled {
            toggles.disabled_hooks.remove(hook);
        }
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

    /// Applies `change` to the state in `file` and saves it, holding the file's lock from
    /// the read to the rename. Returns the state as saved.
    pub fn update(file: &Path, change: impl FnOnce(&mut Self)) -> Result<Self, StateFileError> {
        let _lock = lock(file)?;
        let mut state = Self::load(file)?;
        change(&mut state);
        state.save_unlocked(file)?;
        Ok(state)
    }

    /// Replaces `file` with this state, atomically, under the file's lock. A change of
    /// state read earlier belongs in [`PersistedState::update`], which cannot lose a change
    /// made in between.
    pub fn save(&self, file: &Path) -> Result<(), StateFileError> {
        let _lock = lock(file)?;
        self.save_unlocked(file)
    }

    fn save_unlocked(&self, file: &Path) -> Result<(), StateFileError> {
        let failed = |err: std::io::Error| StateFileError::Write {
            file: file.to_owned(),
            reason: err.to_string(),
        };
        let mut state = self.clone();
        state.plugins.retain(|_, toggles| !toggles.is_empty());
        let dir = parent_dir(file);
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

fn parent_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
}

/// The lock file of `file`: the state file itself cannot carry the lock, since every save
/// replaces it with a new inode.
pub fn lock_file_of(file: &Path) -> PathBuf {
    beside(file, ".lock")
}

/// `file`'s name with `suffix`, in its directory.
fn beside(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    file.with_file_name(name)
}

/// Opens (creating it, and its directory) the file beside `file` with `suffix`, for
/// reading and writing, to lock; errors name `file`.
fn open_beside(file: &Path, suffix: &str) -> Result<(File, PathBuf), StateFileError> {
    let beside = beside(file, suffix);
    let failed = |reason: String| StateFileError::Write {
        file: file.to_owned(),
        reason,
    };
    std::fs::create_dir_all(parent_dir(file)).map_err(|err| failed(err.to_string()))?;
    let handle = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&beside)
        .map_err(|err| failed(format!("cannot open {}: {err}", beside.display())))?;
    Ok((handle, beside))
}

/// Holds `file`'s write lock until dropped; creates its directory if needed.
fn lock(file: &Path) -> Result<Flock<File>, StateFileError> {
    let (handle, lock_file) = open_beside(file, ".lock")?;
    Flock::lock(handle, FlockArg::LockExclusive).map_err(|(_, errno)| StateFileError::Write {
        file: file.to_owned(),
        reason: format!("cannot lock {}: {errno}", lock_file.display()),
    })
}

/// An engine's claim on a state file for as long as it runs: a lock on `<file>.engine`
/// holding its pid. Two engines on one state file overwrite each other's toggles; the
/// second is told, by pid (it still runs: the writes themselves stay whole).
#[derive(Debug)]
pub struct StateFileClaim {
    _lock: Flock<File>,
}

/// What [`StateFileClaim::take`] found.
#[derive(Debug)]
pub enum Claimed {
    Claimed(StateFileClaim),
    /// Another live engine holds it; its pid as it wrote it (`None` if unreadable).
    HeldBy(Option<u32>),
}

impl StateFileClaim {
    /// Claims `file` for this engine, or says who holds it.
    pub fn take(file: &Path) -> Result<Claimed, StateFileError> {
        let (handle, claim_file) = open_beside(file, ".engine")?;
        let failed = |reason: String| StateFileError::Write {
            file: file.to_owned(),
            reason,
        };
        match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0)
                    .and_then(|()| lock.write_all(std::process::id().to_string().as_bytes()))
                    .map_err(|err| {
                        failed(format!("cannot write {}: {err}", claim_file.display()))
                    })?;
                Ok(Claimed::Claimed(Self { _lock: lock }))
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(Claimed::HeldBy(
                std::fs::read_to_string(&claim_file)
                    .ok()
                    .and_then(|text| text.trim().parse().ok()),
            )),
            Err((_, errno)) => Err(failed(format!(
                "cannot lock {}: {errno}",
                claim_file.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change kept while the file could not take it is replayed as what it changed: a
    /// quarantine cleared from a shell meanwhile stays cleared when a disable kept in
    /// memory is written.
    #[test]
    fn a_kept_change_replays_only_the_fields_it_changed() {
        let quarantined = PluginToggles {
            quarantined: Some(Quarantine {
                reason: "protocol_violation".to_owned(),
                at_ms: 1,
            }),
            ..PluginToggles::default()
        };
        let mut disabled = quarantined.clone();
        disabled.enabled = Some(false);
        disabled.disabled_hooks.insert("greet".to_owned());
        let mut delta = ToggleDelta::between(&quarantined, &disabled);
        let mut hook_on_again = disabled.clone();
        hook_on_again.disabled_hooks.remove("greet");
        delta.then(ToggleDelta::between(&disabled, &hook_on_again));
        // On disk meanwhile: the quarantine cleared, another hook turned off.
        let mut on_disk = PluginToggles::default();
        on_disk.disabled_hooks.insert("other".to_owned());
        delta.apply(&mut on_disk);
        assert_eq!(on_disk.enabled, Some(false));
        assert_eq!(on_disk.quarantined, None, "the shell's clear stands");
        assert_eq!(
            on_disk.disabled_hooks,
            BTreeSet::from(["other".to_owned()]),
            "greet was turned off and on again; other was not touched"
        );
    }

    #[test]
    fn a_second_claim_on_a_state_file_names_the_first_holder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let Claimed::Claimed(first) = StateFileClaim::take(&file).unwrap() else {
            panic!("the first claim succeeds");
        };
        match StateFileClaim::take(&file).unwrap() {
            Claimed::HeldBy(pid) => assert_eq!(pid, Some(std::process::id())),
            Claimed::Claimed(_) => panic!("a second claim succeeded while the first is held"),
        }
        drop(first);
        assert!(matches!(
            StateFileClaim::take(&file).unwrap(),
            Claimed::Claimed(_)
        ));
    }

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
        // No temporary file is left beside it, only the lock file.
        let mut names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["state.json", "state.json.lock"]);
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

    #[test]
    fn updates_from_many_writers_are_all_kept() {
        // Each writer adds its own plugin in a read-modify-write of its own; without the
        // lock, a writer that read before another's rename would drop that one's entry.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let writers: Vec<_> = (0..8)
            .map(|writer| {
                let file = file.clone();
                std::thread::spawn(move || {
                    for round in 0..10 {
                        PersistedState::update(&file, |state| {
                            state.plugins.insert(
                                format!("w{writer}-{round}"),
                                PluginToggles {
                                    enabled: Some(false),
                                    ..PluginToggles::default()
                                },
                            );
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(PersistedState::load(&file).unwrap().plugins.len(), 80);
    }
}
