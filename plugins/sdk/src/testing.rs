//! Load a built plugin library in a plugin author's own tests and call its hooks, through
//! the same ABI checks a Plugboard host makes.
//!
//! ```no_run
//! use plugboard_sdk::testing::TestPlugin;
//!
//! let plugin = TestPlugin::load(plugboard_sdk::testing::cdylib_path("hello")).unwrap();
//! let reply = plugin.call("greet", b"world").unwrap();
//! assert_eq!(reply, b"Hello, world!");
//! ```
//!
//! The library must be built first (`cargo build`): `cargo test` alone builds a `cdylib`
//! crate's test harness, not the shared object.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::abi;
use crate::export::LogLevel;
use crate::host::{CallError, HostCallbacks, HostError, Instance, PluginLibrary};

/// Where cargo puts the shared object of the `cdylib` crate `crate_name` for the profile
/// the running test was built with: `target/<profile>/lib<crate_name>.so`, found from the
/// test executable's own path (`target/<profile>/deps/<test>`). Honours `CARGO_TARGET_DIR`
/// only through that path, so it works for any target directory.
pub fn cdylib_path(crate_name: &str) -> PathBuf {
    let file = format!("lib{}.so", crate_name.replace('-', "_"));
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<exe> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("."));
    profile_dir.join(file)
}

/// One log line the plugin sent to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// One hook the plugin emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub hook: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct Recorder {
    logs: Mutex<Vec<LogLine>>,
    emitted: Mutex<Vec<Emitted>>,
    allowed_emits: Mutex<Option<Vec<String>>>,
}

impl HostCallbacks for Recorder {
    fn log(&self, level: LogLevel, message: &str) {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(LogLine {
                level,
                message: message.to_owned(),
            });
    }

    fn emit(&self, hook: &str, payload: &[u8]) -> i32 {
        let allowed = self
            .allowed_emits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(allowed) = allowed.as_ref()
            && !allowed.iter().any(|name| name == hook)
        {
            return abi::EMIT_DENIED;
        }
        self.emitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Emitted {
                hook: hook.to_owned(),
                payload: payload.to_vec(),
            });
        abi::EMIT_OK
    }
}

/// A loaded plugin instance with a recording host.
#[derive(Debug)]
pub struct TestPlugin {
    instance: Instance,
    recorder: Arc<Recorder>,
}

impl TestPlugin {
    /// Loads the library at `path` and creates an instance with an empty config.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, HostError> {
        Self::load_with_config(path, &serde_json::json!({}))
    }

    /// Loads the library and creates an instance with `config` (a JSON object).
    pub fn load_with_config(
        path: impl AsRef<Path>,
        config: &serde_json::Value,
    ) -> Result<Self, HostError> {
        // SAFETY: a plugin author loads their own freshly built library in their own tests.
        #[allow(unsafe_code)]
        let library = Arc::new(unsafe { PluginLibrary::open(path.as_ref()) }?);
        let recorder = Arc::new(Recorder::default());
        let config = serde_json::to_vec(config).unwrap_or_else(|_| b"{}".to_vec());
        let instance = library.instantiate(recorder.clone(), &config)?;
        Ok(Self { instance, recorder })
    }

    /// Only these hooks may be emitted from now on (like a manifest's `emit` capability);
    /// others are answered `EMIT_DENIED`. By default every emit is accepted.
    pub fn allow_emits(&self, hooks: &[&str]) {
        *self
            .recorder
            .allowed_emits
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(hooks.iter().map(|hook| (*hook).to_owned()).collect());
    }

    pub fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, CallError> {
        self.instance.call(hook, payload)
    }

    /// Calls a hook with a JSON payload and decodes a JSON reply.
    pub fn call_json<R: serde::de::DeserializeOwned>(
        &self,
        hook: &str,
        payload: &serde_json::Value,
    ) -> Result<R, CallError> {
        let payload = serde_json::to_vec(payload).unwrap_or_default();
        let reply = self.instance.call(hook, &payload)?;
        serde_json::from_slice(&reply).map_err(|err| CallError {
            status: abi::STATUS_INVALID_INPUT,
            message: format!("reply is not the expected JSON: {err}"),
        })
    }

    pub fn health(&self) -> Result<(), CallError> {
        self.instance.health()
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.recorder
            .logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every hook emitted so far.
    pub fn emitted(&self) -> Vec<Emitted> {
        self.recorder
            .emitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
