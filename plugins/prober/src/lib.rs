//! `prober`: tries, on command, the things a sandbox must stop — for tests and demos. Each
//! hook attempts one thing and answers what happened (`ok: …` or `denied: <errno>`); the
//! sandbox, not this plugin, is what decides and reports.
//!
//! Hooks: `connect` (TCP to the address in the payload, default 127.0.0.1:9), `write_file`
//! and `read_file` (the path in the payload), `spawn` (runs `/bin/true`), `whoami`
//! (uid, pid, hostname), `env` (the environment it was given), `interfaces` (network
//! interfaces it can see), `sleep` (milliseconds in the payload), `crash` (aborts),
//! `chatter` (prints and logs as many lines as the payload says), `log` (logs the payload
//! as it is, newlines included), `newlines` (writes empty
//! lines to stdout, 64 KiB per write, for the milliseconds in the payload), `sockets`
//! (opens sockets, for the milliseconds in the payload, as fast as it can), `writes` (opens a
//! file outside its grants for writing, the same way), `emit` (emits the hook
//! named in the payload through the host), `emit_later` (sleeps the milliseconds in the
//! payload, then emits `prober.allowed`), `relay.a` / `relay.b` (each emits the other,
//! for a loop of two probers), `forge` (writes garbage straight onto the
//! worker's IPC socket, as a hostile plugin could), `foreign_abi` (a system call by its
//! x32 number, which the filter cannot name), `watch` (an inotify watch on the path in the
//! payload, default `/etc`; `nofollow:<path>` watches a link itself; the descriptor is
//! kept open and named in the reply), `watch_race` (half a second of watches on `/tmp` while a thread
//! keeps rewriting the path to the payload's, default `/etc`), `unhealthy` / `healthy` (its health
//! checks fail / pass from then on). With the setting `emit_on_create` it emits that hook
//! while it is created, and logs what the engine said.

use std::io::{Read, Write};

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

mod hostile;

#[derive(Debug)]
pub struct Prober {
    host: Host,
    /// Set by the `unhealthy` hook, cleared by `healthy`: what `health` reports.
    unhealthy: std::sync::atomic::AtomicBool,
    /// `failing_health_ms`: every health check waits this long, then fails.
    failing_health: Option<std::time::Duration>,
}

fn outcome<T>(result: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> Vec<u8> {
    match result {
        Ok(value) => format!("ok: {}", ok(value)).into_bytes(),
        Err(err) => format!("denied: {err}").into_bytes(),
    }
}

fn text(payload: &[u8], default: &str) -> String {
    let text = String::from_utf8_lossy(payload).trim().to_owned();
    if text.is_empty() {
        default.to_owned()
    } else {
        text
    }
}

fn millis(payload: &[u8], hook: &str) -> Result<std::time::Duration, Error> {
    text(payload, "1000")
        .parse()
        .map(std::time::Duration::from_millis)
        .map_err(|_| Error::invalid_input(format!("{hook} wants milliseconds")))
}

/// Writes empty lines to stdout, 64 KiB per write, for the time in the payload.
fn flood_newlines(payload: &[u8]) -> Result<Vec<u8>, Error> {
    let until = std::time::Instant::now() + millis(payload, "newlines")?;
    let block = vec![b'\n'; 64 * 1024];
    let mut stdout = std::io::stdout().lock();
    let mut blocks = 0u64;
    while std::time::Instant::now() < until {
        stdout
            .write_all(&block)
            .map_err(|err| Error::new(format!("stdout: {err}")))?;
        blocks += 1;
    }
    Ok(format!("wrote {} empty lines", blocks * 64 * 1024).into_bytes())
}

/// Opens sockets as fast as it can for the time in the payload.
/// Opens a file outside its grants for writing in a loop, for the milliseconds in the
/// payload: each open a notification the engine reads, resolves and judges.
fn flood_writes(payload: &[u8]) -> Result<Vec<u8>, Error> {
    let until = std::time::Instant::now() + millis(payload, "writes")?;
    let (mut tried, mut denied) = (0u64, 0u64);
    while std::time::Instant::now() < until {
        tried += 1;
        if std::fs::File::create("/var/tmp/plugboard-prober-flood/x").is_err() {
            denied += 1;
        }
    }
    Ok(format!("denied {denied} of {tried} writes").into_bytes())
}

fn flood_sockets(payload: &[u8]) -> Result<Vec<u8>, Error> {
    let until = std::time::Instant::now() + millis(payload, "sockets")?;
    let (mut tried, mut denied) = (0u64, 0u64);
    while std::time::Instant::now() < until {
        tried += 1;
        if std::net::UdpSocket::bind("127.0.0.1:0").is_err() {
            denied += 1;
        }
    }
    Ok(format!("denied {denied} of {tried} sockets").into_bytes())
}

impl Prober {
    /// Emits `hook` and answers what the engine said.
    /// Logs the payload as it is (newlines and all) through the host API.
    fn log_as_is(&self, payload: &[u8]) -> Vec<u8> {
        self.host.info(&String::from_utf8_lossy(payload));
        b"logged".to_vec()
    }

    /// Sleeps the milliseconds in the payload, then emits `prober.allowed`: an emit from a
    /// call that a reload overtakes.
    fn emit_later(&self, payload: &[u8]) -> Result<Vec<u8>, Error> {
        std::thread::sleep(millis(payload, "emit_later")?);
        Ok(self.emit("prober.allowed", b"later"))
    }

    fn emit(&self, hook: &str, payload: &[u8]) -> Vec<u8> {
        match self.host.emit(hook, payload) {
            Ok(()) => format!("ok: emitted {hook}").into_bytes(),
            Err(err) => format!("denied: {err}").into_bytes(),
        }
    }
}

impl Plugin for Prober {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        if let Some(hook) = config
            .get_str("emit_on_create")
            .filter(|hook| !hook.is_empty())
        {
            match host.emit(hook, b"while created") {
                Ok(()) => host.info(&format!("emit on create: ok: emitted {hook}")),
                Err(err) => host.info(&format!("emit on create: denied: {err}")),
            }
        }
        let failing_health = config
            .get_i64("failing_health_ms")
            .and_then(|ms| u64::try_from(ms).ok())
            .filter(|ms| *ms > 0)
            .map(std::time::Duration::from_millis);
        Ok(Prober {
            host,
            unhealthy: std::sync::atomic::AtomicBool::new(false),
            failing_health,
        })
    }

    fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(match hook {
            "connect" => connect(payload),
            "datagram" => datagram(payload),
            "write_file" => {
                let path = text(payload, "/tmp/prober");
                outcome(
                    std::fs::File::create(&path)
                        .and_then(|mut file| file.write_all(b"written by prober\n")),
                    |()| format!("wrote {path}"),
                )
            }
            "read_file" => {
                let path = text(payload, "/etc/hostname");
                outcome(
                    std::fs::File::open(&path).and_then(|mut file| {
                        let mut contents = String::new();
                        file.read_to_string(&mut contents).map(|_| contents)
                    }),
                    |contents| contents,
                )
            }
            "spawn" => outcome(std::process::Command::new("/bin/true").status(), |status| {
                format!("ran /bin/true: {status}")
            }),
            "unhealthy" | "healthy" => {
                let unhealthy = hook == "unhealthy";
                self.unhealthy
                    .store(unhealthy, std::sync::atomic::Ordering::SeqCst);
                format!(
                    "health checks now {}",
                    if unhealthy { "fail" } else { "pass" }
                )
                .into_bytes()
            }
            "whoami" => whoami(),
            "env" => std::env::vars()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
            "interfaces" => {
                let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
                dev.lines()
                    .skip(2)
                    .filter_map(|line| line.split(':').next())
                    .map(|name| name.trim().to_owned())
                    .collect::<Vec<_>>()
                    .join(",")
                    .into_bytes()
            }
            "sleep" => {
                let duration = millis(payload, "sleep")?;
                std::thread::sleep(duration);
                format!("slept {} ms", duration.as_millis()).into_bytes()
            }
            "crash" => std::process::abort(),
            // A reply of the size asked for (bytes `x`), to try the bound on replies.
            "big" => big_reply(payload)?,
            "chatter" => {
                let lines: u32 = text(payload, "10")
                    .parse()
                    .map_err(|_| Error::invalid_input("chatter wants a line count"))?;
                for line in 0..lines {
                    println!("chatter line {line}");
                    self.host.info(&format!("log line {line}"));
                }
                format!("wrote {lines} lines").into_bytes()
            }
            "log" => self.log_as_is(payload),
            "newlines" => flood_newlines(payload)?,
            "sockets" => flood_sockets(payload)?,
            "writes" => flood_writes(payload)?,
            "emit" => {
                let hook = text(payload, "prober.event");
                self.emit(&hook, b"from prober")
            }
            "emit_later" => self.emit_later(payload)?,
            // Two probers subscribed one to each, granted to emit the other, emit to each
            // other without end: only the engine's bound on emit chains stops them.
            "relay.a" => self.emit("relay.b", payload),
            "relay.b" => self.emit("relay.a", payload),
            "forge" => outcome(
                hostile::write_to_ipc_socket(b"PB\xff\xff\xff\x7fnot a frame"),
                |()| "forged".to_owned(),
            ),
            "foreign_abi" => outcome(hostile::foreign_abi_syscall(), |pid| {
                format!("the x32 getpid answered {pid}")
            }),
            "watch" => watch(payload),
            // Half a second of watches on /tmp (granted) while another thread keeps swapping
            // the path for the payload's (refused, /etc by default).
            "watch_race" => outcome(
                hostile::watch_race(
                    "/tmp",
                    &text(payload, "/etc"),
                    std::time::Duration::from_millis(500),
                ),
                |(fd, added)| format!("inotify fd {fd}, {added} watches added"),
            ),
            other => return Err(Error::unknown_hook(other)),
        })
    }

    fn health(&self) -> Result<(), Error> {
        if let Some(wait) = self.failing_health {
            std::thread::sleep(wait);
            return Err(Error::new("configured to fail its health checks"));
        }
        if self.unhealthy.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::new("told to fail its health checks"));
        }
        Ok(())
    }
}

export_plugin!(Prober);

/// A reply of the size asked for (bytes `x`), to try the bound on replies.
fn big_reply(payload: &[u8]) -> Result<Vec<u8>, Error> {
    let bytes: usize = text(payload, "1024")
        .parse()
        .map_err(|_| Error::invalid_input("big wants a byte count"))?;
    Ok(vec![b'x'; bytes])
}

/// An inotify watch on the payload's path (`/etc` by default; `nofollow:<path>` watches a
/// link itself).
fn watch(payload: &[u8]) -> Vec<u8> {
    let path = text(payload, "/etc");
    let (path, follow) = match path.strip_prefix("nofollow:") {
        Some(link) => (link.to_owned(), false),
        None => (path, true),
    };
    outcome(hostile::watch_path(&path, follow), |(fd, _)| {
        format!("watching {path}, inotify fd {fd}")
    })
}

/// A datagram to a host socket by its path (`/dev/log` unless the payload names another):
/// no `connect` needed.
fn datagram(payload: &[u8]) -> Vec<u8> {
    let path = text(payload, "/dev/log");
    outcome(
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|socket| socket.send_to(b"from prober", &path)),
        |sent| format!("sent {sent} bytes to {path}"),
    )
}

/// Its pid, uids and hostname as the worker sees them.
fn whoami() -> Vec<u8> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .unwrap_or("Uid: ?")
        .to_owned();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "pid {} {uid} hostname {}",
        std::process::id(),
        hostname.trim()
    )
    .into_bytes()
}

/// A TCP connection to the payload's address (`127.0.0.1:9` by default).
fn connect(payload: &[u8]) -> Vec<u8> {
    let address = text(payload, "127.0.0.1:9");
    outcome(std::net::TcpStream::connect(address.as_str()), |_| {
        format!("connected to {address}")
    })
}
