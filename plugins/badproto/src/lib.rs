//! `badproto` (zoo): writes garbage onto its worker's IPC socket, as a hostile plugin
//! could: a frame header announcing an absurd length, then bytes that are no frame. The
//! engine takes it as a `protocol_violation`, kills the worker, and by default quarantines
//! the plugin.
//!
//! Hooks: `ping` answers `pong`; `chaos` writes the garbage (its reply, if any, comes too
//! late to matter). Settings: `chaos_after_ms` (write it that long after start, on a
//! thread of its own; 0 = never).

use std::time::Duration;

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

mod hostile;

/// The frame magic, a length of almost 2 GiB, and no frame.
const GARBAGE: &[u8] = b"PB\xff\xff\xff\x7fthis is not a frame";

#[derive(Debug)]
pub struct Badproto;

fn forge() -> String {
    match hostile::write_to_ipc_socket(GARBAGE) {
        Ok(()) => format!("wrote {} garbage bytes onto the socket", GARBAGE.len()),
        Err(err) => format!("could not write onto the socket: {err}"),
    }
}

impl Plugin for Badproto {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let after = config.get_i64("chaos_after_ms").unwrap_or(0);
        let after = u64::try_from(after).map_err(|_| {
            Error::invalid_input(format!(
                "`chaos_after_ms` must not be negative, got {after}"
            ))
        })?;
        if after > 0 {
            std::thread::Builder::new()
                .name("badproto-chaos".to_owned())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(after));
                    host.warn(&format!("chaos_after_ms elapsed: {}", forge()));
                })
                .map_err(|err| Error::new(format!("cannot start the chaos timer: {err}")))?;
        }
        Ok(Self)
    }

    fn call(&self, hook: &str, _payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => Ok(forge().into_bytes()),
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Badproto);
