//! `plugboard demo` in a real pseudo-terminal: the screen is what a VT100 parser makes of
//! the bytes the dashboard writes (ratatui writes only changed cells, so raw output is not
//! the screen). Keys go in as a user types them.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use portable_pty::CommandBuilder;

use crate::pty::PtySession;
use crate::support::{fails, is_alive, keys, signed_example};

const ROWS: u16 = 24;
const COLUMNS: u16 = 80;

/// How long a step of a test may take to show on screen.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The dashboard under a pseudo-terminal, with the screen it drew so far.
struct Session(PtySession);

impl Deref for Session {
    type Target = PtySession;
    fn deref(&self) -> &PtySession {
        &self.0
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut PtySession {
        &mut self.0
    }
}

impl Session {
    fn start(args: &[&dyn AsRef<std::ffi::OsStr>], home: &Path) -> Session {
        Self::start_with(args, home, &[])
    }

    /// As [`Session::start`], with more environment variables.
    fn start_with(
        args: &[&dyn AsRef<std::ffi::OsStr>],
        home: &Path,
        env: &[(&str, &str)],
    ) -> Session {
        let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_plugboard"));
        for arg in args {
            command.arg(arg);
        }
        // Everything the demo writes (its temporary directory, the default state and
        // log files, any user configuration) stays inside this test's directory.
        command.env("TMPDIR", home.join("tmp"));
        command.env("HOME", home);
        command.env("XDG_CONFIG_HOME", home.join("config"));
        command.env("XDG_STATE_HOME", home.join("state"));
        command.env_remove("NO_COLOR");
        for (name, value) in env {
            command.env(name, value);
        }
        std::fs::create_dir_all(home.join("tmp")).unwrap();
        Session(PtySession::spawn(command, ROWS, COLUMNS))
    }

    /// Waits until the screen satisfies `done`; on timeout fails showing the screen.
    #[track_caller]
    fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        self.0.wait_for(what, STEP_TIMEOUT, done);
    }

    /// The row of the plugin table that shows `plugin`.
    fn row(contents: &str, plugin: &str) -> Option<String> {
        contents
            .lines()
            .find(|line| line.starts_with(&format!("│{plugin} ")))
            .map(str::to_owned)
    }

    #[track_caller]
    fn wait_for_state(&mut self, plugin: &str, state: &str) {
        self.wait_for(&format!("{plugin} {state}"), |contents| {
            Self::row(contents, plugin).is_some_and(|row| row.contains(state))
        });
    }
}

/// Processes whose parent is `parent` (the engine's workers), by pid.
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// Chaos: the menu's first entry is netprobe, which connects over TCP without the network
/// capability; the engine catches the syscall and the event log shows it. The call's
/// answer opens a dialog, which takes the next key: it is closed here.
fn set_off_netprobe(session: &mut Session) {
    // (ctrl-u clears the filter being edited; an escape right before more keys would
    // read as alt-<key>, as in any terminal.)
    session.press("/\x15netprobe\r");
    session.wait_for("the netprobe row", |contents| {
        Session::row(contents, "netprobe").is_some_and(|row| row.contains("Verified"))
    });
    session.press("c");
    session.wait_for("the chaos menu", |contents| contents.contains("▶ netprobe"));
    session.press("\r");
    session.wait_for("the violation in the event log", |contents| {
        contents.lines().any(|line| {
            line.contains("netprobe") && (line.contains("forbidden") || line.contains("connect"))
        })
    });
    session.wait_for("the chaos reply", |contents| {
        contents.contains("netprobe.chaos →")
    });
    session.press("\r");
    session.wait_for("the reply closed", |contents| {
        !contents.contains("netprobe.chaos →")
    });
}

#[test]
fn demo_runs_in_a_real_terminal_and_leaves_nothing_behind() {
    let home = tempfile::tempdir().unwrap();
    let mut session = Session::start(&[&"demo"], home.path());
    let pid = session.pid();

    // The well-behaved plugins come up, confined, under traffic; the others wait verified.
    session.wait_for("three running plugins", |contents| {
        contents.contains("● 3 running")
    });
    session.wait_for("traffic on", |contents| contents.contains("traffic ● 20/s"));
    session.wait_for("the zoo verified", |contents| {
        contents.contains("✓ 13 verified")
    });
    assert!(
        session.screen().screen().alternate_screen(),
        "the dashboard draws on the alternate screen"
    );
    for plugin in ["counter", "hello"] {
        session.wait_for_state(plugin, "Running");
    }

    // Filter down to hello-c; stop it, start it, reload it (confirmed), unload it
    // (confirmed), each change seen on screen.
    session.press("/hello-c\r");
    session.wait_for("the filter", |contents| {
        contents.contains("Plugins 1/16") && Session::row(contents, "counter").is_none()
    });
    session.wait_for_state("hello-c", "Running");
    session.press("x");
    session.wait_for_state("hello-c", "Stopped");
    session.press("s");
    session.wait_for_state("hello-c", "Running");
    session.press("r");
    session.wait_for("the reload question", |contents| {
        contents.contains("Reload hello-c?")
    });
    session.press("y");
    session.wait_for("the reload", |contents| {
        contents.contains("reloaded 0.1.0 → 0.1.0")
    });
    session.wait_for_state("hello-c", "Running");
    session.press("u");
    session.wait_for("the unload question", |contents| {
        contents.contains("Unload hello-c?")
    });
    session.press("y");
    session.wait_for("the unload", |contents| {
        Session::row(contents, "hello-c").is_some_and(|row| !row.contains("Running"))
    });

    set_off_netprobe(&mut session);
    let workers = children_of(pid);
    assert!(
        !workers.is_empty(),
        "the engine has workers before the quit"
    );

    session.press("q");
    let status = session.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "the dashboard quits on q; the screen:\n{}",
        session.contents()
    );
    assert!(
        status
            .as_ref()
            .is_some_and(portable_pty::ExitStatus::success),
        "exit status {status:?}"
    );
    // Let the reader take the last bytes (the terminal reset) before looking.
    session.drain_until_closed(Duration::from_secs(10));
    let screen = session.screen();
    assert!(
        !screen.screen().alternate_screen(),
        "the terminal left the alternate screen"
    );
    drop(screen);
    assert!(
        !session.screen().screen().hide_cursor(),
        "the cursor is shown again"
    );
    let alive: Vec<u32> = workers.into_iter().filter(|pid| is_alive(*pid)).collect();
    assert!(alive.is_empty(), "workers left running: {alive:?}");
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("tmp"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "the demo's temporary directory remains: {leftovers:?}"
    );
}

#[test]
fn dashboard_over_signed_bundles_leaves_cleanly_on_sigterm() {
    let home = tempfile::tempdir().unwrap();
    let keys = keys(home.path(), "operator");
    let plugins = home.path().join("plugins");
    signed_example(&plugins, "hello", &keys);
    signed_example(&plugins, "counter", &keys);
    // The user's keymap is read: quit moves to ctrl-q, so `q` must not quit below.
    std::fs::create_dir_all(home.path().join("config/plugboard")).unwrap();
    std::fs::write(
        home.path().join("config/plugboard/keymap.toml"),
        "quit = \"ctrl-q\"\n",
    )
    .unwrap();
    let mut session = Session::start(
        &[
            &"dashboard",
            &"--plugins",
            &plugins,
            &"--trust-store",
            &keys.store,
        ],
        home.path(),
    );
    let pid = session.pid();
    session.wait_for_state("hello", "Running");
    session.wait_for_state("counter", "Running");
    session.wait_for("the remapped key in the footer", |contents| {
        contents
            .lines()
            .last()
            .is_some_and(|footer| footer.contains("ctrl-q quit"))
    });
    let workers = children_of(pid);
    assert_eq!(workers.len(), 2, "one worker per plugin: {workers:?}");

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = session.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "SIGTERM ends the dashboard; the screen:\n{}",
        session.contents()
    );
    session.drain_until_closed(Duration::from_secs(10));
    assert!(
        !session.screen().screen().alternate_screen(),
        "the terminal left the alternate screen"
    );
    let alive: Vec<u32> = workers.into_iter().filter(|pid| is_alive(*pid)).collect();
    assert!(alive.is_empty(), "workers left running: {alive:?}");
}

#[test]
fn a_broken_keymap_or_theme_is_a_one_line_error_naming_the_file() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("plugboard");
    std::fs::create_dir_all(config.join("themes")).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_plugboard"))
            .args(args)
            .env("XDG_CONFIG_HOME", home.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    std::fs::write(config.join("keymap.toml"), "stop = \"hyper-x\"\n").unwrap();
    let err = fails(&run(&[]));
    assert!(
        err.contains("plugboard/keymap.toml: stop: expected a key such as"),
        "{err}"
    );
    std::fs::remove_file(config.join("keymap.toml")).unwrap();
    std::fs::write(config.join("themes/mine.toml"), "[colors]\nok = \"gren\"\n").unwrap();
    let err = fails(&run(&["demo"]));
    assert!(
        err.contains("themes/mine.toml: colors.ok: expected a colour name"),
        "{err}"
    );
    std::fs::remove_file(config.join("themes/mine.toml")).unwrap();
    let err = fails(&run(&["dashboard", "--theme", "nope"]));
    assert!(err.contains("expected one of the themes dark,"), "{err}");
    // Without a terminal the dashboard says what to use instead.
    let err = fails(&run(&["dashboard"]));
    assert!(err.contains("needs a terminal"), "{err}");
}

/// A panic in the dashboard (asked for through its test hook, `PLUGBOARD_TEST_PANIC_KEY`)
/// restores the terminal — alternate screen left, cursor shown, raw mode off — prints the
/// message, stops every worker and removes their cgroups, and exits 1.
#[test]
fn a_panic_restores_the_terminal_and_stops_every_worker() {
    let home = tempfile::tempdir().unwrap();
    let keys = keys(home.path(), "operator");
    let plugins = home.path().join("plugins");
    signed_example(&plugins, "hello", &keys);
    signed_example(&plugins, "counter", &keys);
    let mut session = Session::start_with(
        &[
            &"dashboard",
            &"--plugins",
            &plugins,
            &"--trust-store",
            &keys.store,
        ],
        home.path(),
        &[("PLUGBOARD_TEST_PANIC_KEY", "!"), ("RUST_BACKTRACE", "0")],
    );
    let pid = session.pid();
    session.wait_for_state("hello", "Running");
    session.wait_for_state("counter", "Running");
    assert!(session.screen().screen().alternate_screen());
    assert!(
        session.screen().screen().hide_cursor(),
        "the dashboard hides the cursor"
    );
    assert!(!session.cooked(), "the dashboard runs in raw mode");
    let workers = children_of(pid);
    assert_eq!(workers.len(), 2, "one worker per plugin: {workers:?}");
    let cgroups: Vec<String> = workers.iter().map(|pid| cgroup_of(*pid)).collect();
    assert!(
        cgroups.iter().all(|cgroup| cgroup.contains("plugboard-")),
        "{cgroups:?}"
    );

    session.press("!");
    let status = session.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "the dashboard ends after the panic; the screen:\n{}",
        session.contents()
    );
    assert_eq!(status.unwrap().exit_code(), 1, "a one-line error, exit 1");
    session.drain_until_closed(Duration::from_secs(10));
    let contents = session.contents();
    let screen = session.screen();
    assert!(
        !screen.screen().alternate_screen(),
        "the terminal left the alternate screen:\n{contents}"
    );
    assert!(!screen.screen().hide_cursor(), "the cursor is shown again");
    drop(screen);
    assert!(session.cooked(), "raw mode is off again");
    assert!(
        contents.contains("PLUGBOARD_TEST_PANIC_KEY pressed")
            && contents.contains("the dashboard panicked"),
        "the panic message and the error are readable on the normal screen:\n{contents}"
    );
    let alive: Vec<u32> = workers.into_iter().filter(|pid| is_alive(*pid)).collect();
    assert!(alive.is_empty(), "workers left running: {alive:?}");
    let remaining: Vec<&String> = cgroups
        .iter()
        .filter(|cgroup| Path::new(cgroup).exists())
        .collect();
    assert!(remaining.is_empty(), "cgroups left behind: {remaining:?}");
}

/// The directory of a process's memory cgroup (v1 `memory` controller, else v2 unified).
fn cgroup_of(pid: u32) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let find = |wanted: &str| {
        cgroups.lines().find_map(|line| {
            let (_, rest) = line.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            (controllers
                .split(',')
                .any(|controller| controller == wanted))
            .then_some(path)
        })
    };
    match (find("memory"), find("")) {
        (Some(path), _) => format!("/sys/fs/cgroup/memory{path}"),
        (None, Some(path)) => format!("/sys/fs/cgroup{path}"),
        (None, None) => panic!("no memory cgroup for {pid}: {cgroups}"),
    }
}
