//! The C ABI between a host and a plugin library.
//!
//! A plugin library exports one symbol, [`ENTRY_SYMBOL`], a function that returns a pointer
//! to a static [`PluginVTable`]. The table's first field is its ABI version and stays the
//! first field in every future version, so a host can read it from a library built against
//! any version and refuse a mismatch before it touches anything else.
//!
//! `plugins/sdk/include/plugboard.h` declares the same layout for plugins written in C.
//!
//! Ownership: the host owns every buffer it passes in (hook name, payload, config) for the
//! duration of the call only. The plugin owns every [`PluginBuffer`] it writes to an out
//! parameter until the host hands it back through [`PluginVTable::free_buffer`].
//!
//! Threads: the host may call `call` and `health` on one instance from several threads at
//! once; `create` and `destroy` are never concurrent with anything else on that instance.

use std::ffi::c_void;

/// The version of this ABI. A host refuses a library whose table carries another one.
pub const ABI_VERSION: u32 = 1;

/// The name of the one symbol a plugin library exports.
pub const ENTRY_SYMBOL: &str = "plugboard_plugin_entry";

/// Success.
pub const STATUS_OK: i32 = 0;
/// The plugin returned an error; the buffer holds its UTF-8 message.
pub const STATUS_ERROR: i32 = 1;
/// The plugin does not handle this hook.
pub const STATUS_UNKNOWN_HOOK: i32 = 2;
/// The plugin panicked (or, in C, aborted the operation); the buffer holds the message.
pub const STATUS_PANIC: i32 = 3;
/// The payload or config could not be decoded; the buffer holds the message.
pub const STATUS_INVALID_INPUT: i32 = 4;

/// `emit` succeeded.
pub const EMIT_OK: i32 = 0;
/// The plugin may not emit this hook (its manifest does not grant it).
pub const EMIT_DENIED: i32 = 1;
/// The host could not deliver the hook.
pub const EMIT_FAILED: i32 = 2;

/// Log levels passed to [`HostApi::log`].
pub const LOG_ERROR: u32 = 0;
/// See [`LOG_ERROR`].
pub const LOG_WARN: u32 = 1;
/// See [`LOG_ERROR`].
pub const LOG_INFO: u32 = 2;
/// See [`LOG_ERROR`].
pub const LOG_DEBUG: u32 = 3;

/// Bytes allocated by the plugin and handed to the host, which returns them through
/// [`PluginVTable::free_buffer`]. An empty buffer may have a null `data`.
#[repr(C)]
#[derive(Debug)]
pub struct PluginBuffer {
    pub data: *mut u8,
    pub len: usize,
}

impl PluginBuffer {
    /// A buffer holding nothing; what the host puts in an out parameter before a call.
    pub const EMPTY: Self = Self {
        data: std::ptr::null_mut(),
        len: 0,
    };
}

/// Logs one UTF-8 message.
pub type LogFn =
    unsafe extern "C" fn(context: *mut c_void, level: u32, message: *const u8, len: usize);

/// Emits a hook to the plugins subscribed to it; returns one of the `EMIT_*` codes.
pub type EmitFn = unsafe extern "C" fn(
    context: *mut c_void,
    hook: *const u8,
    hook_len: usize,
    payload: *const u8,
    payload_len: usize,
) -> i32;

/// What the host offers a plugin instance. It outlives the instance it was passed to.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    pub abi_version: u32,
    /// Opaque to the plugin; passed back on every callback.
    pub context: *mut c_void,
    pub log: Option<LogFn>,
    pub emit: Option<EmitFn>,
}

/// Creates an instance. `config` is a UTF-8 JSON object (the plugin's merged settings).
/// On success writes the instance pointer to `instance_out` and returns [`STATUS_OK`];
/// otherwise writes a message to `error_out` and returns another status.
pub type CreateFn = unsafe extern "C" fn(
    host: *const HostApi,
    config: *const u8,
    config_len: usize,
    instance_out: *mut *mut c_void,
    error_out: *mut PluginBuffer,
) -> i32;

/// Calls one hook: writes the reply (or an error message) to `reply_out`.
pub type CallFn = unsafe extern "C" fn(
    instance: *mut c_void,
    hook: *const u8,
    hook_len: usize,
    payload: *const u8,
    payload_len: usize,
    reply_out: *mut PluginBuffer,
) -> i32;

/// Checks health: [`STATUS_OK`] when healthy, otherwise a status and a message.
pub type HealthFn =
    unsafe extern "C" fn(instance: *mut c_void, detail_out: *mut PluginBuffer) -> i32;

/// Destroys an instance; it is not used again.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);

/// Frees a buffer the plugin wrote to an out parameter.
pub type FreeBufferFn = unsafe extern "C" fn(data: *mut u8, len: usize);

/// The table a plugin library's entry symbol returns. Lives as long as the library.
#[repr(C)]
#[derive(Debug)]
pub struct PluginVTable {
    /// Must be the first field, in this and every later ABI version.
    pub abi_version: u32,
    /// `size_of::<PluginVTable>()` as the plugin saw it; the host refuses a shorter table.
    pub struct_size: u32,
    pub create: Option<CreateFn>,
    pub call: Option<CallFn>,
    pub health: Option<HealthFn>,
    pub destroy: Option<DestroyFn>,
    pub free_buffer: Option<FreeBufferFn>,
}

/// The signature of [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const PluginVTable;

#[allow(clippy::cast_possible_truncation)]
/// The size a host expects in [`PluginVTable::struct_size`].
pub const VTABLE_SIZE: u32 = std::mem::size_of::<PluginVTable>() as u32;
