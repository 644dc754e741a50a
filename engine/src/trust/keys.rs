//! Ed25519 keys in the files OpenSSL reads and writes, and their short ids.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use super::files::{self, PUBLIC_FILE_MODE, SECRET_FILE_MODE, Sensitivity};
use super::{BundleDigests, BundleSignature, Digest, TrustError};

/// Length of a key id in bytes (16 hex characters).
pub const KEY_ID_LEN: usize = 8;

/// PEM key files are a few hundred bytes; anything far larger is not a key.
const KEY_FILE_LIMIT: u64 = 64 * 1024;

/// The short id of an Ed25519 public key: the first 8 bytes of SHA3-512 of the raw
/// 32-byte key, shown as 16 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    pub const fn from_bytes(bytes: [u8; KEY_ID_LEN]) -> Self {
        KeyId(bytes)
    }

    /// The id of a raw 32-byte Ed25519 public key.
    pub fn of_public_key(raw_key: &[u8; 32]) -> Self {
        let digest = Digest::of(raw_key);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_bytes()[..KEY_ID_LEN]);
        KeyId(id)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

impl FromStr for KeyId {
    type Err = TrustError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| TrustError::InvalidKeyId {
            input: text.to_owned(),
            reason,
        };
        if text.len() != 2 * KEY_ID_LEN {
            return Err(invalid(format!("it has {} characters", text.len())));
        }
        let mut bytes = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|error| invalid(error.to_string()))?;
        Ok(KeyId(bytes))
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 signing key. The secret is wiped from memory when this is dropped.
pub struct PrivateKey {
    signing_key: SigningKey,
    key_id: KeyId,
}

/// Whether the file at `path` begins with `pem_label` (within its first 64 bytes).
fn begins_with(path: &Path, pem_label: &str) -> bool {
    let mut start = [0u8; 64];
    std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read(&mut file, &mut start))
        .is_ok_and(|read| String::from_utf8_lossy(&start[..read]).contains(pem_label))
}

impl PrivateKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::generate(&mut OsRng))
    }

    fn from_signing_key(signing_key: SigningKey) -> Self {
        let key_id = KeyId::of_public_key(signing_key.verifying_key().as_bytes());
        PrivateKey {
            signing_key,
            key_id,
        }
    }

    /// Loads a PKCS#8 PEM private key (as `openssl genpkey -algorithm ed25519` writes it),
    /// refusing a file that group or others can read or write, as ssh does.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let invalid = |reason: String| TrustError::InvalidPrivateKey {
            path: path.to_owned(),
            reason,
        };
        let contents = files::read_checked(
            path,
            Sensitivity::Secret,
            "an Ed25519 private key",
            KEY_FILE_LIMIT,
        )
        .map_err(|err| match err {
            // A public key (readable by all, as it may be) given where the private one is
            // wanted: said as that, not as a private key with loose permissions.
            TrustError::InsecureKeyFile { .. }
                if begins_with(path, "-----BEGIN PUBLIC KEY-----") =>
            {
                invalid(
                    "this is a public key (PEM `PUBLIC KEY`); sign with the private key, the \
                     .key file beside it"
                        .to_owned(),
                )
            }
            // Not a key at all (a manifest, a library): its mode is not the problem.
            TrustError::InsecureKeyFile { .. } if !begins_with(path, "-----BEGIN") => invalid(
                "the file is no PEM key; expected the .key file `plugboard keygen` wrote"
                    .to_owned(),
            ),
            other => other,
        })?;
        let text = std::str::from_utf8(&contents)
            .map_err(|_| invalid("the file is not PEM text".to_owned()))?;
        let signing_key = SigningKey::from_pkcs8_pem(text)
            .map_err(|error| invalid(private_key_problem(text, &error)))?;
        Ok(Self::from_signing_key(signing_key))
    }

    /// PKCS#8 PEM without the optional public key, byte for byte what OpenSSL writes.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let keypair = KeypairBytes {
            secret_key: self.signing_key.to_bytes(),
            public_key: None,
        };
        keypair
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding a 32-byte Ed25519 key as PKCS#8 cannot fail")
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_verifying_key(self.signing_key.verifying_key())
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Signs the bundle statement (see [`BundleDigests::statement`]).
    pub fn sign_bundle(&self, digests: &BundleDigests) -> BundleSignature {
        let signature: Signature = self.signing_key.sign(&digests.statement());
        BundleSignature {
            key_id: self.key_id,
            signature: signature.to_bytes(),
        }
    }
}

/// Why `text` is not an Ed25519 private key, in the words of what it is instead: the
/// PKCS#8 parser's own message misleads (for another algorithm it names the OID it
/// expected, Ed25519's, as the one it found unsupported).
fn private_key_problem(text: &str, error: &dyn fmt::Display) -> String {
    const EXPECTED: &str = "expected an Ed25519 private key in PKCS#8 PEM \
                            (\"-----BEGIN PRIVATE KEY-----\"), as `plugboard keygen` writes it";
    if text.trim().is_empty() {
        return format!("the file is empty: {EXPECTED}");
    }
    let label = text
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("-----BEGIN ")?.strip_suffix("-----"));
    match label {
        None => format!("no PEM block in it: {EXPECTED}"),
        Some("PUBLIC KEY") => {
            "it holds a public key: expected the private key (the .key file `plugboard keygen` \
             wrote, not the .pub)"
                .to_owned()
        }
        Some("PRIVATE KEY") => {
            let algorithm = ed25519_dalek::pkcs8::SecretDocument::from_pem(text)
                .ok()
                .and_then(|(_, document)| {
                    ed25519_dalek::pkcs8::PrivateKeyInfo::try_from(document.as_bytes())
                        .ok()
                        .map(|info| info.algorithm.oid)
                });
            match algorithm {
                Some(oid) if oid != ed25519_dalek::pkcs8::ALGORITHM_OID => format!(
                    "its key algorithm is OID {oid}, not Ed25519 ({}): {EXPECTED}",
                    ed25519_dalek::pkcs8::ALGORITHM_OID
                ),
                _ => format!("{error}: {EXPECTED}"),
            }
        }
        Some(other) => format!("it holds a PEM \"{other}\": {EXPECTED}"),
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key with its id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    verifying_key: VerifyingKey,
    key_id: KeyId,
}

impl PublicKey {
    fn from_verifying_key(verifying_key: VerifyingKey) -> Self {
        let key_id = KeyId::of_public_key(verifying_key.as_bytes());
        PublicKey {
            verifying_key,
            key_id,
        }
    }

    /// Loads an SPKI PEM public key (as `openssl pkey -pubout` writes it).
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let contents = std::fs::read(path).map_err(files::io_error("read", path))?;
        Self::parse_pem_bytes(&contents, path)
    }

    /// Loads a public key pinned in a trust store, with the store's permission checks.
    pub(super) fn load_pinned(path: &Path) -> Result<Self, TrustError> {
        let contents = files::read_checked(
            path,
            Sensitivity::StoreFile,
            "an Ed25519 public key",
            KEY_FILE_LIMIT,
        )?;
        Self::parse_pem_bytes(&contents, path)
    }

    fn parse_pem_bytes(contents: &[u8], path: &Path) -> Result<Self, TrustError> {
        let text = std::str::from_utf8(contents).map_err(|_| TrustError::InvalidPublicKey {
            path: path.to_owned(),
            reason: "the file is not PEM text".to_owned(),
        })?;
        Self::parse_pem(text, path)
    }

    /// Parses SPKI PEM text.
    pub fn from_pem(text: &str) -> Result<Self, TrustError> {
        Self::parse_pem(text, Path::new("(PEM text)"))
    }

    fn parse_pem(text: &str, origin: &Path) -> Result<Self, TrustError> {
        let invalid = |reason: String| TrustError::InvalidPublicKey {
            path: origin.to_owned(),
            reason,
        };
        let verifying_key = VerifyingKey::from_public_key_pem(text).map_err(|error| {
            // The private key given where the public one is wanted: said as that.
            if text.contains("-----BEGIN PRIVATE KEY-----") {
                invalid(
                    "this is a private key (PEM `PRIVATE KEY`); pin the public key, the .pub \
                     file beside it — a private key is never given to a trust store"
                        .to_owned(),
                )
            } else {
                invalid(error.to_string())
            }
        })?;
        // A small-order key lets one signature match many messages; no honest key is one.
        if verifying_key.is_weak() {
            return Err(invalid("it is a weak (small-order) key".to_owned()));
        }
        Ok(Self::from_verifying_key(verifying_key))
    }

    /// SPKI PEM, as `openssl pkey -pubout` writes it.
    pub fn to_pem(&self) -> String {
        self.verifying_key
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding a 32-byte Ed25519 key as SPKI cannot fail")
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The raw 32-byte key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.verifying_key.as_bytes()
    }

    /// Checks `signature` over the bundle statement with this key, strictly (no
    /// malleable or small-order signatures).
    pub fn verify_bundle(
        &self,
        digests: &BundleDigests,
        signature: &BundleSignature,
    ) -> Result<(), TrustError> {
        if signature.key_id != self.key_id {
            return Err(TrustError::WrongKey {
                signed_by: signature.key_id,
                key: self.key_id,
            });
        }
        self.verifying_key
            .verify_strict(
                &digests.statement(),
                &Signature::from_bytes(&signature.signature),
            )
            .map_err(|_| TrustError::BadSignature {
                key_id: self.key_id,
            })
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn check_key_name(name: &str) -> Result<(), TrustError> {
    let usable = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if usable {
        Ok(())
    } else {
        Err(TrustError::InvalidKeyName {
            name: name.to_owned(),
        })
    }
}

/// Generates a key pair and writes `<dir>/<name>.key` (PKCS#8 PEM, created with mode
/// 0600) and `<dir>/<name>.pub` (SPKI PEM). Refuses to overwrite either file. Creates
/// `dir` with mode 0700 if it is missing.
pub fn write_keypair(dir: &Path, name: &str) -> Result<(KeyId, PathBuf, PathBuf), TrustError> {
    check_key_name(name)?;
    let key_path = dir.join(format!("{name}.key"));
    let pub_path = dir.join(format!("{name}.pub"));
    // Check the public file first so a refusal leaves no new private key behind.
    if pub_path.exists() {
        return Err(TrustError::KeyExists { path: pub_path });
    }
    files::ensure_key_dir(dir)?;
    let key = PrivateKey::generate();
    files::create_new_file(&key_path, SECRET_FILE_MODE, key.to_pem().as_bytes())?;
    files::create_new_file(
        &pub_path,
        PUBLIC_FILE_MODE,
        key.public_key().to_pem().as_bytes(),
    )?;
    Ok((key.key_id(), key_path, pub_path))
}
