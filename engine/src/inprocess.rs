//! In-process mode: a plugin loaded into the engine's own process and called directly,
//! for bundles signed by a key the host trusts at level `in-process`.
//!
//! The same commands and the same statistics apply as for a sandboxed worker: a call is a
//! hook name and payload bytes in, status and reply bytes out; the plugin's log lines reach
//! the same [`EventSink`] as [`WorkerEvent::Output`]; its emits go to the same
//! [`EmitHandler`], with the emit depth of the call that is running on the thread.
//!
//! What this mode gives up, stated plainly:
//! - **No isolation and no limits.** None of the sandbox mechanisms apply
//!   ([`mechanisms`] reports each as inactive): the plugin runs with the engine's
//!   identity, memory, files and network, and no cgroup, seccomp or Landlock rule stands
//!   between them.
//! - **A timeout cannot stop native code.** A call runs on the caller's thread until the
//!   plugin returns; the engine can measure that it took too long, not interrupt it.
//! - **A crash takes the engine.** A Rust panic inside the plugin is caught (by the SDK's
//!   `export_plugin!` at the boundary, and again here) and becomes an error reply, but a
//!   segmentation fault, an `abort()` or an `exit()` in plugin code ends the engine.
//! - **Its stdout and stderr are the engine's.** Only what it logs through the host API is
//!   captured per plugin.
//!
//! The library is loaded from the same sealed memfd as for a worker
//! ([`crate::loader::load`]), so the bytes that run are exactly the bytes
//! that were verified. One sealed library is loaded in-process at most once at a time: the
//! dynamic loader would hand a second load the very same image (and the same globals), so
//! a second [`InProcessPlugin::start`] of the same sealed library is refused until the
//! first is stopped.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::os::fd::AsFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use plugboard_sdk::host::{CallError, HostCallbacks, Instance};
use plugboard_sdk::{LogLevel, abi};

use crate::loader::{self, LoadedLibrary, LoaderError, SealedLibrary};
use crate::sandbox::Mechanism;
use crate::worker::{EmitHandler, EventSink, MechanismState, OutputStream, WorkerEvent};

/// Emits of one in-process plugin that may be waiting for their answer at once (as for a
/// worker): more are refused at once.
const MAX_EMITS_IN_FLIGHT: usize = 16;
/// A longer log message is cut here (at a character boundary) and marked as cut.
pub const MAX_LOG_BYTES: usize = 64 * 1024;

/// Why an in-process plugin could not start.
#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    #[error(
        "`{plugin}`: this sealed library is already loaded in-process; a second load would share the first one's image and globals"
    )]
    AlreadyLoaded { plugin: String },
    #[error("`{plugin}`: cannot read the sealed library: {error}")]
    Library {
        plugin: String,
        error: std::io::Error,
    },
    #[error("`{plugin}` failed to load: {error}")]
    Load { plugin: String, error: LoaderError },
    #[error("`{plugin}` failed to start: {reason}")]
    Create { plugin: String, reason: String },
}

/// The sealed libraries loaded in-process now, by (device, inode) of their memfd.
static LOADED: Mutex<Option<HashSet<(u64, u64)>>> = Mutex::new(None);

fn loaded_set<R>(f: impl FnOnce(&mut HashSet<(u64, u64)>) -> R) -> R {
    let mut guard = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(HashSet::new))
}

/// Holds a library's place in [`LOADED`]; gives it back when dropped.
#[derive(Debug)]
struct Claim {
    identity: (u64, u64),
}

impl Claim {
    fn take(plugin: &str, library: &SealedLibrary) -> Result<Self, InProcessError> {
        let stat = nix::sys::stat::fstat(library.fd()).map_err(|err| InProcessError::Library {
            plugin: plugin.to_owned(),
            error: err.into(),
        })?;
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let identity = (u64::from(stat.st_dev), stat.st_ino as u64);
        if loaded_set(|set| set.insert(identity)) {
            Ok(Self { identity })
        } else {
            Err(InProcessError::AlreadyLoaded {
                plugin: plugin.to_owned(),
            })
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        loaded_set(|set| set.remove(&self.identity));
    }
}

thread_local! {
    /// The emit depth of the in-process call running on this thread (0 outside calls).
    static CALL_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Sets this thread's call depth for the life of a call and restores the previous one
/// (an in-process plugin's emit may call another in-process plugin on the same thread).
struct DepthScope {
    previous: u32,
}

impl DepthScope {
    fn enter(depth: u32) -> Self {
        Self {
            previous: CALL_DEPTH.replace(depth),
        }
    }
}

impl Drop for DepthScope {
    fn drop(&mut self) {
        CALL_DEPTH.set(self.previous);
    }
}

/// The host API an in-process plugin sees: log lines to the sink, emits to the handler.
struct Link {
    sink: EventSink,
    emit: Option<EmitHandler>,
    emits_in_flight: AtomicUsize,
}

impl HostCallbacks for Link {
    fn log(&self, level: LogLevel, message: &str) {
        let line = if message.len() > MAX_LOG_BYTES {
            let mut end = MAX_LOG_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            format!("{} … [cut at {MAX_LOG_BYTES} bytes]", &message[..end])
        } else {
            message.to_owned()
        };
        let event = WorkerEvent::Output {
            stream: OutputStream::Log {
                level: level.code(),
            },
            line,
        };
        // Unwinding out of here would cross the plugin's C frames and abort the engine.
        let _ = catch_unwind(AssertUnwindSafe(|| (self.sink)(event)));
    }

    fn emit(&self, hook: &str, payload: &[u8]) -> i32 {
        let Some(handler) = &self.emit else {
            return abi::EMIT_DENIED;
        };
        if self.emits_in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_EMITS_IN_FLIGHT {
            self.emits_in_flight.fetch_sub(1, Ordering::SeqCst);
            return abi::EMIT_FAILED;
        }
        // From a thread of the plugin's own, outside any call, the depth reads as 0; the
        // cap above still bounds what it can have waiting.
        let depth = CALL_DEPTH.get();
        let code = catch_unwind(AssertUnwindSafe(|| match handler.admit(hook, depth) {
            Ok(()) => handler.dispatch(hook, payload, depth),
            Err(refused) => refused,
        }))
        .unwrap_or(abi::EMIT_FAILED);
        self.emits_in_flight.fetch_sub(1, Ordering::SeqCst);
        code
    }
}

/// A plugin running inside the engine's process.
pub struct InProcessPlugin {
    plugin: String,
    // Dropped in this order: the instance (destroy), the library (dlclose), the claim.
    instance: Option<Instance>,
    library: Option<LoadedLibrary>,
    _claim: Claim,
}

impl std::fmt::Debug for InProcessPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessPlugin")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl InProcessPlugin {
    /// Loads `library` into this process and creates the plugin's instance with `config`.
    /// Runs the library's constructors and the plugin's `create` in the engine: call it
    /// only for a bundle verified and signed by a key trusted at level `in-process`.
    ///
    /// Log lines the plugin writes while being created already reach `sink`.
    pub fn start(
        plugin: &str,
        library: &SealedLibrary,
        config: &serde_json::Map<String, serde_json::Value>,
        emit: Option<EmitHandler>,
        sink: &EventSink,
    ) -> Result<Self, InProcessError> {
        let claim = Claim::take(plugin, library)?;
        let descriptor = library
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| InProcessError::Library {
                plugin: plugin.to_owned(),
                error: source,
            })?;
        let load_error = |source| InProcessError::Load {
            plugin: plugin.to_owned(),
            error: source,
        };
        let sealed = SealedLibrary::from_sealed_fd(descriptor).map_err(load_error)?;
        let loaded =
            loader::load(sealed, &format!("the library of `{plugin}`")).map_err(load_error)?;
        let link = Arc::new(Link {
            sink: Arc::clone(sink),
            emit,
            emits_in_flight: AtomicUsize::new(0),
        });
        let config_json = serde_json::to_vec(config).unwrap_or_else(|_| b"{}".to_vec());
        let created = {
            let _depth = DepthScope::enter(0);
            catch_unwind(AssertUnwindSafe(|| {
                loaded.library().instantiate(link, &config_json)
            }))
        };
        let instance = match created {
            Ok(Ok(instance)) => instance,
            Ok(Err(err)) => {
                return Err(InProcessError::Create {
                    plugin: plugin.to_owned(),
                    reason: err.to_string(),
                });
            }
            Err(panic) => {
                return Err(InProcessError::Create {
                    plugin: plugin.to_owned(),
                    reason: format!("panicked: {}", panic_message(&*panic)),
                });
            }
        };
        Ok(Self {
            plugin: plugin.to_owned(),
            instance: Some(instance),
            library: Some(loaded),
            _claim: claim,
        })
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    fn instance(&self) -> &Instance {
        self.instance.as_ref().expect("present until drop")
    }

    /// Calls `hook` with `payload` on the caller's thread and returns the reply. A panic in
    /// the plugin is an error reply with status `panic`; an unknown hook one with status
    /// `unknown hook`. Nothing can interrupt the call: see the module documentation.
    pub fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call_at_depth(hook, payload, 0)
    }

    /// Calls `hook` on behalf of an emit chain `depth` emits deep: the plugin's own emits
    /// during this call are passed to the [`EmitHandler`] with this depth.
    pub fn call_at_depth(
        &self,
        hook: &str,
        payload: &[u8],
        depth: u32,
    ) -> Result<Vec<u8>, CallError> {
        let _depth = DepthScope::enter(depth);
        catch_unwind(AssertUnwindSafe(|| self.instance().call(hook, payload))).unwrap_or_else(
            |panic| {
                Err(CallError {
                    status: abi::STATUS_PANIC,
                    message: panic_message(&*panic),
                })
            },
        )
    }

    /// Asks the plugin whether it is healthy.
    pub fn health(&self) -> Result<(), CallError> {
        let _depth = DepthScope::enter(0);
        catch_unwind(AssertUnwindSafe(|| self.instance().health())).unwrap_or_else(|panic| {
            Err(CallError {
                status: abi::STATUS_PANIC,
                message: panic_message(&*panic),
            })
        })
    }

    /// Destroys the instance and unloads the library. Calls still running on other
    /// threads must have returned: the caller holds the only reference.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for InProcessPlugin {
    fn drop(&mut self) {
        let _depth = DepthScope::enter(0);
        // The plugin's `destroy` runs here; a panic in it is caught by the SDK.
        drop(self.instance.take());
        drop(self.library.take());
    }
}

/// The sandbox mechanisms as they stand for an in-process plugin: none is active.
pub fn mechanisms() -> BTreeMap<Mechanism, MechanismState> {
    Mechanism::ALL
        .into_iter()
        .map(|mechanism| {
            (
                mechanism,
                MechanismState {
                    active: false,
                    detail: "in-process: runs inside the engine, without isolation or limits"
                        .to_owned(),
                },
            )
        })
        .collect()
}
