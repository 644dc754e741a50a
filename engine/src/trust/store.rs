//! The trust store: pinned public keys, their trust levels, revocations and the optional
//! encrypted trust list, all in one directory that only its owner may change.
//!
//! ```text
//! <store>/<anything>.pub     pinned Ed25519 public keys (SPKI PEM)
//! <store>/trust.toml         optional:
//!     [keys.<key_id>]
//!     level = "in-process"    # or "sandboxed", the default for pinned keys not listed
//!     [revoked]
//!     keys = ["<key_id>", ...]
//!     digests = ["<bundle digest or library digest>", ...]
//!     [trust_list]
//!     file = "trust-list.sealed"    # relative to the store
//!     key_file = "trust-list.key"   # absolute or relative to the store; mode 0600
//! <store>/.trust.lock        held while `plugboard trust` edits the store
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use toml_edit::{Array, DocumentMut, Item, Table, TableLike, Value};

use super::files::{self, PUBLIC_FILE_MODE, SECRET_FILE_MODE, Sensitivity};
use super::trust_list::{self, TrustList, TrustListKey};
use super::{BundleDigests, BundleSignature, Digest, KeyId, PublicKey, TrustError, TrustLevel};

/// The store's configuration file.
pub const TRUST_CONFIG_FILE: &str = "trust.toml";
/// The sealed trust list's file name when the store configures one.
const DEFAULT_TRUST_LIST_FILE: &str = "trust-list.sealed";
/// Serializes concurrent edits of one store (two `plugboard trust` commands at once must
/// not lose a revocation).
const LOCK_FILE: &str = ".trust.lock";
const CONFIG_FILE_LIMIT: u64 = 16 * 1024 * 1024;
const SEALED_LIST_LIMIT: u64 = 256 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustConfig {
    #[serde(default)]
    keys: BTreeMap<KeyId, KeyConfig>,
    #[serde(default)]
    revoked: Revocations,
    trust_list: Option<TrustListConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    #[serde(default)]
    level: TrustLevel,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revocations {
    #[serde(default)]
    keys: Vec<KeyId>,
    #[serde(default)]
    digests: Vec<Digest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustListConfig {
    file: PathBuf,
    key_file: PathBuf,
}

impl TrustListConfig {
    fn sealed_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.file)
    }

    fn key_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.key_file)
    }
}

#[derive(Debug)]
struct PinnedKey {
    key: PublicKey,
    file: PathBuf,
    level: TrustLevel,
}

#[derive(Debug)]
struct LoadedTrustList {
    file: PathBuf,
    list: TrustList,
}

/// A pinned key as `plugboard trust list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeyInfo {
    pub key_id: KeyId,
    pub level: TrustLevel,
    /// The `.pub` file that pins it.
    pub file: PathBuf,
    /// Revoked keys stay pinned but verify nothing.
    pub revoked: bool,
}

/// A bundle that passed every check, and how far it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub key_id: KeyId,
    pub level: TrustLevel,
}

/// A loaded, checked trust store. Loading is all or nothing: any unsafe or unreadable
/// file refuses the whole store.
#[derive(Debug)]
pub struct TrustStore {
    dir: PathBuf,
    keys: BTreeMap<KeyId, PinnedKey>,
    revoked_keys: BTreeSet<KeyId>,
    revoked_digests: BTreeSet<Digest>,
    trust_list: Option<LoadedTrustList>,
}

impl TrustStore {
    /// Loads the store in `dir`, refusing it if the directory or any file it reads is
    /// writable by group or others (or owned by another user), a key file is readable by
    /// them, or anything fails to parse.
    pub fn open(dir: &Path) -> Result<TrustStore, TrustError> {
        files::check_store_dir(dir)?;
        let config = load_config(dir)?;

        let mut keys = BTreeMap::new();
        for file in pinned_key_files(dir)? {
            let key = PublicKey::load_pinned(&file)?;
            let key_id = key.key_id();
            let level = config
                .keys
                .get(&key_id)
                .map_or(TrustLevel::default(), |key_config| key_config.level);
            // Files are visited in name order, so which file is shown for a key pinned
            // twice does not change between runs.
            keys.entry(key_id).or_insert(PinnedKey { key, file, level });
        }

        let trust_list = match &config.trust_list {
            Some(list_config) => Some(load_trust_list(dir, list_config)?),
            None => None,
        };

        Ok(TrustStore {
            dir: dir.to_owned(),
            keys,
            revoked_keys: config.revoked.keys.into_iter().collect(),
            revoked_digests: config.revoked.digests.into_iter().collect(),
            trust_list,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Decides whether a bundle may run. Checks, in order: bundle not revoked (whoever
    /// signed it, or nobody), signed at all, signer not revoked, signer pinned, signature
    /// valid, bundle on the trust list (when the store has one).
    pub fn verify(
        &self,
        digests: &BundleDigests,
        signature: Option<&BundleSignature>,
        name: &str,
        version: &str,
    ) -> Result<Verified, TrustError> {
        let bundle_digest = digests.bundle_digest();
        for digest in [bundle_digest, digests.library] {
            if self.revoked_digests.contains(&digest) {
                return Err(TrustError::RevokedDigest { digest });
            }
        }
        let Some(signature) = signature else {
            return Err(TrustError::Unsigned);
        };
        let key_id = signature.key_id;
        if self.revoked_keys.contains(&key_id) {
            return Err(TrustError::RevokedKey { key_id });
        }
        let Some(pinned) = self.keys.get(&key_id) else {
            return Err(TrustError::UnknownSigner { key_id });
        };
        pinned.key.verify_bundle(digests, signature)?;
        if let Some(trust_list) = &self.trust_list {
            if !trust_list.list.contains(name, version, &bundle_digest) {
                return Err(TrustError::NotOnTrustList {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    digest: bundle_digest,
                });
            }
        }
        Ok(Verified {
            key_id,
            level: pinned.level,
        })
    }

    /// Pinned keys, in key id order.
    pub fn list(&self) -> Vec<TrustedKeyInfo> {
        self.keys
            .iter()
            .map(|(key_id, pinned)| TrustedKeyInfo {
                key_id: *key_id,
                level: pinned.level,
                file: pinned.file.clone(),
                revoked: self.revoked_keys.contains(key_id),
            })
            .collect()
    }

    /// The public key pinned under `key_id`, if any.
    pub fn key(&self, key_id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(key_id).map(|pinned| &pinned.key)
    }

    pub fn revoked_keys(&self) -> &BTreeSet<KeyId> {
        &self.revoked_keys
    }

    pub fn revoked_digests(&self) -> &BTreeSet<Digest> {
        &self.revoked_digests
    }

    /// The decrypted trust list, when the store has one.
    pub fn trust_list(&self) -> Option<&TrustList> {
        self.trust_list.as_ref().map(|loaded| &loaded.list)
    }

    /// The sealed trust list's path, when the store has one.
    pub fn trust_list_file(&self) -> Option<&Path> {
        self.trust_list.as_ref().map(|loaded| loaded.file.as_path())
    }

    /// Pins the public key in `pub_file`: writes it into the store as `<key_id>.pub` and
    /// records its level (creating the store with mode 0700 if it is missing). A revoked
    /// key is refused; lift the revocation in trust.toml first if that is really meant.
    pub fn add_key(dir: &Path, pub_file: &Path, level: TrustLevel) -> Result<KeyId, TrustError> {
        let key = PublicKey::load(pub_file)?;
        let key_id = key.key_id();
        files::ensure_store_dir(dir)?;
        let _lock = lock_store(dir)?;
        if load_config(dir)?.revoked.keys.contains(&key_id) {
            return Err(TrustError::RevokedKey { key_id });
        }
        let pinned_path = dir.join(format!("{key_id}.pub"));
        files::write_atomic(&pinned_path, PUBLIC_FILE_MODE, key.to_pem().as_bytes())?;
        edit_config(dir, |doc, file| set_key_level(doc, file, key_id, level))?;
        Ok(key_id)
    }

    /// Revokes a key: nothing it signed verifies any more, even while it stays pinned.
    pub fn revoke_key(dir: &Path, key_id: KeyId) -> Result<(), TrustError> {
        // Only `add_key` creates a store: a mistyped path must not get a store of its own.
        files::check_store_dir(dir)?;
        let _lock = lock_store(dir)?;
        edit_config(dir, |doc, file| {
            add_to_revoked(doc, file, "keys", &key_id.to_string(), |text| {
                text.parse::<KeyId>().ok() == Some(key_id)
            })
        })
    }

    /// Revokes a bundle digest or a library digest.
    pub fn revoke_digest(dir: &Path, digest: Digest) -> Result<(), TrustError> {
        // Only `add_key` creates a store: a mistyped path must not get a store of its own.
        files::check_store_dir(dir)?;
        let _lock = lock_store(dir)?;
        edit_config(dir, |doc, file| {
            add_to_revoked(doc, file, "digests", &digest.to_hex(), |text| {
                Digest::from_hex(text).ok() == Some(digest)
            })
        })
    }

    /// Gives the store a trust list sealed with the key in `key_file` (absolute or
    /// relative to the store). The key is generated (mode 0600) if the file is missing and
    /// an empty list is sealed if the store has none yet. Once a store has a trust list,
    /// only bundles on it verify.
    pub fn enable_trust_list(dir: &Path, key_file: &Path) -> Result<(), TrustError> {
        // Only `add_key` creates a store: a mistyped path must not get a store of its own.
        files::check_store_dir(dir)?;
        let _lock = lock_store(dir)?;
        let config_path = dir.join(TRUST_CONFIG_FILE);
        let config = load_config(dir)?;
        if let Some(existing) = &config.trust_list {
            if existing.key_file != key_file {
                return Err(TrustError::InvalidTrustConfig {
                    file: config_path,
                    reason: format!(
                        "the trust list is already sealed with key_file {}; edit trust.toml \
                         and re-seal the list to change its key",
                        existing.key_file.display()
                    ),
                });
            }
        }
        let key_file_text = key_file
            .to_str()
            .ok_or_else(|| TrustError::InvalidTrustConfig {
                file: config_path.clone(),
                reason: format!("key_file {} is not valid UTF-8", key_file.display()),
            })?;
        let list_config = TrustListConfig {
            file: config.trust_list.as_ref().map_or_else(
                || DEFAULT_TRUST_LIST_FILE.into(),
                |existing| existing.file.clone(),
            ),
            key_file: key_file.to_owned(),
        };

        let key_path = list_config.key_path(dir);
        let key = if key_path.exists() {
            TrustListKey::load(&key_path)?
        } else {
            trust_list::generate_trust_list_key(&key_path)?
        };
        let sealed_path = list_config.sealed_path(dir);
        match read_sealed_list(&key, &sealed_path) {
            // An existing list must open with this key, or verification would fail later.
            Ok(_) => {}
            Err(TrustError::TrustListMissing { .. }) => {
                let sealed = trust_list::seal_trust_list(&key, &TrustList::new());
                files::write_atomic(&sealed_path, PUBLIC_FILE_MODE, &sealed)?;
            }
            Err(error) => return Err(error),
        }

        if config.trust_list.is_none() {
            let file_text = list_config.file.to_string_lossy().into_owned();
            edit_config(dir, |doc, _| {
                let mut table = Table::new();
                table.insert("file", toml_edit::value(file_text));
                table.insert("key_file", toml_edit::value(key_file_text));
                doc.insert("trust_list", Item::Table(table));
                Ok(true)
            })?;
        }
        Ok(())
    }

    /// Adds (name, version, bundle digest) to the store's encrypted trust list. Returns
    /// false if it was already there.
    pub fn allow_bundle(
        dir: &Path,
        name: &str,
        version: &str,
        bundle_digest: Digest,
    ) -> Result<bool, TrustError> {
        files::check_store_dir(dir)?;
        let _lock = lock_store(dir)?;
        let Some(list_config) = load_config(dir)?.trust_list else {
            return Err(TrustError::TrustListNotConfigured {
                dir: dir.to_owned(),
            });
        };
        let key = TrustListKey::load(&list_config.key_path(dir))?;
        let sealed_path = list_config.sealed_path(dir);
        // The first bundle allowed starts the list (after `trust list-key` and editing
        // trust.toml by hand, no sealed file exists yet).
        let mut list = match read_sealed_list(&key, &sealed_path) {
            Err(TrustError::TrustListMissing { .. }) => TrustList::new(),
            other => other?,
        };
        if !list.allow(name, version, bundle_digest) {
            return Ok(false);
        }
        let sealed = trust_list::seal_trust_list(&key, &list);
        files::write_atomic(&sealed_path, PUBLIC_FILE_MODE, &sealed)?;
        Ok(true)
    }
}

/// The `*.pub` files in the store, in name order.
fn pinned_key_files(dir: &Path) -> Result<Vec<PathBuf>, TrustError> {
    let mut pinned = Vec::new();
    for entry in fs::read_dir(dir).map_err(files::io_error("list", dir))? {
        let path = entry.map_err(files::io_error("list", dir))?.path();
        if path.extension().is_some_and(|extension| extension == "pub") {
            pinned.push(path);
        }
    }
    pinned.sort();
    Ok(pinned)
}

/// trust.toml's text, or `None` when the store has none.
fn read_config_text(path: &Path) -> Result<Option<String>, TrustError> {
    let bytes = match files::read_checked(
        path,
        Sensitivity::StoreFile,
        "the trust store configuration",
        CONFIG_FILE_LIMIT,
    ) {
        Ok(bytes) => bytes,
        Err(TrustError::Io {
            action: "open",
            error: source,
            ..
        }) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| TrustError::InvalidTrustConfig {
            file: path.to_owned(),
            reason: "it is not UTF-8 text".to_owned(),
        })
}

fn parse_config(text: &str, path: &Path) -> Result<TrustConfig, TrustError> {
    toml::from_str(text).map_err(|error| TrustError::InvalidTrustConfig {
        file: path.to_owned(),
        reason: error.to_string(),
    })
}

fn load_config(dir: &Path) -> Result<TrustConfig, TrustError> {
    let path = dir.join(TRUST_CONFIG_FILE);
    match read_config_text(&path)? {
        Some(text) => parse_config(&text, &path),
        None => Ok(TrustConfig::default()),
    }
}

fn read_sealed_list(key: &TrustListKey, path: &Path) -> Result<TrustList, TrustError> {
    let sealed = match files::read_checked(
        path,
        Sensitivity::StoreFile,
        "a sealed trust list",
        SEALED_LIST_LIMIT,
    ) {
        Ok(sealed) => sealed,
        Err(TrustError::Io {
            action: "open",
            error: source,
            ..
        }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(TrustError::TrustListMissing {
                file: path.to_owned(),
            });
        }
        Err(error) => return Err(error),
    };
    trust_list::open_named(key, &sealed, path)
}

fn load_trust_list(dir: &Path, config: &TrustListConfig) -> Result<LoadedTrustList, TrustError> {
    let key = TrustListKey::load(&config.key_path(dir))?;
    let file = config.sealed_path(dir);
    let list = read_sealed_list(&key, &file)?;
    Ok(LoadedTrustList { file, list })
}

/// Holds the store's edit lock until dropped.
fn lock_store(dir: &Path) -> Result<Flock<File>, TrustError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(SECRET_FILE_MODE)
        .open(&path)
        .map_err(files::io_error("create lock file", &path))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| TrustError::Io {
        action: "lock",
        path,
        error: io::Error::from(errno),
    })
}

/// Applies `edit` to trust.toml, keeping the user's comments and layout, and replaces the
/// file atomically if `edit` reports a change. Refuses to edit a file that does not parse
/// and to write one that would not.
fn edit_config(
    dir: &Path,
    edit: impl FnOnce(&mut DocumentMut, &Path) -> Result<bool, TrustError>,
) -> Result<(), TrustError> {
    let path = dir.join(TRUST_CONFIG_FILE);
    let text = read_config_text(&path)?.unwrap_or_default();
    parse_config(&text, &path)?;
    let mut doc: DocumentMut =
        text.parse().map_err(
            |error: toml_edit::TomlError| TrustError::InvalidTrustConfig {
                file: path.clone(),
                reason: error.to_string(),
            },
        )?;
    if !edit(&mut doc, &path)? {
        return Ok(());
    }
    let new_text = doc.to_string();
    parse_config(&new_text, &path)?;
    files::write_atomic(&path, PUBLIC_FILE_MODE, new_text.as_bytes())
}

fn not_a_table(file: &Path, key: &str) -> TrustError {
    TrustError::InvalidTrustConfig {
        file: file.to_owned(),
        reason: format!("`{key}` must be a table"),
    }
}

/// The table under `key`, created (as `[key]`, or only as a dotted prefix when
/// `implicit`) if missing.
fn table_entry<'a>(
    parent: &'a mut dyn TableLike,
    key: &str,
    implicit: bool,
    file: &Path,
) -> Result<&'a mut dyn TableLike, TrustError> {
    parent
        .entry(key)
        .or_insert_with(|| {
            let mut table = Table::new();
            table.set_implicit(implicit);
            Item::Table(table)
        })
        .as_table_like_mut()
        .ok_or_else(|| not_a_table(file, key))
}

fn set_key_level(
    doc: &mut DocumentMut,
    file: &Path,
    key_id: KeyId,
    level: TrustLevel,
) -> Result<bool, TrustError> {
    if level == TrustLevel::Sandboxed && doc.get("keys").is_none() {
        return Ok(false);
    }
    let keys = table_entry(doc.as_table_mut(), "keys", true, file)?;
    // Drop every spelling of this key's entry (hex may be written in either case).
    let existing: Vec<String> = keys
        .iter()
        .filter(|(name, _)| name.parse::<KeyId>().ok() == Some(key_id))
        .map(|(name, _)| name.to_owned())
        .collect();
    for name in &existing {
        keys.remove(name);
    }
    match level {
        // Sandboxed is the default: no entry needed.
        TrustLevel::Sandboxed => Ok(!existing.is_empty()),
        TrustLevel::InProcess => {
            let mut entry = Table::new();
            entry.insert("level", toml_edit::value(level.as_str()));
            keys.insert(&key_id.to_string(), Item::Table(entry));
            Ok(true)
        }
    }
}

/// Appends `value` to `[revoked] <list>` unless an entry already `matches`.
fn add_to_revoked(
    doc: &mut DocumentMut,
    file: &Path,
    list: &str,
    value: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<bool, TrustError> {
    let revoked = table_entry(doc.as_table_mut(), "revoked", false, file)?;
    let array = revoked
        .entry(list)
        .or_insert_with(|| Item::Value(Value::Array(Array::new())))
        .as_array_mut()
        .ok_or_else(|| TrustError::InvalidTrustConfig {
            file: file.to_owned(),
            reason: format!("`revoked.{list}` must be an array"),
        })?;
    if array.iter().any(|item| item.as_str().is_some_and(&matches)) {
        return Ok(false);
    }
    array.push(value);
    Ok(true)
}
