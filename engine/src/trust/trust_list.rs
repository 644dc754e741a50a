//! The trust list: which (name, version, bundle digest) may run, kept encrypted at rest.
//!
//! Sealed file: `PBTL` ‖ version byte 1 ‖ 24-byte random nonce ‖ XChaCha20-Poly1305
//! ciphertext and tag, with the associated data `plugboard-trust-list-v1`. The plaintext is
//! TOML: `[[entry]]` tables with `name`, `version` and `digest` (bundle digest, hex).

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::files::{self, SECRET_FILE_MODE, Sensitivity};
use super::{Digest, TrustError};

/// First bytes of a sealed trust list.
pub const TRUST_LIST_MAGIC: &[u8; 4] = b"PBTL";
/// Format version byte after the magic.
pub const TRUST_LIST_VERSION: u8 = 1;
/// Associated data bound into the authentication tag.
pub const TRUST_LIST_AAD: &[u8] = b"plugboard-trust-list-v1";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = TRUST_LIST_MAGIC.len() + 1 + NONCE_LEN;
/// The shortest sealed file: header and the tag of an empty plaintext.
const MIN_SEALED_LEN: usize = HEADER_LEN + TAG_LEN;
/// Where in-memory data is named in messages.
const IN_MEMORY: &str = "(in memory)";
/// A key file is 32 bytes; this bounds how much of a wrong file is read.
const KEY_FILE_LIMIT: u64 = 4096;

/// One bundle allowed to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustListEntry {
    pub name: String,
    pub version: String,
    /// The bundle digest ([`BundleDigests::bundle_digest`](super::BundleDigests::bundle_digest)).
    pub digest: Digest,
}

/// The decrypted trust list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustList {
    #[serde(rename = "entry", default)]
    pub entries: Vec<TrustListEntry>,
}

impl TrustList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether exactly this name, version and bundle digest are allowed.
    pub fn contains(&self, name: &str, version: &str, digest: &Digest) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.name == name && entry.version == version && entry.digest == *digest)
    }

    /// Adds an entry; returns false if it was already there.
    pub fn allow(&mut self, name: &str, version: &str, digest: Digest) -> bool {
        if self.contains(name, version, &digest) {
            return false;
        }
        self.entries.push(TrustListEntry {
            name: name.to_owned(),
            version: version.to_owned(),
            digest,
        });
        true
    }
}

/// The 32-byte key that seals the trust list. Wiped from memory when dropped.
#[derive(Clone)]
pub struct TrustListKey(Zeroizing<[u8; KEY_LEN]>);

impl TrustListKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(key.as_mut());
        TrustListKey(key)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        TrustListKey(Zeroizing::new(bytes))
    }

    /// Loads a key file: exactly 32 raw bytes, readable and writable by its owner only.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        // Read a little more than a key so a wrong length is reported as such.
        let contents = files::read_checked(
            path,
            Sensitivity::Secret,
            "a 32-byte trust list key",
            KEY_FILE_LIMIT,
        )?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if contents.len() != KEY_LEN {
            return Err(TrustError::InvalidTrustListKey {
                path: path.to_owned(),
                length: contents.len() as u64,
            });
        }
        key.copy_from_slice(&contents);
        Ok(TrustListKey(key))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }
}

impl fmt::Debug for TrustListKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrustListKey(..)")
    }
}

/// Writes a new random key to `path`, created with mode 0600; refuses to overwrite.
pub fn generate_trust_list_key(path: &Path) -> Result<TrustListKey, TrustError> {
    let key = TrustListKey::generate();
    files::create_new_file(path, SECRET_FILE_MODE, key.0.as_ref())?;
    Ok(key)
}

/// Encrypts `list` under `key` with a fresh random nonce.
pub fn seal_trust_list(key: &TrustListKey, list: &TrustList) -> Vec<u8> {
    let plaintext = Zeroizing::new(
        toml::to_string(list).expect("a list of strings and digests always serializes to TOML"),
    );
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ciphertext = key
        .cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad: TRUST_LIST_AAD,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any plaintext shorter than 256 GiB");
    let mut sealed = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    sealed.extend_from_slice(TRUST_LIST_MAGIC);
    sealed.push(TRUST_LIST_VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// Decrypts and parses a sealed trust list.
pub fn open_trust_list(key: &TrustListKey, sealed: &[u8]) -> Result<TrustList, TrustError> {
    open_named(key, sealed, Path::new(IN_MEMORY))
}

/// Reads, decrypts and parses a sealed trust list file.
pub fn read_trust_list(key: &TrustListKey, path: &Path) -> Result<TrustList, TrustError> {
    let sealed = std::fs::read(path).map_err(files::io_error("read", path))?;
    open_named(key, &sealed, path)
}

pub(super) fn open_named(
    key: &TrustListKey,
    sealed: &[u8],
    file: &Path,
) -> Result<TrustList, TrustError> {
    let magic_len = TRUST_LIST_MAGIC.len();
    if !sealed.starts_with(&TRUST_LIST_MAGIC[..sealed.len().min(magic_len)]) {
        return Err(TrustError::TrustListBadMagic {
            file: file.to_owned(),
        });
    }
    if sealed.len() < MIN_SEALED_LEN {
        return Err(TrustError::TrustListTruncated {
            file: file.to_owned(),
            length: sealed.len(),
            minimum: MIN_SEALED_LEN,
        });
    }
    let version = sealed[magic_len];
    if version != TRUST_LIST_VERSION {
        return Err(TrustError::TrustListUnsupportedVersion {
            file: file.to_owned(),
            version,
        });
    }
    let nonce = XNonce::from_slice(&sealed[magic_len + 1..HEADER_LEN]);
    let plaintext = Zeroizing::new(
        key.cipher()
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: TRUST_LIST_AAD,
                },
            )
            .map_err(|_| TrustError::TrustListAuthentication {
                file: file.to_owned(),
            })?,
    );
    let invalid = |reason: String| TrustError::InvalidTrustList {
        file: file.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(&plaintext).map_err(|_| invalid("not UTF-8".to_owned()))?;
    toml::from_str(text).map_err(|error| invalid(error.to_string()))
}
