//! `plugboard call`: one bundle started sandboxed, one hook called, the worker stopped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    engine_scopes, fails, fails_after_plugin_output, is_alive, keys, ok, plugboard,
    plugboard_command, plugin_library, repo_root, signed_example, stderr, stdout,
};

#[test]
fn call_prints_the_reply_and_with_json_the_status_duration_and_mechanisms() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    let out = ok(&plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"greet",
        &"author",
    ]));
    assert!(out.contains("Hello") && out.contains("author"), "{out}");

    let out = ok(&plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"greet",
        &"json",
        &"--json",
    ]));
    let report: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(report["status"], "ok");
    assert!(
        report["reply"].as_str().unwrap().contains("json"),
        "{report}"
    );
    assert!(report["duration_us"].as_u64().unwrap() > 0);
    assert!(report["duration"].is_string());
    assert_eq!(report["isolation"], "process");
    let mechanisms: Vec<&str> = report["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|badge| badge.as_str().unwrap())
        .collect();
    for badge in ["ns", "uid", "nnp", "cap", "rl", "cg", "ll", "sc"] {
        assert!(
            mechanisms.contains(&badge),
            "{badge} missing from {mechanisms:?}"
        );
    }
    // The worker is gone once the command returns.
    let pid = report["worker_pid"].as_u64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty()
            || stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        "worker {pid} still runs: {stat}"
    );
}

/// `--allow-unsigned` runs a bundle the trust store refuses (here, its library changed after
/// signing) — and says so on stderr and in `--json`, every time.
#[test]
fn a_call_in_development_mode_says_it_ran_unverified() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    crate::support::tamper_library(&bundle.join("libhello.so"));
    let args: [&dyn AsRef<std::ffi::OsStr>; 7] = [
        &"call",
        &"--allow-unsigned",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"greet",
        &"dev",
    ];
    let output = plugboard(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("ran UNVERIFIED (development mode)"),
        "{}",
        stderr(&output)
    );
    let mut with_json = args.to_vec();
    with_json.push(&"--json");
    let output = plugboard(&with_json);
    let report: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    assert!(
        report["unverified"]
            .as_str()
            .is_some_and(|why| why.contains("does not match")),
        "{report}"
    );
}

#[test]
fn call_fails_with_the_reason_for_an_unknown_hook_an_untrusted_bundle_and_an_error_status() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    let err = fails_after_plugin_output(
        &plugboard(&[&"call", &"--trust-store", &keys.store, &bundle, &"nope"]),
        Some("hello"),
    );
    assert!(err.contains("no hook `nope`"), "{err}");
    // What hello logged while it was created comes first.
    assert!(err.starts_with("hello info: hello ready"), "{err}");

    let other = tempfile::tempdir().unwrap();
    let stranger = crate::support::keys(other.path(), "stranger");
    let err = fails(&plugboard(&[
        &"call",
        &"--trust-store",
        &stranger.store,
        &bundle,
        &"greet",
    ]));
    assert!(
        err.contains("`hello` could not start") && err.contains("key"),
        "{err}"
    );

    // The panic's message, which the worker printed, is shown with the plugin's name; with
    // --log-file it is kept there too, and --json carries it as `output`.
    let panicky = signed_example(root.path(), "panicky", &keys);
    let log_file = root.path().join("call.log");
    let err = fails_after_plugin_output(
        &plugboard(&[
            &"call",
            &"--trust-store",
            &keys.store,
            &"--log-file",
            &log_file,
            &panicky,
            &"panic",
            &"on stage",
        ]),
        Some("panicky"),
    );
    assert!(err.contains("status panic"), "{err}");
    // The panic is the plugin's error log line (the SDK keeps it off its stderr), with
    // where it happened.
    assert!(
        err.lines().any(
            |line| line.starts_with("panicky error: plugin panicked at ")
                && line.contains("panic number 1: on stage")
        ),
        "{err}"
    );
    let logged = std::fs::read_to_string(&log_file).unwrap();
    assert!(logged.contains("panic number 1: on stage"), "{logged}");
    let output = plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &panicky,
        &"panic",
        &"in json",
        &"--json",
    ]);
    let report: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    let printed = report["output"].as_array().expect("output");
    assert!(
        printed.iter().any(|line| line["stream"] == "error"
            && line["line"]
                .as_str()
                .is_some_and(|line| line.contains("panic number 1: in json"))
            && line["at_ms"].as_u64().is_some()),
        "{report}"
    );
}

/// SIGTERM in the middle of a call stops the plugin as `headless` does: the worker ends
/// and the engine's cgroups are removed before `call` exits.
#[test]
fn sigterm_during_a_call_stops_its_worker_and_removes_its_cgroups() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    // `chaos` sleeps as long as its payload says; its timeout must outlast the test.
    let manifest = std::fs::read_to_string(repo_root().join("plugins/slowhook/plugin.toml"))
        .unwrap()
        .replace(
            "[hooks.chaos]\npriority = \"background\"\ntimeout_ms = 200",
            "[hooks.chaos]\npriority = \"background\"\ntimeout_ms = 60000",
        );
    assert!(manifest.contains("timeout_ms = 60000"), "{manifest}");
    let manifest_file = root.path().join("slowhook.toml");
    std::fs::write(&manifest_file, manifest).unwrap();
    let bundle = root.path().join("slowhook");
    ok(&plugboard(&[
        &"pack",
        &manifest_file,
        &"--library",
        &plugin_library("slowhook"),
        &"--out",
        &bundle,
        &"--key",
        &keys.private,
    ]));
    let mut call = plugboard_command(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"chaos",
        &"30000",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("plugboard runs");
    let engine = call.id();

    // The call is under way once the plugin's cgroup holds its worker.
    let deadline = Instant::now() + Duration::from_secs(20);
    let workers: Vec<u64> = loop {
        let procs: Vec<u64> = engine_scopes(engine)
            .iter()
            .flat_map(|scope| std::fs::read_dir(scope).into_iter().flatten().flatten())
            .filter(|entry| entry.file_name().to_string_lossy().contains("slowhook"))
            .flat_map(|plugin| {
                std::fs::read_to_string(plugin.path().join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|pid| pid.parse().ok())
                    .collect::<Vec<u64>>()
            })
            .collect();
        if !procs.is_empty() {
            break procs;
        }
        assert!(
            call.try_wait().unwrap().is_none(),
            "call ended before its worker was seen"
        );
        assert!(Instant::now() < deadline, "no slowhook worker appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(1));
    let killed = Command::new("kill")
        .args(["-TERM", &engine.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = call.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "call did not end on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = call.wait_with_output().unwrap();
    let err = stderr(&output);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    assert!(
        engine_scopes(engine).is_empty(),
        "cgroups left: {:?}",
        engine_scopes(engine)
    );
    for pid in workers {
        assert!(!is_alive(pid), "worker {pid} outlived the call");
    }
}

/// A worker that died: stderr has the status, the plugin's text, the signal and the
/// violation; `--json` adds them to its fields.
#[test]
fn a_call_whose_worker_died_says_how_on_stderr_and_in_json() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let crasher = signed_example(root.path(), "crasher", &keys);
    let output = plugboard(&[&"call", &"--trust-store", &keys.store, &crasher, &"chaos"]);
    let err = fails(&output);
    assert!(
        err.contains("`crasher`'s worker ended during `chaos`, status gone")
            && err.contains("killed by signal 11 (SIGSEGV)")
            && err.contains("violations: crash"),
        "{err}"
    );
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));

    let output = plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &crasher,
        &"chaos",
        &"--json",
    ]);
    let err = fails(&output);
    let report: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    assert_eq!(report["status"], "gone", "{report}");
    assert_eq!(report["last_exit"]["signal"], 11, "{report}");
    assert_eq!(report["violations"][0]["violation"], "crash", "{report}");
    assert_eq!(
        report["error"].as_str(),
        err.strip_prefix("plugboard: error: ").map(str::trim_end)
    );
    assert!(report["worker_pid"].as_u64().is_some(), "{report}");
}

#[test]
fn an_unknown_hook_is_refused_with_the_hooks_the_plugin_has_also_in_json() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "counter", &keys);
    let output = plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"nope",
        &"--json",
    ]);
    let err = fails(&output);
    assert!(
        err.contains("`counter` has no hook `nope`: its hooks are count, reset"),
        "{err}"
    );
    let report: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    assert_eq!(report["plugin"], "counter", "{report}");
    assert_eq!(report["hook"], "nope", "{report}");
    assert_eq!(
        report["hooks"],
        serde_json::json!(["count", "reset"]),
        "{report}"
    );
    assert!(
        report["error"].as_str().unwrap().contains("no hook `nope`"),
        "{report}"
    );
}

/// A bundle asking for in-process isolation still runs sandboxed under `call` (it needs no
/// signer trusted at level `in-process` then): its crash ends its worker and is reported,
/// never the command itself.
#[test]
fn call_runs_a_bundle_that_asks_for_in_process_sandboxed() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let in_process = |name: &str| {
        let manifest =
            std::fs::read_to_string(repo_root().join(format!("plugins/{name}/plugin.toml")))
                .unwrap();
        assert!(!manifest.contains("[isolation]"), "{manifest}");
        crate::support::signed_example_with(
            root.path(),
            name,
            "[isolation]\nmode = \"in-process\"\n",
            &root.path().join(name),
            &keys,
        )
    };

    let hello = in_process("hello");
    // `verify` and `inspect` trust as an engine does: a bundle asking for in-process with
    // a signer trusted at level `sandboxed` is not (`call` runs it sandboxed anyway).
    let err = fails(&plugboard(&[
        &"verify",
        &hello,
        &"--trust-store",
        &keys.store,
    ]));
    assert!(
        err.contains("needs a signer trusted at level `in-process`"),
        "{err}"
    );
    let inspected: Value = serde_json::from_str(&ok(&plugboard(&[
        &"inspect",
        &hello,
        &"--json",
        &"--trust-store",
        &keys.store,
    ])))
    .unwrap();
    assert_eq!(inspected["trusted"], false, "{inspected}");
    let out = ok(&plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &hello,
        &"greet",
        &"author",
        &"--json",
    ]));
    let report: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["isolation"], "process", "{report}");
    assert!(
        report["mechanisms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|badge| badge == "sc"),
        "{report}"
    );

    let crasher = in_process("crasher");
    let call = plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &crasher,
        &"chaos",
        &"--json",
    ]);
    let err = fails(&call);
    assert!(err.contains("SIGSEGV"), "{err}");
    let report: Value = serde_json::from_str(stdout(&call).trim()).expect("one JSON object");
    assert_eq!(report["last_exit"]["signal"], 11, "{report}");
}

/// `call` manages only the bundle it is given: plugin directories in the host
/// configuration need not exist for it; a path that is no bundle is named as such.
#[test]
fn call_ignores_the_configurations_plugin_directories_and_names_a_missing_bundle() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    let host = root.path().join("plugboard.toml");
    let missing = root.path().join("no-such-plugins");
    std::fs::write(
        &host,
        format!("plugin_dirs = [\"{}\"]\n", missing.display()),
    )
    .unwrap();
    let out = ok(&plugboard(&[
        &"call",
        &"--config",
        &host,
        &"--trust-store",
        &keys.store,
        &bundle,
        &"greet",
        &"author",
    ]));
    assert!(out.contains("author"), "{out}");

    let nowhere = root.path().join("nowhere");
    let err = fails(&plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &nowhere,
        &"greet",
    ]));
    assert!(
        err.contains(&format!("{} is not a bundle directory", nowhere.display()))
            && err.contains("plugin.toml"),
        "{err}"
    );
}

/// What the engine caught during a call is reported whatever the status: netprobe's chaos
/// answers `ok` (it says the connect was refused), and its forbidden socket is in `--json`'s
/// `violations` and noted on stderr.
#[test]
fn violations_are_reported_for_an_ok_answer_too() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "netprobe", &keys);
    let output = plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"chaos",
        &"--json",
    ]);
    let out = ok(&output);
    let report: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(report["status"], "ok", "{report}");
    let kinds: Vec<&str> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|violation| violation["violation"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"forbidden_syscall"), "{report}");
    let plain = plugboard(&[&"call", &"--trust-store", &keys.store, &bundle, &"chaos"]);
    assert!(!ok(&plain).trim().is_empty(), "the reply is printed");
    let noted = stderr(&plain);
    assert!(
        noted.contains("note: violations: forbidden_syscall"),
        "{noted}"
    );
}

/// A payload the engine will not send (over 1 MiB − 64 bytes, read from stdin) is said as
/// the engine's refusal, not as the plugin's answer.
#[test]
fn a_payload_too_large_to_send_is_said_as_not_sent() {
    use std::io::Write as _;
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let bundle = signed_example(root.path(), "hello", &keys);
    let mut call = plugboard_command(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &bundle,
        &"greet",
        &"-",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("plugboard runs");
    let mut stdin = call.stdin.take().unwrap();
    stdin.write_all(&vec![b'x'; 1 << 20]).unwrap();
    drop(stdin);
    let output = call.wait_with_output().unwrap();
    let err = fails_after_plugin_output(&output, Some("hello"));
    assert!(
        err.contains("the call of `hello`'s `greet` was not sent, status too_large"),
        "{err}"
    );
}

/// The plugin's lines are its own: a newline or an escape sequence in what it logs is
/// shown escaped, never as a line of `call`'s or as a command to the terminal.
#[test]
fn what_a_plugin_logs_cannot_pass_for_calls_own_lines() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), "author");
    let prober = signed_example(root.path(), "prober", &keys);
    let output = plugboard(&[
        &"call",
        &"--trust-store",
        &keys.store,
        &prober,
        &"log",
        &"fine\nplugboard: error: forged\u{1b}]52;c;x\u{7}",
    ]);
    ok(&output);
    let err = stderr(&output);
    assert!(
        !err.lines().any(|line| line.starts_with("plugboard: error")),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(
        err.contains("fine\\nplugboard: error: forged\\u{1b}]52;c;x\\u{7}"),
        "{err:?}"
    );
}
