//! `netprobe` (zoo): opens a TCP connection although its manifest does not grant
//! `network`. The seccomp filter stops `socket(AF_INET, …)`; the engine's user-notification
//! listener answers EPERM and reports a `forbidden_syscall` violation naming the syscall
//! and the address family.
//!
//! Hooks: `ping` answers `pong`; `chaos` connects (a payload is the address, default the
//! `address` setting) and answers `connected to …` or `denied: <error>`. Settings:
//! `chaos_after_ms` (connect that long after start; 0 = never), `address`.

use std::time::Duration;

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

#[derive(Debug)]
pub struct Netprobe {
    address: String,
}

fn connect(address: &str) -> String {
    match std::net::TcpStream::connect_timeout(
        &match address.parse() {
            Ok(address) => address,
            Err(err) => return format!("invalid address {address:?}: {err}"),
        },
        Duration::from_millis(500),
    ) {
        Ok(_) => format!("connected to {address}"),
        Err(err) => format!("denied: {err}"),
    }
}

impl Plugin for Netprobe {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let address = config
            .get_str("address")
            .unwrap_or("127.0.0.1:9")
            .to_owned();
        let after = config.get_i64("chaos_after_ms").unwrap_or(0);
        let after = u64::try_from(after).map_err(|_| {
            Error::invalid_input(format!(
                "`chaos_after_ms` must not be negative, got {after}"
            ))
        })?;
        if after > 0 {
            let address = address.clone();
            std::thread::Builder::new()
                .name("netprobe-chaos".to_owned())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(after));
                    host.warn(&format!("chaos_after_ms elapsed: {}", connect(&address)));
                })
                .map_err(|err| Error::new(format!("cannot start the chaos timer: {err}")))?;
        }
        Ok(Self { address })
    }

    fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => {
                let text = String::from_utf8_lossy(payload);
                let address = match text.trim() {
                    "" => self.address.as_str(),
                    given => given,
                };
                Ok(connect(address).into_bytes())
            }
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Netprobe);
