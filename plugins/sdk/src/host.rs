//! The host side of the ABI: open a plugin library, check its ABI version before anything
//! else, create an instance and call it. The engine's loader opens libraries from sealed
//! memfds and uses this; [`crate::testing`] uses it to load a plugin in its author's tests.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::abi::{self, EntryFn, HostApi, PluginBuffer, PluginVTable};
use crate::export::LogLevel;

/// Why a library could not be opened or an instance could not be used.
#[derive(Debug)]
pub enum HostError {
    /// `dlopen` refused the file (not an ELF shared object, missing dependency, …).
    Open { path: PathBuf, reason: String },
    /// The library does not export the plugin entry symbol.
    NotAPlugin { path: PathBuf },
    /// The entry symbol returned a null table.
    NullTable { path: PathBuf },
    /// The table was built for another ABI version.
    AbiMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    /// The table is shorter than this ABI's, or lacks a required function.
    MalformedTable { path: PathBuf, reason: String },
    /// `create` failed.
    Create { status: i32, message: String },
}

impl HostError {
    /// The same error naming the library `shown` instead of the path it was opened from
    /// (a host that loads from `/proc/self/fd/N` names the bundle's file instead).
    #[must_use]
    pub fn shown_as(self, shown: &Path) -> Self {
        match self {
            Self::Open { path, reason } => Self::Open {
                reason: reason.replace(&*path.to_string_lossy(), &shown.to_string_lossy()),
                path: shown.to_owned(),
            },
            Self::NotAPlugin { .. } => Self::NotAPlugin {
                path: shown.to_owned(),
            },
            Self::NullTable { .. } => Self::NullTable {
                path: shown.to_owned(),
            },
            Self::AbiMismatch {
                found, expected, ..
            } => Self::AbiMismatch {
                path: shown.to_owned(),
                found,
                expected,
            },
            Self::MalformedTable { reason, .. } => Self::MalformedTable {
                path: shown.to_owned(),
                reason,
            },
            created @ Self::Create { .. } => created,
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open { path, reason } => write!(f, "cannot load {}: {reason}", path.display()),
            Self::NotAPlugin { path } => write!(
                f,
                "{} is not a Plugboard plugin: it does not export the symbol `{}`",
                path.display(),
                abi::ENTRY_SYMBOL
            ),
            Self::NullTable { path } => {
                write!(
                    f,
                    "{}: `{}` returned a null table",
                    path.display(),
                    abi::ENTRY_SYMBOL
                )
            }
            Self::AbiMismatch {
                path,
                found,
                expected,
            } => write!(
                f,
                "{} was built for plugin ABI version {found}, but this host speaks version {expected}",
                path.display()
            ),
            Self::MalformedTable { path, reason } => {
                write!(
                    f,
                    "{} has a malformed plugin table: {reason}",
                    path.display()
                )
            }
            Self::Create { status, message } => {
                write!(
                    f,
                    "the plugin refused to start ({}): {message}",
                    status_name(*status)
                )
            }
        }
    }
}

impl std::error::Error for HostError {}

/// The name of an ABI status code, for messages.
pub fn status_name(status: i32) -> &'static str {
    match status {
        abi::STATUS_OK => "ok",
        abi::STATUS_ERROR => "error",
        abi::STATUS_UNKNOWN_HOOK => "unknown hook",
        abi::STATUS_PANIC => "panic",
        abi::STATUS_INVALID_INPUT => "invalid input",
        _ => "unknown status",
    }
}

/// A failed hook or health call: the plugin's status code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub status: i32,
    pub message: String,
}

impl CallError {
    pub fn is_panic(&self) -> bool {
        self.status == abi::STATUS_PANIC
    }

    pub fn is_unknown_hook(&self) -> bool {
        self.status == abi::STATUS_UNKNOWN_HOOK
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", status_name(self.status), self.message)
    }
}

impl std::error::Error for CallError {}

/// What an instance's host callbacks do. Implementations must be thread-safe: a plugin may
/// log or emit from any thread.
pub trait HostCallbacks: Send + Sync {
    fn log(&self, level: LogLevel, message: &str);
    /// Returns one of the `abi::EMIT_*` codes.
    fn emit(&self, hook: &str, payload: &[u8]) -> i32;
}

/// An open plugin library whose table passed the ABI checks.
pub struct PluginLibrary {
    // Field order: the table points into the library, so it must not outlive it.
    vtable: *const PluginVTable,
    path: PathBuf,
    _library: libloading::Library,
}

impl fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

// SAFETY: the table is immutable static data of the library, which stays loaded as long
// as this value; the ABI requires its functions to be callable from any thread.
unsafe impl Send for PluginLibrary {}
// SAFETY: as above; nothing here is mutated after `open`.
unsafe impl Sync for PluginLibrary {}

impl PluginLibrary {
    /// Opens the library at `path`, looks up the entry symbol and checks the table: the ABI
    /// version first, then the size and the required functions.
    ///
    /// # Safety
    /// Loading a library runs its constructors: `path` must be a library the caller is
    /// prepared to run code from (verified, and in Plugboard's case already confined).
    pub unsafe fn open(path: &Path) -> Result<Self, HostError> {
        // SAFETY: the caller vouches for running this library's initialisers.
        let library = unsafe { libloading::Library::new(path) }.map_err(|err| HostError::Open {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        // SAFETY: the symbol, if present, has the `EntryFn` signature by the ABI contract;
        // the `Symbol` is used only while `library` is alive.
        let entry =
            unsafe { library.get::<EntryFn>(abi::ENTRY_SYMBOL.as_bytes()) }.map_err(|_| {
                HostError::NotAPlugin {
                    path: path.to_owned(),
                }
            })?;
        // SAFETY: calling the entry function is what the ABI defines it for; it takes no
        // arguments and returns a pointer to static data.
        let vtable = unsafe { entry() };
        if vtable.is_null() {
            return Err(HostError::NullTable {
                path: path.to_owned(),
            });
        }
        // SAFETY: `vtable` is non-null and points at the library's table; whatever its
        // version, its first field is a `u32` ABI version, so reading just that is sound.
        let found = unsafe { vtable.cast::<u32>().read() };
        if found != abi::ABI_VERSION {
            return Err(HostError::AbiMismatch {
                path: path.to_owned(),
                found,
                expected: abi::ABI_VERSION,
            });
        }
        // SAFETY: the version matches, so the table has this ABI's layout.
        let table = unsafe { &*vtable };
        if table.struct_size < abi::VTABLE_SIZE {
            return Err(HostError::MalformedTable {
                path: path.to_owned(),
                reason: format!(
                    "table is {} bytes, expected at least {}",
                    table.struct_size,
                    abi::VTABLE_SIZE
                ),
            });
        }
        let missing: Vec<&str> = [
            ("create", table.create.is_none()),
            ("call", table.call.is_none()),
            ("health", table.health.is_none()),
            ("destroy", table.destroy.is_none()),
            ("free_buffer", table.free_buffer.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(HostError::MalformedTable {
                path: path.to_owned(),
                reason: format!("null function pointer(s): {}", missing.join(", ")),
            });
        }
        Ok(Self {
            vtable,
            path: path.to_owned(),
            _library: library,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn table(&self) -> &PluginVTable {
        // SAFETY: checked in `open`; the table lives as long as the library we hold.
        unsafe { &*self.vtable }
    }

    /// Creates an instance with `config` (a JSON object) and the given host callbacks.
    pub fn instantiate(
        self: &Arc<Self>,
        callbacks: Arc<dyn HostCallbacks>,
        config_json: &[u8],
    ) -> Result<Instance, HostError> {
        let mut host = Box::new(HostState {
            api: HostApi {
                abi_version: abi::ABI_VERSION,
                context: std::ptr::null_mut(),
                log: Some(host_log),
                emit: Some(host_emit),
            },
            callbacks,
        });
        // The context points at the boxed state itself, whose address is stable.
        host.api.context = std::ptr::from_mut::<HostState>(&mut host).cast::<c_void>();
        let create = self.table().create.expect("checked in open");
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut error = PluginBuffer::EMPTY;
        // SAFETY: `create` was checked non-null; every pointer passed is valid for the call,
        // and `host.api` outlives the instance because `Instance` owns `host`.
        let status = unsafe {
            create(
                &raw const host.api,
                config_json.as_ptr(),
                config_json.len(),
                &raw mut instance,
                &raw mut error,
            )
        };
        let message = self.take_buffer(&error);
        if status != abi::STATUS_OK || instance.is_null() {
            let message = if status == abi::STATUS_OK {
                "create reported success but returned no instance".to_owned()
            } else {
                String::from_utf8_lossy(&message).into_owned()
            };
            return Err(HostError::Create { status, message });
        }
        Ok(Instance {
            handle: instance,
            library: Arc::clone(self),
            _host: host,
        })
    }

    /// Copies a plugin-owned buffer and hands it back to the plugin to free.
    fn take_buffer(&self, buffer: &PluginBuffer) -> Vec<u8> {
        self.with_buffer(buffer, <[u8]>::to_vec)
    }

    /// Lends a plugin-owned buffer's bytes to `read`, then hands the buffer back to the
    /// plugin to free (also if `read` panics).
    fn with_buffer<R>(&self, buffer: &PluginBuffer, read: impl FnOnce(&[u8]) -> R) -> R {
        if buffer.data.is_null() {
            return read(&[]);
        }
        let release = ReleaseBuffer {
            library: self,
            buffer,
        };
        // SAFETY: a non-null buffer written by the plugin describes `len` readable bytes
        // that stay valid until we pass them to `free_buffer`, which `release` does after
        // the last use of this slice.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.data, buffer.len) };
        let result = read(bytes);
        drop(release);
        result
    }
}

/// Hands a plugin-owned buffer back to the plugin when dropped, however the borrow of its
/// bytes ended.
struct ReleaseBuffer<'a> {
    library: &'a PluginLibrary,
    buffer: &'a PluginBuffer,
}

impl Drop for ReleaseBuffer<'_> {
    fn drop(&mut self) {
        let free = self.library.table().free_buffer.expect("checked in open");
        // SAFETY: the buffer came from this library and is returned exactly once.
        unsafe { free(self.buffer.data, self.buffer.len) };
    }
}

struct HostState {
    api: HostApi,
    callbacks: Arc<dyn HostCallbacks>,
}

/// # Safety
/// `context` is the `HostState` pointer set in `instantiate`; `message` is valid for `len`.
unsafe extern "C" fn host_log(context: *mut c_void, level: u32, message: *const u8, len: usize) {
    // SAFETY: `context` points at the `HostState` owned by the live instance.
    let Some(state) = (unsafe { context.cast::<HostState>().as_ref() }) else {
        return;
    };
    let message = if message.is_null() {
        &[][..]
    } else {
        // SAFETY: the plugin passes a buffer of `len` bytes that lives for the call.
        unsafe { std::slice::from_raw_parts(message, len) }
    };
    state.callbacks.log(
        LogLevel::from_code(level),
        &String::from_utf8_lossy(message),
    );
}

/// # Safety
/// As for `host_log`, with `hook` and `payload` valid for their lengths.
unsafe extern "C" fn host_emit(
    context: *mut c_void,
    hook: *const u8,
    hook_len: usize,
    payload: *const u8,
    payload_len: usize,
) -> i32 {
    // SAFETY: `context` points at the `HostState` owned by the live instance.
    let Some(state) = (unsafe { context.cast::<HostState>().as_ref() }) else {
        return abi::EMIT_FAILED;
    };
    if hook.is_null() {
        return abi::EMIT_FAILED;
    }
    // SAFETY: the plugin passes buffers of the given lengths that live for the call.
    let hook = unsafe { std::slice::from_raw_parts(hook, hook_len) };
    let payload = if payload.is_null() {
        &[][..]
    } else {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(payload, payload_len) }
    };
    match std::str::from_utf8(hook) {
        Ok(hook) => state.callbacks.emit(hook, payload),
        Err(_) => abi::EMIT_FAILED,
    }
}

/// A live plugin instance. Dropping it destroys the instance.
pub struct Instance {
    handle: *mut c_void,
    library: Arc<PluginLibrary>,
    _host: Box<HostState>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("library", &self.library.path)
            .finish_non_exhaustive()
    }
}

// SAFETY: the ABI requires `call` and `health` to be callable from any thread, concurrently;
// `destroy` runs only from `Drop`, when no other reference exists.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

impl Instance {
    /// Calls `hook` with `payload` and returns the reply bytes.
    pub fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, CallError> {
        let mut reply = PluginBuffer::EMPTY;
        let status = self.call_raw(hook, payload, &mut reply);
        self.finish(status, &reply)
    }

    /// Calls `hook` with `payload` and hands `answer` the status and the reply bytes where
    /// the plugin wrote them; the plugin's buffer is freed when `answer` returns. For a host
    /// that only forwards the reply (a worker encoding it into a frame), this saves copying
    /// it into a `Vec` first. A status other than `STATUS_OK` comes with the plugin's error
    /// message as the bytes.
    pub fn call_with<R>(
        &self,
        hook: &str,
        payload: &[u8],
        answer: impl FnOnce(i32, &[u8]) -> R,
    ) -> R {
        let mut reply = PluginBuffer::EMPTY;
        let status = self.call_raw(hook, payload, &mut reply);
        self.library
            .with_buffer(&reply, |bytes| answer(status, bytes))
    }

    fn call_raw(&self, hook: &str, payload: &[u8], reply: &mut PluginBuffer) -> i32 {
        let call = self.library.table().call.expect("checked in open");
        // SAFETY: `instance` is live until `Drop`; all buffers are valid for the call.
        unsafe {
            call(
                self.handle,
                hook.as_ptr(),
                hook.len(),
                payload.as_ptr(),
                payload.len(),
                reply,
            )
        }
    }

    /// Asks the plugin whether it is healthy.
    pub fn health(&self) -> Result<(), CallError> {
        let health = self.library.table().health.expect("checked in open");
        let mut detail = PluginBuffer::EMPTY;
        // SAFETY: as in `call`.
        let status = unsafe { health(self.handle, &raw mut detail) };
        self.finish(status, &detail).map(drop)
    }

    fn finish(&self, status: i32, buffer: &PluginBuffer) -> Result<Vec<u8>, CallError> {
        let bytes = self.library.take_buffer(buffer);
        if status == abi::STATUS_OK {
            Ok(bytes)
        } else {
            Err(CallError {
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            })
        }
    }

    pub fn library(&self) -> &Arc<PluginLibrary> {
        &self.library
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let destroy = self.library.table().destroy.expect("checked in open");
        // SAFETY: the instance is live and this is the only place it is destroyed; no
        // other call can be running because we hold it exclusively.
        unsafe { destroy(self.handle) };
    }
}
