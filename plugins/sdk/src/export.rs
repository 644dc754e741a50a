//! The plugin side of the ABI: [`export_plugin!`](crate::export_plugin) and the glue it
//! expands to. Every entry point catches panics, so nothing unwinds across the C boundary.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use crate::abi::{self, HostApi, PluginBuffer, PluginVTable};
use crate::{Config, Error, Plugin};

/// Exports a [`Plugin`](crate::Plugin) type as this library's plugin entry point.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[allow(unsafe_code)]
        const _: () = {
            static PLUGBOARD_VTABLE: $crate::abi::PluginVTable =
                $crate::export::vtable::<$plugin>();

            /// The one symbol a Plugboard host looks up.
            // SAFETY: the name is unique to this library by the ABI contract, and the
            // function has the exact `EntryFn` signature.
            #[unsafe(no_mangle)]
            pub extern "C" fn plugboard_plugin_entry() -> *const $crate::abi::PluginVTable {
                &raw const PLUGBOARD_VTABLE
            }
        };
    };
}

/// Builds the ABI table for `P`; [`export_plugin!`](crate::export_plugin) puts it in a static.
pub const fn vtable<P: Plugin>() -> PluginVTable {
    PluginVTable {
        abi_version: abi::ABI_VERSION,
        struct_size: abi::VTABLE_SIZE,
        create: Some(create::<P>),
        call: Some(call::<P>),
        health: Some(health::<P>),
        destroy: Some(destroy::<P>),
        free_buffer: Some(free_buffer),
    }
}

/// Severity of a log line sent to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub const fn code(self) -> u32 {
        match self {
            Self::Error => abi::LOG_ERROR,
            Self::Warn => abi::LOG_WARN,
            Self::Info => abi::LOG_INFO,
            Self::Debug => abi::LOG_DEBUG,
        }
    }

    /// The lower-case name (`error`, `warn`, `info`, `debug`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
        }
    }

    /// The level for an ABI code; unknown codes read as `Debug`, the least alarming.
    pub const fn from_code(code: u32) -> Self {
        match code {
            abi::LOG_ERROR => Self::Error,
            abi::LOG_WARN => Self::Warn,
            abi::LOG_INFO => Self::Info,
            _ => Self::Debug,
        }
    }
}

/// Why the host refused to emit a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitError {
    /// The manifest does not grant `emit` for this hook.
    Denied,
    /// The host could not deliver it (or does not offer `emit`).
    Failed,
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied => f.write_str("the host denied the emit: the manifest does not grant it"),
            Self::Failed => f.write_str("the host could not deliver the emitted hook"),
        }
    }
}

impl std::error::Error for EmitError {}

/// A plugin's handle to its host: logging and emitting hooks.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    api: *const HostApi,
}

// SAFETY: the ABI requires the host's callbacks to be callable from any thread for as long
// as the instance lives, and `Host` only ever reads the table through a shared pointer.
unsafe impl Send for Host {}
// SAFETY: as above; `Host` has no interior mutability of its own.
unsafe impl Sync for Host {}

impl Host {
    /// A host that drops logs and refuses emits, for unit tests of plugin logic.
    pub const fn detached() -> Self {
        Self {
            api: std::ptr::null(),
        }
    }

    fn api(&self) -> Option<&HostApi> {
        // SAFETY: `api` is null or the pointer the host passed to `create`, which the ABI
        // guarantees outlives the instance (and so every `Host` copy the instance holds).
        unsafe { self.api.as_ref() }
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        if let Some(api) = self.api()
            && let Some(log) = api.log
        {
            // SAFETY: `log` comes from the host's table; the message pointer and length
            // describe a live UTF-8 buffer for the duration of the call.
            unsafe { log(api.context, level.code(), message.as_ptr(), message.len()) }
        }
    }

    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// Emits `hook` with `payload` to the plugins subscribed to it. Needs the `emit`
    /// capability for that hook in the manifest.
    pub fn emit(&self, hook: &str, payload: &[u8]) -> Result<(), EmitError> {
        let Some(api) = self.api() else {
            return Err(EmitError::Failed);
        };
        let Some(emit) = api.emit else {
            return Err(EmitError::Failed);
        };
        // SAFETY: `emit` comes from the host's table; both buffers are live for the call.
        let code = unsafe {
            emit(
                api.context,
                hook.as_ptr(),
                hook.len(),
                payload.as_ptr(),
                payload.len(),
            )
        };
        match code {
            abi::EMIT_OK => Ok(()),
            abi::EMIT_DENIED => Err(EmitError::Denied),
            _ => Err(EmitError::Failed),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send), location: Option<String>) -> String {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    match location {
        Some(location) => format!("plugin panicked at {location}: {detail}"),
        None => format!("plugin panicked: {detail}"),
    }
}

thread_local! {
    /// Set while this thread runs plugin code for the host (inside [`guarded`]).
    static IN_ENTRY_POINT: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic caught in an entry point on this thread happened.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static QUIET_PANICS: Once = Once::new();

/// Keeps panics caught at the entry points off stderr: their message is the call's error
/// reply already, and in-process the engine's stderr is the dashboard's terminal, where the
/// standard hook's text would land in the middle of the screen on every panic. The hook is
/// this library's own (a plugin carries its own copy of the standard library); a panic on
/// any other thread of the plugin still goes to the hook it had.
fn quiet_caught_panics() {
    QUIET_PANICS.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_ENTRY_POINT.with(Cell::get) {
                let location = info
                    .location()
                    .map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
                PANIC_LOCATION.with(|last| *last.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into an [`Error`] so it never unwinds into the host.
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    quiet_caught_panics();
    let outer = IN_ENTRY_POINT.with(|inside| inside.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_ENTRY_POINT.with(|inside| inside.set(outer));
    match result {
        Ok(result) => result,
        Err(payload) => {
            let location = PANIC_LOCATION.with(|last| last.borrow_mut().take());
            Err(Error::panicked(panic_message(payload.as_ref(), location)))
        }
    }
}

/// Hands `bytes` to the host through `out`. Returns false when `out` is null.
///
/// # Safety
/// `out` is null or valid for a write of one `PluginBuffer`.
unsafe fn write_buffer(out: *mut PluginBuffer, bytes: Vec<u8>) -> bool {
    if out.is_null() {
        return false;
    }
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    let data = Box::into_raw(boxed).cast::<u8>();
    // SAFETY: `out` is non-null and valid for writes by this function's contract.
    unsafe { out.write(PluginBuffer { data, len }) };
    true
}

/// Writes `result` to `out` and returns its status.
///
/// # Safety
/// `out` is null or valid for a write of one `PluginBuffer`.
unsafe fn finish(result: Result<Vec<u8>, Error>, out: *mut PluginBuffer) -> i32 {
    let (status, bytes) = match result {
        Ok(bytes) => (abi::STATUS_OK, bytes),
        Err(err) => (err.kind().status(), err.message().as_bytes().to_vec()),
    };
    // SAFETY: forwarded from this function's contract.
    if unsafe { write_buffer(out, bytes) } {
        status
    } else {
        abi::STATUS_INVALID_INPUT
    }
}

/// # Safety
/// `ptr` is null only with `len == 0`, otherwise valid for reads of `len` bytes.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: non-null and valid for `len` bytes by this function's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

unsafe extern "C" fn create<P: Plugin>(
    host: *const HostApi,
    config: *const u8,
    config_len: usize,
    instance_out: *mut *mut c_void,
    error_out: *mut PluginBuffer,
) -> i32 {
    if instance_out.is_null() {
        return abi::STATUS_INVALID_INPUT;
    }
    // SAFETY: the host passes a buffer of `config_len` bytes that lives for this call.
    let config = unsafe { bytes(config, config_len) };
    let result = guarded(|| {
        // SAFETY: `host` is null or a table that outlives the instance (ABI contract).
        let version = unsafe { host.as_ref() }.map(|api| api.abi_version);
        if let Some(version) = version
            && version != abi::ABI_VERSION
        {
            return Err(Error::invalid_input(format!(
                "host speaks plugin ABI version {version}, this plugin was built for version {}",
                abi::ABI_VERSION
            )));
        }
        let config = Config::from_json(config)?;
        P::create(Host { api: host }, config)
    });
    match result {
        Ok(plugin) => {
            let instance = Box::into_raw(Box::new(plugin)).cast::<c_void>();
            // SAFETY: `instance_out` is non-null (checked above) and the host passes a
            // location valid for one pointer write.
            unsafe { instance_out.write(instance) };
            abi::STATUS_OK
        }
        // SAFETY: `error_out` is null or writable, per the ABI.
        Err(err) => unsafe { finish(Err(err), error_out) },
    }
}

unsafe extern "C" fn call<P: Plugin>(
    instance: *mut c_void,
    hook: *const u8,
    hook_len: usize,
    payload: *const u8,
    payload_len: usize,
    reply_out: *mut PluginBuffer,
) -> i32 {
    // SAFETY: a non-null `instance` is the pointer `create::<P>` returned and the host has
    // not destroyed it yet; it is only read through a shared reference.
    let Some(plugin) = (unsafe { instance.cast::<P>().as_ref() }) else {
        return abi::STATUS_INVALID_INPUT;
    };
    // SAFETY: the host passes buffers of the given lengths that live for this call.
    let (hook, payload) = unsafe { (bytes(hook, hook_len), bytes(payload, payload_len)) };
    let result = guarded(|| {
        let hook = std::str::from_utf8(hook)
            .map_err(|_| Error::invalid_input("hook name is not UTF-8"))?;
        plugin.call(hook, payload)
    });
    // SAFETY: `reply_out` is null or writable, per the ABI.
    unsafe { finish(result, reply_out) }
}

unsafe extern "C" fn health<P: Plugin>(
    instance: *mut c_void,
    detail_out: *mut PluginBuffer,
) -> i32 {
    // SAFETY: as in `call`.
    let Some(plugin) = (unsafe { instance.cast::<P>().as_ref() }) else {
        return abi::STATUS_INVALID_INPUT;
    };
    let result = guarded(|| plugin.health().map(|()| Vec::new()));
    // SAFETY: `detail_out` is null or writable, per the ABI.
    unsafe { finish(result, detail_out) }
}

unsafe extern "C" fn destroy<P: Plugin>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: `instance` came from `Box::into_raw` in `create::<P>`, and the host destroys
    // each instance exactly once, after every other call on it has returned.
    let plugin = unsafe { Box::from_raw(instance.cast::<P>()) };
    // A panicking Drop must not unwind into the host either; the instance is gone anyway.
    let _ = guarded(move || {
        drop(plugin);
        Ok(())
    });
}

unsafe extern "C" fn free_buffer(data: *mut u8, len: usize) {
    if data.is_null() {
        return;
    }
    // SAFETY: `data`/`len` describe a boxed slice this library leaked in `write_buffer`,
    // handed back exactly once by the host.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, len)) });
}
