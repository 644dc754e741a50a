//! The C example plugin is built by this crate's build script; this crate only says where
//! the library and its bundle files are, so tests can load it.

/// The freshly built `libhello_c.so`.
pub const LIBRARY_PATH: &str = env!("HELLO_C_LIBRARY");

/// The C plugin's `plugin.toml`.
pub const MANIFEST_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plugin.toml");
