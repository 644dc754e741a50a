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
pub use events::{EngineTopic, Event, EventKind};
pub use hooks::dispatch::MAX_EMIT_DEPTH;
pub use hooks::{HookCallError, HookHandle, HookReply};
pub use snapshot::{PluginSnapshot, PluginState, Snapshot};

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::io;
    use std::path::PathBuf;

    /// Each error says its cause once: in its message, or as its `source()`, never both (a
    /// chain printed by an embedder, `anyhow`'s `{:#}` say, would repeat it).
    #[test]
    fn an_error_says_its_cause_once() {
        let cause = || io::Error::from_raw_os_error(nix::libc::EACCES);
        let errors: Vec<Box<dyn Error>> = vec![
            Box::new(crate::bundle::BundleError::Read {
                path: PathBuf::from("/b/plugin.sig"),
                error: cause(),
            }),
            Box::new(crate::bundle::BundleError::Library {
                path: PathBuf::from("/b/lib.so"),
                error: crate::loader::LoaderError::Copy { error: cause() },
            }),
            Box::new(crate::trust::TrustError::Io {
                action: "read",
                path: PathBuf::from("/t/trust.toml"),
                error: cause(),
            }),
            Box::new(crate::ipc::IpcError::from(cause())),
            Box::new(crate::worker::WorkerError::Ipc {
                plugin: "hello".to_owned(),
                error: crate::ipc::IpcError::from(cause()),
            }),
            Box::new(crate::manifest::ManifestError::Read {
                file: PathBuf::from("/b/plugin.toml"),
                error: cause(),
            }),
            Box::new(crate::monitor::MonitorError::from(
                crate::sandbox::cgroup::CgroupError::Write {
                    cgroup: PathBuf::from("/sys/fs/cgroup/memory/plugboard-x"),
                    file: "memory.limit_in_bytes",
                    value: "1".to_owned(),
                    error: cause(),
                },
            )),
        ];
        for error in errors {
            let message = error.to_string();
            assert!(message.contains("Permission denied"), "{message}");
            let mut chain = error.source();
            while let Some(cause) = chain {
                assert!(
                    !message.contains(&cause.to_string()),
                    "{message:?} repeats its source {cause:?}"
                );
                chain = cause.source();
            }
        }
    }
}
