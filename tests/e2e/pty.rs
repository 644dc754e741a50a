//! A program under a pseudo-terminal, with the screen it has drawn so far: a reader thread
//! feeds everything it writes to a `vt100` parser (ratatui writes only the cells that
//! changed, so the raw bytes are not the screen).
//!
//! Shared by the dashboard's end-to-end tests and its benchmark (`#[path]`), which use
//! different parts of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portable_pty::{Child, CommandBuilder, ExitStatus, MasterPty, PtySize, native_pty_system};

pub struct PtySession {
    child: Box<dyn Child + Send + Sync>,
    /// The terminal's master side (shared with the reader, which must not outlive it).
    master: Arc<Mutex<Box<dyn MasterPty + Send>>>,
    writer: Box<dyn Write + Send>,
    screen: Arc<Mutex<vt100::Parser>>,
    /// A message per chunk of output; closed when the terminal is.
    output: Receiver<()>,
    closed: bool,
}

impl PtySession {
    /// Starts `command` on a new `rows` × `columns` terminal (`TERM=xterm-256color`).
    pub fn spawn(mut command: CommandBuilder, rows: u16, columns: u16) -> Self {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows,
                cols: columns,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pseudo-terminal");
        command.env("TERM", "xterm-256color");
        let child = pty
            .slave
            .spawn_command(command)
            .expect("the program starts");
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().expect("a reader");
        let writer = pty.master.take_writer().expect("a writer");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(rows, columns, 0)));
        let (notify, output) = mpsc::channel();
        let master = Arc::new(Mutex::new(pty.master));
        {
            let screen = Arc::clone(&screen);
            // The master must outlive the reader: the thread holds it too.
            let master = Arc::clone(&master);
            std::thread::spawn(move || {
                let _master = master;
                let mut chunk = vec![0u8; 65536];
                loop {
                    match reader.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(read) => {
                            screen.lock().unwrap().process(&chunk[..read]);
                            if notify.send(()).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        PtySession {
            child,
            master,
            writer,
            screen,
            output,
            closed: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.process_id().expect("a pid")
    }

    /// The parsed terminal (screen, alternate screen, cursor).
    pub fn screen(&self) -> MutexGuard<'_, vt100::Parser> {
        self.screen.lock().unwrap()
    }

    pub fn contents(&self) -> String {
        self.screen().screen().contents()
    }

    /// The screen with its attributes, as escape sequences.
    pub fn formatted(&self) -> Vec<u8> {
        self.screen().screen().contents_formatted()
    }

    /// Whether the terminal is in canonical mode with echo — as a shell leaves it, and not
    /// in raw mode.
    pub fn cooked(&self) -> bool {
        let termios = self
            .master
            .lock()
            .unwrap()
            .get_termios()
            .expect("the terminal's settings");
        let local = termios.local_flags.bits();
        local & libc::ICANON != 0 && local & libc::ECHO != 0
    }

    pub fn press(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).expect("written");
        self.writer.flush().expect("flushed");
    }

    /// Waits until the screen satisfies `done`; after `timeout` fails showing the screen.
    #[track_caller]
    pub fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let contents = self.contents();
            if done(&contents) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !self.closed,
                "timed out waiting for {what}; the screen:\n{contents}"
            );
            match self.output.recv_timeout(left) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Waits up to `timeout` for the next chunk of output; whether one came.
    pub fn next_output(&self, timeout: Duration) -> bool {
        self.output.recv_timeout(timeout).is_ok()
    }

    /// Forgets the chunks of output announced so far.
    pub fn skip_output(&self) {
        while self.output.try_recv().is_ok() {}
    }

    /// Takes output until the terminal closes (every process holding it has ended).
    pub fn drain_until_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the terminal stays open after the exit");
            if let Err(mpsc::RecvTimeoutError::Disconnected) = self.output.recv_timeout(left) {
                self.closed = true;
            }
        }
    }

    /// Waits for the program to end, up to `timeout`, taking its output meanwhile (the
    /// final frames, the terminal reset).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            let _ = self.output.recv_timeout(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        // A failed test or bench must not leave the program (and its workers) behind: it
        // is the child this session started, ended by its pid.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
