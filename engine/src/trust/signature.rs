//! `plugin.sig`: who signed a bundle and the signature over its statement.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use super::files::{self, PUBLIC_FILE_MODE};
use super::{KeyId, TrustError};
use crate::regular_file::open_regular_file;

/// The signature file's name inside a bundle directory.
pub const SIGNATURE_FILE: &str = "plugin.sig";
/// The value of `format` in a signature file.
pub const SIGNATURE_FORMAT: &str = "plugboard-signature-v1";
/// The value of `algorithm` in a signature file.
pub const SIGNATURE_ALGORITHM: &str = "ed25519";
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// A signature file is four short lines; anything far larger is not one.
const SIGNATURE_FILE_LIMIT: usize = 64 * 1024;

/// The contents of `plugin.sig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleSignature {
    /// Id of the key that signed.
    pub key_id: KeyId,
    /// Ed25519 signature over the 147-byte bundle statement.
    pub signature: [u8; SIGNATURE_LEN],
}

/// The file as written; every field is checked after parsing, so messages can say which.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureToml {
    format: String,
    algorithm: String,
    key_id: String,
    signature: String,
}

impl BundleSignature {
    /// Reads and parses a signature file.
    pub fn read(path: &Path) -> Result<Self, TrustError> {
        let file = open_regular_file(path).map_err(files::io_error("read", path))?;
        Self::read_from(file, path)
    }

    /// Reads and parses an opened signature file, at most a little over the size any
    /// signature file has; `path` names it in errors.
    pub fn read_from(file: File, path: &Path) -> Result<Self, TrustError> {
        let mut bytes = Vec::new();
        file.take(SIGNATURE_FILE_LIMIT as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(files::io_error("read", path))?;
        let malformed = |reason: String| TrustError::MalformedSignature {
            file: path.to_owned(),
            reason,
        };
        if bytes.len() > SIGNATURE_FILE_LIMIT {
            return Err(malformed(format!(
                "it is over {SIGNATURE_FILE_LIMIT} bytes; a signature file is a few lines"
            )));
        }
        let text =
            String::from_utf8(bytes).map_err(|_| malformed("it is not UTF-8 text".to_owned()))?;
        Self::parse(&text, path)
    }

    /// Parses signature file text; `file_for_messages` names it in errors.
    pub fn parse(text: &str, file_for_messages: &Path) -> Result<Self, TrustError> {
        let file = || file_for_messages.to_owned();
        let malformed = |reason: String| TrustError::MalformedSignature {
            file: file(),
            reason,
        };
        let fields: SignatureToml =
            toml::from_str(text).map_err(|error| malformed(error.to_string()))?;
        if fields.format != SIGNATURE_FORMAT {
            return Err(TrustError::UnsupportedSignatureFormat {
                file: file(),
                found: fields.format,
            });
        }
        if fields.algorithm != SIGNATURE_ALGORITHM {
            return Err(TrustError::UnsupportedSignatureAlgorithm {
                file: file(),
                found: fields.algorithm,
            });
        }
        let key_id: KeyId = fields
            .key_id
            .parse()
            .map_err(|error: TrustError| malformed(format!("key_id: {error}")))?;
        let decoded = BASE64.decode(&fields.signature).map_err(|error| {
            malformed(format!(
                "signature is not standard base64 with padding: {error}"
            ))
        })?;
        let signature: [u8; SIGNATURE_LEN] = decoded.as_slice().try_into().map_err(|_| {
            malformed(format!(
                "signature is {} bytes; an Ed25519 signature is {SIGNATURE_LEN}",
                decoded.len()
            ))
        })?;
        Ok(BundleSignature { key_id, signature })
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        // Every value is hex or base64, so no TOML escaping is needed.
        format!(
            "format = \"{SIGNATURE_FORMAT}\"\n\
             algorithm = \"{SIGNATURE_ALGORITHM}\"\n\
             key_id = \"{}\"\n\
             signature = \"{}\"\n",
            self.key_id,
            BASE64.encode(self.signature)
        )
    }

    /// Writes the file atomically (mode 0644).
    pub fn write(&self, path: &Path) -> Result<(), TrustError> {
        files::write_atomic(path, PUBLIC_FILE_MODE, self.to_toml().as_bytes())
    }
}
