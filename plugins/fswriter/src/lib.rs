//! `fswriter` (zoo): writes one file where its manifest allows (`/tmp`, the worker's
//! private one) and one where it does not (`<dir>/plugboard-fswriter-<pid>`, by default in
//! `/var/tmp`). Landlock refuses the second with EACCES.
//!
//! Hooks: `ping` answers `pong`; `chaos` tries both writes and answers one line each:
//! `wrote <path>` or `denied: <path>: <error>`. Settings: `chaos_after_ms` (write that
//! long after start; 0 = never), `dir`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

#[derive(Debug)]
pub struct Fswriter {
    outside: PathBuf,
}

fn write(path: &Path) -> String {
    let written =
        std::fs::File::create(path).and_then(|mut file| file.write_all(b"written by fswriter\n"));
    match written {
        Ok(()) => format!("wrote {}", path.display()),
        Err(err) => format!("denied: {}: {err}", path.display()),
    }
}

/// Both writes, one line each.
fn chaos(outside: &Path) -> String {
    let inside = Path::new("/tmp").join(format!("plugboard-fswriter-{}", std::process::id()));
    let lines = [write(&inside), write(outside)];
    // Should the write outside have gone through (no Landlock), leave nothing behind.
    if lines[1].starts_with("wrote") {
        let _ = std::fs::remove_file(outside);
    }
    lines.join("\n")
}

impl Plugin for Fswriter {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let dir = config.get_str("dir").unwrap_or("/var/tmp");
        let outside = Path::new(dir).join(format!("plugboard-fswriter-{}", std::process::id()));
        let after = config.get_i64("chaos_after_ms").unwrap_or(0);
        let after = u64::try_from(after).map_err(|_| {
            Error::invalid_input(format!(
                "`chaos_after_ms` must not be negative, got {after}"
            ))
        })?;
        if after > 0 {
            let outside = outside.clone();
            std::thread::Builder::new()
                .name("fswriter-chaos".to_owned())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(after));
                    host.warn(&format!("chaos_after_ms elapsed: {}", chaos(&outside)));
                })
                .map_err(|err| Error::new(format!("cannot start the chaos timer: {err}")))?;
        }
        Ok(Self { outside })
    }

    fn call(&self, hook: &str, _payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => Ok(chaos(&self.outside).into_bytes()),
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Fswriter);
