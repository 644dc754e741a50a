//! `plugboard audit FILE`: a line past 1 MiB is skipped without being held whole, and a
//! file without a single record is an error.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{fails, ok, plugboard, plugboard_command, stderr};

const RECORD: &str =
    r#"{"schema":1,"seq":1,"at_ms":1,"plugin":"hello","kind":"engine","message":"hi"}"#;

/// The resident memory of process `pid`, in kB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[test]
fn an_endless_line_is_reported_at_once_and_never_held_in_memory() {
    let mut audit = plugboard_command(&[&"audit", &"/dev/zero"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugboard runs");
    let (warned, warning) = mpsc::channel();
    let stderr = audit.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let _ = warned.send(line.unwrap_or_default());
        }
    });
    let first = warning.recv_timeout(Duration::from_secs(10));
    // Reading on: it keeps reading zeros, in a buffer of its own size.
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_kb(audit.id());
    audit.kill().unwrap();
    audit.wait().unwrap();
    let first = first.expect("a warning about line 1 within 10 s");
    assert!(
        first.contains("/dev/zero: line 1: longer than 1 MiB"),
        "{first}"
    );
    assert!(rss < 64 * 1024, "{rss} kB resident while skipping the line");
}

#[test]
fn a_long_line_is_skipped_and_the_records_around_it_are_read() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("audit.jsonl");
    let long = "x".repeat(3 * 1024 * 1024);
    let second = RECORD.replace("\"seq\":1", "\"seq\":2");
    std::fs::write(&file, format!("{RECORD}\n{long}\n{second}\n")).unwrap();
    let output = plugboard(&[&"audit", &file, &"--json"]);
    let records = ok(&output);
    assert_eq!(records.lines().count(), 2, "{records}");
    assert!(
        stderr(&output).contains("line 2: longer than 1 MiB"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_file_without_a_record_is_an_error_saying_what_was_expected() {
    let root = tempfile::tempdir().unwrap();
    let empty = root.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let foreign = root.path().join("notes.txt");
    std::fs::write(&foreign, "these are notes\nnot an audit trail\n").unwrap();
    let expected = "holds no audit records: expected JSON lines as the engine writes them";
    let err = fails(&plugboard(&[&"audit", &empty]));
    assert!(err.contains(expected), "{err}");
    // Each line it skipped is a warning; the reason comes last.
    let output = plugboard(&[&"audit", &foreign]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert_eq!(err.matches("not an audit record").count(), 2, "{err}");
    assert!(
        err.trim_end().lines().last().unwrap().contains(expected),
        "{err}"
    );
}

/// Each engine run numbers its events from 1: where another engine's lines begin, the
/// text says so (the JSON lines carry `engine_pid`).
#[test]
fn the_lines_of_each_engine_run_are_told_apart() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("audit.jsonl");
    let run = |pid: u32, seq: u32| {
        RECORD
            .replacen('{', &format!("{{\"engine_pid\":{pid},"), 1)
            .replace("\"seq\":1", &format!("\"seq\":{seq}"))
    };
    std::fs::write(
        &file,
        format!("{}\n{}\n{}\n", run(10, 1), run(10, 2), run(11, 1)),
    )
    .unwrap();
    let text = ok(&plugboard(&[&"audit", &file]));
    let markers: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("-- engine"))
        .collect();
    assert_eq!(markers, ["-- engine 10", "-- engine 11"], "{text}");
    let json = ok(&plugboard(&[&"audit", &file, &"--json"]));
    assert!(
        json.lines().all(|line| line.contains("\"engine_pid\":1")),
        "{json}"
    );
}

/// Pids repeat (in a container every run may be pid 1): numbers starting again mark a new
/// run too.
#[test]
fn a_run_with_the_pid_of_the_one_before_is_told_apart_by_its_numbers() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("audit.jsonl");
    let run = RECORD.replacen('{', "{\"engine_pid\":1,", 1);
    let second = run.replace("\"seq\":1", "\"seq\":2");
    std::fs::write(&file, format!("{run}\n{second}\n{run}\n")).unwrap();
    let text = ok(&plugboard(&[&"audit", &file]));
    let markers = text
        .lines()
        .filter(|line| line.starts_with("-- engine 1"))
        .count();
    assert_eq!(markers, 2, "{text}");
}

/// Within a run the records are numbered one after another: a hole (records the engine
/// could not write on a full disk) is said, with what is missing; another run's numbers
/// starting again are no hole.
#[test]
fn records_missing_from_a_run_are_said() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("audit.jsonl");
    let record = |pid: u32, seq: u32| {
        RECORD
            .replacen('{', &format!("{{\"engine_pid\":{pid},"), 1)
            .replace("\"seq\":1", &format!("\"seq\":{seq}"))
    };
    let lines: Vec<String> = [(7, 1), (7, 2), (7, 6), (7, 8), (8, 1)]
        .into_iter()
        .map(|(pid, seq)| record(pid, seq))
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let output = plugboard(&[&"audit", &file]);
    ok(&output);
    let warned = crate::support::stderr(&output);
    let warnings: Vec<&str> = warned.lines().collect();
    assert_eq!(
        warnings,
        [
            "warning: records 3–5 are missing from this run of engine 7: not written (a full disk?) or cut out",
            "warning: record 7 is missing from this run of engine 7: not written (a full disk?) or cut out",
        ],
        "{warned}"
    );
}
