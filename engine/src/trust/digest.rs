//! SHA3-512 digests of bundle files and the signed bundle statement.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest as _, Sha3_512};

use super::TrustError;

/// Length of a SHA3-512 digest in bytes.
pub const DIGEST_LEN: usize = 64;

/// How much [`digest_reader`] reads at a time.
pub const DIGEST_CHUNK_SIZE: usize = 1 << 20;

/// Domain separation for the signed statement: a signature over a bundle can never be
/// mistaken for a signature over anything else.
pub const STATEMENT_DOMAIN: &[u8] = b"plugboard-bundle-v1";

/// Length of the signed statement: domain ‖ manifest digest ‖ library digest.
pub const STATEMENT_LEN: usize = 19 + 2 * DIGEST_LEN;

// The domain string is part of the format; its length is fixed with it.
const _: () = assert!(STATEMENT_DOMAIN.len() == 19);

/// A SHA3-512 digest. Displayed, parsed and serialized as 128 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; DIGEST_LEN]);

impl Digest {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; DIGEST_LEN]) -> Self {
        Digest(bytes)
    }

    /// SHA3-512 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut builder = DigestBuilder::new();
        builder.update(bytes);
        builder.finish()
    }

    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// 128 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 128 hex characters (either case).
    pub fn from_hex(text: &str) -> Result<Self, TrustError> {
        let invalid = |reason: String| TrustError::InvalidDigest {
            input: text.to_owned(),
            reason,
        };
        if text.len() != 2 * DIGEST_LEN {
            return Err(invalid(format!("it has {} characters", text.len())));
        }
        let mut bytes = [0u8; DIGEST_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|error| invalid(error.to_string()))?;
        Ok(Digest(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = TrustError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Digest::from_hex(text)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Digest::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA3-512: feed it chunk by chunk (for example while copying a library into
/// a memfd), then [`finish`](DigestBuilder::finish). Also an [`io::Write`] sink.
#[derive(Clone, Default)]
pub struct DigestBuilder {
    hasher: Sha3_512,
}

impl DigestBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest(self.hasher.finalize().into())
    }
}

impl fmt::Debug for DigestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestBuilder").finish_non_exhaustive()
    }
}

impl io::Write for DigestBuilder {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// SHA3-512 of everything `reader` yields, read once in 1 MiB chunks.
pub fn digest_reader(mut reader: impl Read) -> io::Result<Digest> {
    let mut chunk = vec![0u8; DIGEST_CHUNK_SIZE];
    let mut builder = DigestBuilder::new();
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(builder.finish()),
            Ok(read) => builder.update(&chunk[..read]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// SHA3-512 of a file's contents.
pub fn digest_file(path: &Path) -> Result<Digest, TrustError> {
    let io_error = |action, source| TrustError::Io {
        action,
        path: path.to_owned(),
        error: source,
    };
    let file = std::fs::File::open(path).map_err(|source| io_error("open", source))?;
    digest_reader(file).map_err(|source| io_error("read", source))
}

/// The exact bytes a bundle signature covers:
/// `"plugboard-bundle-v1"` ‖ SHA3-512(plugin.toml) ‖ SHA3-512(library).
pub fn bundle_statement(manifest: &Digest, library: &Digest) -> [u8; STATEMENT_LEN] {
    let mut statement = [0u8; STATEMENT_LEN];
    let (domain, digests) = statement.split_at_mut(STATEMENT_DOMAIN.len());
    let (manifest_part, library_part) = digests.split_at_mut(DIGEST_LEN);
    domain.copy_from_slice(STATEMENT_DOMAIN);
    manifest_part.copy_from_slice(manifest.as_bytes());
    library_part.copy_from_slice(library.as_bytes());
    statement
}

/// The two digests that identify a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BundleDigests {
    /// SHA3-512 of `plugin.toml`.
    pub manifest: Digest,
    /// SHA3-512 of the library.
    pub library: Digest,
}

impl BundleDigests {
    pub fn new(manifest: Digest, library: Digest) -> Self {
        BundleDigests { manifest, library }
    }

    /// Digests of in-memory manifest and library bytes.
    pub fn of(manifest: &[u8], library: &[u8]) -> Self {
        BundleDigests::new(Digest::of(manifest), Digest::of(library))
    }

    /// The 147-byte statement a signature covers.
    pub fn statement(&self) -> [u8; STATEMENT_LEN] {
        bundle_statement(&self.manifest, &self.library)
    }

    /// SHA3-512 of the statement: one digest naming the whole bundle, used by revocation
    /// lists and the trust list.
    pub fn bundle_digest(&self) -> Digest {
        Digest::of(&self.statement())
    }
}
