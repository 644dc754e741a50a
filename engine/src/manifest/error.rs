//! What can be wrong with a manifest, worded for the person who has to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

use super::source::{line_and_column, one_line, shorten};

/// Why a manifest was refused. Every message names the file, the key (a dotted path such
/// as `hooks.greet.priority`), the line when it is known, the bad value as written and what
/// was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{}: cannot read the manifest: {error}", .file.display())]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },

    /// The file is larger than [`super::MAX_MANIFEST_BYTES`].
    #[error(
        "{}: the manifest is larger than {limit_bytes} bytes: expected a small TOML file",
        .file.display()
    )]
    TooLarge { file: PathBuf, limit_bytes: u64 },

    /// The file is not UTF-8.
    #[error(
        "{}: the manifest is not UTF-8 (invalid byte at offset {byte_offset}): expected UTF-8 TOML text",
        .file.display()
    )]
    NotUtf8 { file: PathBuf, byte_offset: usize },

    /// The text is not TOML.
    #[error("{}:{line}:{column}: invalid TOML: {message} ({context})", .file.display())]
    Syntax {
        file: PathBuf,
        line: u32,
        column: u32,
        message: String,
        /// Where: ``in `<the offending line>` ``, shortened if long — or, when that line is
        /// empty (an error found at the end of the file), ``after `<the last line>` ``.
        context: String,
    },

    /// A key the schema does not know, often a typo.
    #[error("{}: unknown key `{key}` in {section}; expected one of: {expected}", location(.file, *.line))]
    UnknownKey {
        file: PathBuf,
        line: Option<u32>,
        key: String,
        /// `[plugin]`, `[hooks.greet]`, or "the top level".
        section: String,
        /// The keys allowed there, comma-separated.
        expected: String,
    },

    /// A key that must be present is not.
    #[error("{}: missing key `{key}`: expected {expected}", location(.file, *.line))]
    MissingKey {
        file: PathBuf,
        /// The line of the table the key belongs in, when it is written in the file.
        line: Option<u32>,
        key: String,
        expected: String,
    },

    /// A value of the wrong type, out of range or otherwise not allowed.
    #[error("{}: `{key}` = {value}: expected {expected}", location(.file, *.line))]
    InvalidValue {
        file: PathBuf,
        line: Option<u32>,
        key: String,
        /// As written in the file (shortened if long).
        value: String,
        expected: String,
    },

    /// A table key that is not an allowed name (a hook, a dependency, a setting).
    #[error("{}: `{key}`: the name {name} is not allowed: expected {expected}", location(.file, *.line))]
    InvalidName {
        file: PathBuf,
        line: Option<u32>,
        key: String,
        /// Quoted.
        name: String,
        expected: String,
    },

    /// Something the manifest names does not exist in the bundle or on this host.
    #[error("{}: `{key}` = {value}: {reason}; expected {expected}", location(.file, *.line))]
    Unavailable {
        file: PathBuf,
        line: Option<u32>,
        key: String,
        value: String,
        reason: UnavailableReason,
        expected: String,
    },
}

/// Why a file the manifest names cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnavailableReason {
    NotFound,
    IsDirectory,
    NotRegularFile,
    Unreadable { kind: std::io::ErrorKind },
}

impl fmt::Display for UnavailableReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnavailableReason::NotFound => formatter.write_str("not found"),
            UnavailableReason::IsDirectory => formatter.write_str("it is a directory"),
            UnavailableReason::NotRegularFile => formatter.write_str("it is not a regular file"),
            UnavailableReason::Unreadable { kind } => write!(formatter, "cannot be read ({kind})"),
        }
    }
}

impl ManifestError {
    /// The manifest file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ManifestError::Read { file, .. }
            | ManifestError::TooLarge { file, .. }
            | ManifestError::NotUtf8 { file, .. }
            | ManifestError::Syntax { file, .. }
            | ManifestError::UnknownKey { file, .. }
            | ManifestError::MissingKey { file, .. }
            | ManifestError::InvalidValue { file, .. }
            | ManifestError::InvalidName { file, .. }
            | ManifestError::Unavailable { file, .. } => file,
        }
    }

    /// The 1-based line the error points at, when known.
    pub fn line(&self) -> Option<u32> {
        match self {
            ManifestError::Read { .. }
            | ManifestError::TooLarge { .. }
            | ManifestError::NotUtf8 { .. } => None,
            ManifestError::Syntax { line, .. } => Some(*line),
            ManifestError::UnknownKey { line, .. }
            | ManifestError::MissingKey { line, .. }
            | ManifestError::InvalidValue { line, .. }
            | ManifestError::InvalidName { line, .. }
            | ManifestError::Unavailable { line, .. } => *line,
        }
    }

    /// The dotted key the error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ManifestError::Read { .. }
            | ManifestError::TooLarge { .. }
            | ManifestError::NotUtf8 { .. }
            | ManifestError::Syntax { .. } => None,
            ManifestError::UnknownKey { key, .. }
            | ManifestError::MissingKey { key, .. }
            | ManifestError::InvalidValue { key, .. }
            | ManifestError::InvalidName { key, .. }
            | ManifestError::Unavailable { key, .. } => Some(key),
        }
    }

    pub(super) fn syntax(file: &Path, source: &str, error: &toml_edit::TomlError) -> Self {
        let offset = error.span().map_or(0, |span| span.start);
        let (line, column) = line_and_column(source, offset);
        let line_start = source
            .get(..offset)
            .and_then(|before| before.rfind('\n'))
            .map_or(0, |newline| newline + 1);
        let line_text = source
            .get(line_start..)
            .and_then(|rest| rest.lines().next())
            .unwrap_or_default();
        let context = if line_text.trim().is_empty() {
            // An unclosed array or string is found where the file ends, on no line: the
            // last line before the end is shown (where the file stops short).
            let before = source.get(..line_start).unwrap_or_default();
            match before.lines().rev().find(|text| !text.trim().is_empty()) {
                Some(last) => format!("after `{}`", shorten(last.trim())),
                None => "in an empty file".to_owned(),
            }
        } else {
            format!("in `{}`", shorten(line_text.trim()))
        };
        ManifestError::Syntax {
            file: file.to_path_buf(),
            line,
            column,
            message: one_line(error.message()),
            context,
        }
    }
}

/// `file:line`, or just `file` when the line is not known.
fn location(file: &Path, line: Option<u32>) -> String {
    match line {
        Some(line) => format!("{}:{line}", file.display()),
        None => file.display().to_string(),
    }
}
