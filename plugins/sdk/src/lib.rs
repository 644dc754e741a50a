//! `plugboard-sdk`: what a Plugboard plugin author depends on.
//!
//! Implement [`Plugin`] for a type and export it with [`export_plugin!`]; build the crate as
//! a `cdylib`. The macro builds the C table described in [`abi`] and catches panics at the
//! boundary, so a panicking hook becomes an error reply, never unwinding into the host.
//!
//! ```
//! use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn create(_host: Host, _config: Config) -> Result<Self, Error> {
//!         Ok(Echo)
//!     }
//!
//!     fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {
//!         match hook {
//!             "echo" => Ok(payload.to_vec()),
//!             other => Err(Error::unknown_hook(other)),
//!         }
//!     }
//! }
//!
//! export_plugin!(Echo);
//! ```
//!
//! The SDK is deliberately light: no async runtime, no engine. The `host` feature adds the
//! host side of the ABI (open a library, check its ABI version, call it), and `testing`
//! builds on it so a plugin's own tests can load the built library and call its hooks.

pub mod abi;
mod config;
mod error;
#[doc(hidden)]
pub mod export;

#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::Config;
pub use error::{Error, ErrorKind};
pub use export::{EmitError, Host, LogLevel};

/// What a plugin is: created once with its host handle and settings, then called with
/// hooks, possibly from several threads at once (hence `Sync`: keep mutable state behind
/// atomics or locks).
pub trait Plugin: Send + Sync + Sized + 'static {
    /// Creates the instance. `config` holds the manifest defaults merged with the host's
    /// overrides, already validated against the manifest's `[config]` schema.
    fn create(host: Host, config: Config) -> Result<Self, Error>;

    /// Handles one hook call and returns the reply bytes.
    fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, Error>;

    /// Reports whether the plugin can do its work. Healthy unless overridden.
    fn health(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// JSON helpers for payloads, for plugins that speak JSON.
pub mod json {
    use crate::Error;

    /// Decodes a JSON payload, naming what was wrong on failure.
    pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(payload)
            .map_err(|err| Error::invalid_input(format!("payload is not the expected JSON: {err}")))
    }

    /// Encodes a reply as JSON.
    pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(value)
            .map_err(|err| Error::new(format!("cannot encode reply as JSON: {err}")))
    }
}
