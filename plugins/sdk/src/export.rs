//! The plugin side of the ABI: [`export_plugin!`](crate::export_plugin) and the glue it
//! expands to. Every entry point catches panics, so nothing unwinds across the C boundary.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::Cell;
use std::ffi::c_void;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, Once, PoisonError};

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
    /// Panics this thread has seen in the entry point it runs (0: it runs none). No
    /// destructor: a thread-local that needs one would keep the library from being
    /// unloaded while the thread lives.
    static ENTRY_PANICS: Cell<u32> = const { Cell::new(0) };
}

/// Marks a thread that runs an entry point ([`ENTRY_PANICS`] counts from 1).
const IN_ENTRY_POINT: u32 = 1;

/// Where the panic an entry point is about to catch happened, with its message, by
/// thread (a static, not a thread-local: see [`ENTRY_PANICS`]).
static CAUGHT_PANICS: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());

/// This thread, as the address of its [`ENTRY_PANICS`] (unique among live threads; no
/// `thread::current()`, which would register a destructor for the thread's handle).
fn this_thread() -> usize {
    ENTRY_PANICS.with(|seen| std::ptr::from_ref(seen) as usize)
}

static QUIET_PANICS: Once = Once::new();

/// Keeps a panic an entry point will catch off stderr: its message is the call's error
/// reply, and goes to the host as an error log line (see [`guarded`]); in-process the
/// engine's stderr is the dashboard's terminal, where the standard hook's text would land
/// in the middle of the screen on every panic. The hook is this library's own (a plugin
/// carries its own copy of the standard library). Anything else still goes to the hook it
/// had: a panic on a thread outside an entry point, and a second panic inside one (a
/// destructor panicking while the first unwinds: the process aborts, and both are
/// printed). Built with `panic = "abort"`, nothing is caught, and the hook is left alone.
fn quiet_caught_panics() {
    if !cfg!(panic = "unwind") {
        return;
    }
    QUIET_PANICS.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let seen = ENTRY_PANICS.try_with(|seen| {
                let before = seen.get();
                if before >= IN_ENTRY_POINT {
                    seen.set(before + 1);
                }
                before
            });
            let text = |info: &std::panic::PanicHookInfo<'_>| {
                let at = info
                    .location()
                    .map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
                panic_message(info.payload(), at)
            };
            match seen {
                Ok(IN_ENTRY_POINT) => {
                    let mut caught = CAUGHT_PANICS.lock().unwrap_or_else(PoisonError::into_inner);
                    let me = this_thread();
                    caught.retain(|(thread, _)| *thread != me);
                    caught.push((me, text(info)));
                }
                Ok(seen) if seen > IN_ENTRY_POINT => {
                    // The first one was kept for the reply that will now not come.
                    if let Some((_, first)) = take_caught_panic() {
                        eprintln!("{first}");
                    }
                    previous(info);
                }
                _ => previous(info),
            }
        }));
    });
}

/// The panic kept for this thread's entry point, if any.
fn take_caught_panic() -> Option<(usize, String)> {
    let me = this_thread();
    let mut caught = CAUGHT_PANICS.lock().unwrap_or_else(PoisonError::into_inner);
    let index = caught.iter().position(|(thread, _)| *thread == me)?;
    Some(caught.swap_remove(index))
}

/// Runs `f`, turning a panic into an [`Error`] so it never unwinds into the host; the panic
/// is also logged to `host`, the instance's host.
fn guarded<T>(host: Host, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    quiet_caught_panics();
    // Nested entry points (a plugin calling back into itself) share the outer one's count.
    let outer = ENTRY_PANICS.with(|seen| seen.replace(seen.get().max(IN_ENTRY_POINT)));
    let result = catch_unwind(AssertUnwindSafe(f));
    let seen = ENTRY_PANICS.with(|seen| seen.replace(outer));
    if result.is_ok() && seen > IN_ENTRY_POINT {
        // A panic the plugin caught itself: nothing to report.
        take_caught_panic();
    }
    match result {
        Ok(result) => result,
        Err(payload) => {
            let text = take_caught_panic()
                .map_or_else(|| panic_message(payload.as_ref(), None), |(_, text)| text);
            // Logged too: the plugin's log is where an operator looks for what went wrong
            // with it, whoever made the call.
            host.log(LogLevel::Error, &text);
            Err(Error::panicked(text))
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

/// What the instance pointer handed to the host points at: the plugin, and its host's
/// table (for what the SDK itself logs, such as a caught panic).
struct Instance<P> {
    host: Host,
    plugin: P,
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
    let result = guarded(Host { api: host }, || {
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
            let instance = Box::into_raw(Box::new(Instance {
                host: Host { api: host },
                plugin,
            }))
            .cast::<c_void>();
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
    // SAFETY: a non-null `instance` is the `Instance<P>` `create::<P>` returned and the host has
    // not destroyed it yet; it is only read through a shared reference.
    let Some(Instance { host, plugin }) = (unsafe { instance.cast::<Instance<P>>().as_ref() })
    else {
        return abi::STATUS_INVALID_INPUT;
    };
    // SAFETY: the host passes buffers of the given lengths that live for this call.
    let (hook, payload) = unsafe { (bytes(hook, hook_len), bytes(payload, payload_len)) };
    let result = guarded(*host, || {
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
    let Some(Instance { host, plugin }) = (unsafe { instance.cast::<Instance<P>>().as_ref() })
    else {
        return abi::STATUS_INVALID_INPUT;
    };
    let result = guarded(*host, || plugin.health().map(|()| Vec::new()));
    // SAFETY: `detail_out` is null or writable, per the ABI.
    unsafe { finish(result, detail_out) }
}

unsafe extern "C" fn destroy<P: Plugin>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: `instance` came from `Box::into_raw` in `create::<P>`, and the host destroys
    // each instance exactly once, after every other call on it has returned.
    let plugin = unsafe { Box::from_raw(instance.cast::<Instance<P>>()) };
    // A panicking Drop must not unwind into the host either; the instance is gone anyway.
    // (Outside `guarded`: nothing would carry its message, so the plugin's hook says it.)
    let _ = catch_unwind(AssertUnwindSafe(move || drop(plugin)));
}

unsafe extern "C" fn free_buffer(data: *mut u8, len: usize) {
    if data.is_null() {
        return;
    }
    // SAFETY: `data`/`len` describe a boxed slice this library leaked in `write_buffer`,
    // handed back exactly once by the host.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, len)) });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A panic an entry point catches is its reply, with where it happened, and reaches no
    /// hook; one on a thread outside an entry point still reaches the hook there was.
    #[test]
    fn a_caught_panic_is_the_reply_and_only_other_panics_reach_the_previous_hook() {
        static PRINTED: AtomicUsize = AtomicUsize::new(0);
        std::panic::set_hook(Box::new(|_| {
            PRINTED.fetch_add(1, Ordering::SeqCst);
        }));
        let caught = guarded::<()>(Host::detached(), || panic!("inside"));
        let message = caught.unwrap_err().message().to_owned();
        assert!(
            message.starts_with("plugin panicked at plugins/sdk/src/export.rs:")
                && message.ends_with(": inside"),
            "{message}"
        );
        assert_eq!(
            PRINTED.load(Ordering::SeqCst),
            0,
            "the caught panic was printed"
        );
        // Not inside an entry point any more.
        let outside = std::thread::spawn(|| panic!("outside")).join();
        assert!(outside.is_err());
        assert_eq!(PRINTED.load(Ordering::SeqCst), 1);
        // One the plugin catches itself leaves nothing behind.
        let recovered = guarded(Host::detached(), || {
            Ok(std::panic::catch_unwind(|| panic!("recovered")).is_err())
        });
        assert_eq!(recovered.ok(), Some(true));
        assert!(CAUGHT_PANICS.lock().unwrap().is_empty());
        // A later caught panic is its own, not the first one's.
        let again = guarded::<()>(Host::detached(), || panic!("again")).unwrap_err();
        assert!(again.message().ends_with(": again"), "{}", again.message());
        assert!(CAUGHT_PANICS.lock().unwrap().is_empty());
    }
}
