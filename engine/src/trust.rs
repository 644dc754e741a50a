//! Digests, keys, signatures, the trust store, revocation and the encrypted trust list.
//!
//! What is signed is the whole *bundle*: the Ed25519 signature covers the 147-byte
//! statement `"plugboard-bundle-v1" ‖ SHA3-512(plugin.toml) ‖ SHA3-512(library)`, so
//! editing the manifest to grant more capabilities breaks the signature just as editing the
//! library does. Every format here is a contract a third party can produce with OpenSSL
//! alone (`openssl genpkey -algorithm ed25519`, `openssl dgst -sha3-512`,
//! `openssl pkeyutl -sign -rawin`).
//!
//! Files that decide what is trusted are refused when someone else could have changed
//! them: a private key or trust-list key readable or writable by group or others, a store
//! directory or store file writable by group or others, or any of them owned by a user
//! other than the current one or root.

mod digest;
mod files;
mod keys;
mod signature;
mod store;
mod trust_list;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use digest::{
    BundleDigests, DIGEST_CHUNK_SIZE, DIGEST_LEN, Digest, DigestBuilder, STATEMENT_DOMAIN,
    STATEMENT_LEN, bundle_statement, digest_file, digest_reader,
};
pub use keys::{KEY_ID_LEN, KeyId, PrivateKey, PublicKey, write_keypair};
pub use signature::{
    BundleSignature, SIGNATURE_ALGORITHM, SIGNATURE_FILE, SIGNATURE_FORMAT, SIGNATURE_LEN,
};
pub use store::{TRUST_CONFIG_FILE, TrustStore, TrustedKeyInfo, Verified};
pub use trust_list::{
    TRUST_LIST_AAD, TRUST_LIST_MAGIC, TRUST_LIST_VERSION, TrustList, TrustListEntry, TrustListKey,
    generate_trust_list_key, open_trust_list, read_trust_list, seal_trust_list,
};

/// How far a verified bundle is trusted: whether it may run inside the engine's own
/// process or only in a confined worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustLevel {
    /// Runs only in a sandboxed worker process (the default for every pinned key).
    #[default]
    Sandboxed,
    /// May also be loaded into the engine's own process.
    InProcess,
}

impl TrustLevel {
    /// The spelling used in `trust.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustLevel::Sandboxed => "sandboxed",
            TrustLevel::InProcess => "in-process",
        }
    }
}

/// The in-process rule: a bundle that asks to run inside the host process needs a signer
/// trusted at level `in-process`. Why a signer trusted at `level` (`None`: not verified)
/// is not enough, if it is not — said the same by the engine and the CLI.
pub fn in_process_refusal(level: Option<TrustLevel>) -> Option<String> {
    let why = match level {
        Some(TrustLevel::InProcess) => return None,
        Some(level) => format!(
            "this bundle's signer is trusted at level `{level}` (to trust it that far: \
             `plugboard trust add --trust-store <dir> --level in-process <key.pub>`; or drop \
             the `[isolation]` mode to run it sandboxed)"
        ),
        None => "this bundle is not verified (development mode runs such bundles sandboxed only)"
            .to_owned(),
    };
    Some(format!(
        "`[isolation] mode = \"in-process\"` needs a signer trusted at level `in-process`; {why}"
    ))
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong while hashing, signing or deciding trust.
///
/// Each message says what was wrong and what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot {action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },

    #[error(
        "key file {path} has mode {mode:04o}, so group or others can read or write it; \
         refusing to use it. Fix: chmod 600 {path}"
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },

    #[error(
        "trust store path {path} has mode {mode:04o}, so group or others can change which \
         keys and bundles are trusted; refusing to use it. Fix: chmod go-w {path}"
    )]
    InsecureStorePath { path: PathBuf, mode: u32 },

    #[error(
        "{path} is owned by uid {owner}, neither the current user (uid {current}) nor root, \
         so that user decides what is trusted; refusing to use it. Fix: chown {current} {path}"
    )]
    UntrustedOwner {
        path: PathBuf,
        owner: u32,
        current: u32,
    },

    #[error("{path} is not a regular file; expected {expected}")]
    NotAFile {
        path: PathBuf,
        expected: &'static str,
    },

    #[error(
        "trust store {dir} does not exist or is not a directory: check the path, or create \
         the store by pinning a signer's public key (`plugboard trust add --trust-store {dir} \
         <key.pub>`)"
    )]
    StoreMissing { dir: PathBuf },

    #[error(
        "{path} is not an Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, \
         as written by `plugboard keygen` or `openssl genpkey -algorithm ed25519`): {reason}"
    )]
    InvalidPrivateKey { path: PathBuf, reason: String },

    #[error(
        "{path} is not an Ed25519 public key in SPKI PEM (`-----BEGIN PUBLIC KEY-----`, as \
         written by `plugboard keygen` or `openssl pkey -pubout`): {reason}"
    )]
    InvalidPublicKey { path: PathBuf, reason: String },

    #[error(
        "key name {name:?} is not usable as a file name: use letters, digits, '-', '_' and \
         '.', not starting with '.'"
    )]
    InvalidKeyName { name: String },

    #[error(
        "{path} already exists; refusing to overwrite a key. Choose another name or move the old file away"
    )]
    KeyExists { path: PathBuf },

    #[error("invalid SHA3-512 digest {input:?}: {reason} (expected 128 hexadecimal characters)")]
    InvalidDigest { input: String, reason: String },

    #[error("invalid key id {input:?}: {reason} (expected 16 hexadecimal characters)")]
    InvalidKeyId { input: String, reason: String },

    #[error("signature file {file} is malformed: {reason}")]
    MalformedSignature { file: PathBuf, reason: String },

    #[error(
        "signature file {file} has format {found:?}; this Plugboard reads \
         \"plugboard-signature-v1\". Re-sign the bundle with this version's `plugboard sign`"
    )]
    UnsupportedSignatureFormat { file: PathBuf, found: String },

    #[error(
        "signature file {file} uses algorithm {found:?}; only \"ed25519\" is accepted. \
         Re-sign the bundle with an Ed25519 key"
    )]
    UnsupportedSignatureAlgorithm { file: PathBuf, found: String },

    #[error(
        "the bundle was signed by key {signed_by}, but the public key given is {key}: \
         verify with the signer's public key"
    )]
    WrongKey { signed_by: KeyId, key: KeyId },

    #[error("trust store configuration {file} is invalid: {reason}")]
    InvalidTrustConfig { file: PathBuf, reason: String },

    #[error(
        "the bundle is not signed (no plugin.sig): sign it with `plugboard sign`, or run the \
         host in development mode (`--allow-unsigned`, or `allow_unsigned = true` in its \
         configuration) to load it sandboxed"
    )]
    Unsigned,

    #[error(
        "signing key {key_id} is revoked in the trust store: the bundle must be re-signed \
         with a key that is not revoked"
    )]
    RevokedKey { key_id: KeyId },

    #[error(
        "the bundle is signed by key {key_id}, which is not pinned in the trust store: if you \
         trust this signer, pin their public key with \
         `plugboard trust add --trust-store <dir> <key.pub>`"
    )]
    UnknownSigner { key_id: KeyId },

    #[error(
        "the signature by key {key_id} does not match this bundle: plugin.toml or the library \
         changed after signing, or plugin.sig is corrupt. Restore the signed files or re-sign \
         the bundle"
    )]
    BadSignature { key_id: KeyId },

    #[error(
        "this bundle is revoked: digest {digest} is on the trust store's revocation list \
         ([revoked] digests in trust.toml); use a release that is not revoked"
    )]
    RevokedDigest { digest: Digest },

    #[error(
        "{name} {version} (bundle digest {digest}) is not on the trust store's trust list: \
         if it should run, allow it with `plugboard trust allow`"
    )]
    NotOnTrustList {
        name: String,
        version: String,
        digest: Digest,
    },

    #[error(
        "trust store {dir} has no trust list: configure one first \
         ([trust_list] file and key_file in trust.toml)"
    )]
    TrustListNotConfigured { dir: PathBuf },

    #[error(
        "trust list {file} is configured in trust.toml but missing; a missing list must not \
         switch the allowlist off. Restore it, or allow a bundle with `plugboard trust allow` \
         to start a new one"
    )]
    TrustListMissing { file: PathBuf },

    #[error(
        "trust list key {path} is {length} bytes; a trust list key is exactly 32 random bytes \
         (make one with `plugboard trust list-key`)"
    )]
    InvalidTrustListKey { path: PathBuf, length: u64 },

    #[error(
        "trust list {file} is truncated: {length} bytes, but a sealed trust list has at least \
         {minimum}. Restore it from a backup"
    )]
    TrustListTruncated {
        file: PathBuf,
        length: usize,
        minimum: usize,
    },

    #[error("{file} is not a sealed Plugboard trust list (it does not start with \"PBTL\")")]
    TrustListBadMagic { file: PathBuf },

    #[error("trust list {file} has format version {version}; this Plugboard reads version 1")]
    TrustListUnsupportedVersion { file: PathBuf, version: u8 },

    #[error("trust list {file} failed authentication: wrong key or the file was modified")]
    TrustListAuthentication { file: PathBuf },

    #[error("trust list {file} decrypted, but its contents are invalid: {reason}")]
    InvalidTrustList { file: PathBuf, reason: String },
}
