use std::fmt;

use crate::abi;

/// What kind of failure a plugin reports; each maps to an ABI status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The hook failed.
    Failed,
    /// The plugin does not handle this hook.
    UnknownHook,
    /// The payload or config could not be decoded.
    InvalidInput,
    /// The plugin panicked; the SDK reports this, plugins do not construct it.
    Panicked,
}

impl ErrorKind {
    /// The ABI status code for this kind.
    pub const fn status(self) -> i32 {
        match self {
            Self::Failed => abi::STATUS_ERROR,
            Self::UnknownHook => abi::STATUS_UNKNOWN_HOOK,
            Self::InvalidInput => abi::STATUS_INVALID_INPUT,
            Self::Panicked => abi::STATUS_PANIC,
        }
    }
}

/// An error a plugin returns from a hook, from `create` or from `health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// A hook failure with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }

    /// The plugin was called with a hook it does not handle.
    pub fn unknown_hook(hook: &str) -> Self {
        Self {
            kind: ErrorKind::UnknownHook,
            message: format!("unknown hook `{hook}`"),
        }
    }

    /// The payload or config was not what the plugin expects.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidInput,
            message: message.into(),
        }
    }

    pub(crate) fn panicked(message: String) -> Self {
        Self {
            kind: ErrorKind::Panicked,
            message,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
