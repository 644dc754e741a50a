//! `plugboard-engine`: everything in Plugboard that is not drawing.
//!
//! A bundle directory (`plugin.toml`, the library, `plugin.sig`) is read once by
//! [`bundle::Bundle::open`]: the manifest is parsed and validated ([`manifest`]), the library
//! bytes are hashed while they are copied into a sealed memfd ([`loader`]), and the
//! signature over both digests is checked against a trust store ([`trust`]). Only then is
//! the sealed copy — exactly the bytes that were verified — loaded.

pub mod audit;
pub mod bundle;
pub mod engine;
pub mod events;
pub mod hooks;
pub mod host_config;
pub mod inprocess;
pub mod ipc;
pub mod job_threads;
pub mod loader;
pub mod manifest;
pub mod monitor;
pub mod policy;
pub mod regular_file;
pub mod rotating;
pub mod sandbox;
pub mod snapshot;
pub mod suggest;
pub mod supervisor;
pub mod text;
pub mod trust;
pub mod watcher;
pub mod worker;

/// Plugboard's own version, which a manifest's `min_host_version` is checked against.
pub const HOST_VERSION: &str = env!("CARGO_PKG_VERSION");

pub use engine::{
    CallReport, Command, Engine, EngineConfig, EngineError, MAX_TRAFFIC_RATE, MIN_TRAFFIC_RATE,
    Outcome,
};
pub use events::{Event, EventKind};
pub use hooks::dispatch::MAX_EMIT_DEPTH;
pub use hooks::{HookCallError, HookHandle, HookReply};
pub use snapshot::{PluginSnapshot, PluginState, Snapshot};
