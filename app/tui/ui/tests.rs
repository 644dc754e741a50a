//! Whole-screen tests: recorded snapshots rendered into ratatui's `TestBackend` at the
//! sizes the dashboard promises (80×24, 40×12, too small), and the keys, clicks, sorting,
//! filtering, keymap overrides and themes acting on what is drawn.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use plugboard_engine::{Command, Event, Outcome, Snapshot};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::{Color, Modifier};
use serde_json::{Value, json};

use super::draw;
use crate::tui::app::{App, Effect, Job, JobError, Overlay, Pane, Screen};
use crate::tui::columns::Column;
use crate::tui::keymap::{Action, Keymap};
use crate::tui::theme::{Theme, Themes};

const NOW_MS: u64 = 1_764_000_000_000;

fn hook(calls: u64, errors: u64, p99_us: u64) -> Value {
    let percentiles =
        json!({"p50_us": p99_us / 4, "p90_us": p99_us / 2, "p99_us": p99_us, "max_us": p99_us * 2});
    let rate = f64::from(u32::try_from(calls).unwrap()) / 60.0;
    json!({
        "calls": calls, "errors": errors, "timeouts": 0, "busy": 0, "in_flight": 0,
        "calls_per_sec": rate, "calls_per_sec_10s": rate, "recent": percentiles, "since_start": percentiles,
        "mean_us": p99_us / 3, "total_ms": calls, "last_call": NOW_MS,
        "last_error": if errors > 0 { json!("boom") } else { Value::Null },
        "last_error_at": if errors > 0 { json!(NOW_MS) } else { Value::Null },
    })
}

/// Every mechanism reported, each granted but those `missing`.
fn mechanisms(missing: &[&str]) -> Value {
    let names = [
        "unprivileged-uid",
        "namespaces",
        "cgroup",
        "rlimits",
        "no-new-privs",
        "landlock",
        "capabilities",
        "seccomp",
    ];
    let mut map = serde_json::Map::new();
    for name in names {
        map.insert(
            name.to_owned(),
            json!({"active": !missing.contains(&name), "detail": format!("{name} detail")}),
        );
    }
    Value::Object(map)
}

/// One plugin as the engine would report it.
fn plugin(name: &str, state: &str) -> Value {
    let running = state == "running";
    json!({
        "name": name, "version": "0.1.0", "dir": format!("/bundles/{name}"), "state": state,
        "reason": Value::Null, "health": if running { "healthy" } else { "unknown" },
        "health_failures": 0, "health_checked_ms": Value::Null, "health_detail": Value::Null,
        "isolation": "process",
        "mechanisms": if running { mechanisms(&[]) } else { json!({}) },
        "active_mechanisms": if running { json!(["uid", "ns", "cg", "rl", "nnp", "cap", "ll", "sc"]) } else { json!([]) },
        "worker_pid": if running { json!(4242) } else { Value::Null },
        "sandbox_pid": if running { json!(1) } else { Value::Null },
        "cgroup": Value::Null,
        "trust": {"signed": true, "key_id": "0123456789abcdef", "level": "sandboxed",
                  "library_sha3_512": "ab".repeat(64), "unverified": false},
        "hooks": {}, "violations": 0, "violations_unrecorded": 0, "emitted": 0, "last_exit": Value::Null,
        "output_dropped": 0, "recent_output": [], "enabled": true, "disabled_hooks": [],
        "dependencies": {}, "changed_on_disk": false, "removed_from_disk": false,
        "supervision": {"starts": u64::from(running), "restarts": 0, "last_start_ms": Value::Null,
                        "last_reload_ms": Value::Null, "backoff_step": 0,
                        "next_retry_ms": Value::Null, "restart_budget_left": 5},
        "resources": Value::Null,
    })
}

/// Four plugins: two running (one slow, one with a violation), one stopped, one failed.
fn fleet() -> Value {
    let mut hello = plugin("hello", "running");
    hello["hooks"] = json!({"greet": hook(600, 0, 850)});
    hello["recent_output"] = json!([
        {"at_ms": NOW_MS - 2000, "stream": "stdout", "line": "hello started"},
        {"at_ms": NOW_MS - 1000, "stream": {"log": {"level": 2}}, "line": "greeted world"},
        {"at_ms": NOW_MS, "stream": "stderr", "line": "a warning on stderr"},
    ]);
    let mut counter = plugin("counter", "running");
    counter["version"] = json!("0.10.0");
    // A host that lowered `require` runs it without Landlock.
    counter["mechanisms"] = mechanisms(&["landlock"]);
    counter["active_mechanisms"] = json!(["uid", "ns", "cg", "rl", "nnp", "cap", "sc"]);
    counter["hooks"] = json!({"count": hook(1200, 3, 480_000), "reset": hook(10, 0, 90),
                              "idle": hook(0, 0, 0)});
    for (name, priority, timeout) in [
        ("count", "high", 200),
        ("reset", "low", 50),
        ("idle", "background", 200),
    ] {
        counter["hooks"][name]["priority"] = json!(priority);
        counter["hooks"][name]["timeout_ms"] = json!(timeout);
    }
    counter["hooks"]["idle"]["last_call"] = Value::Null;
    counter["capabilities"] = json!({"fs_read": [], "fs_write": [], "network": false,
                                     "spawn": false, "emit": ["counter.reset"]});
    counter["limits"] = json!({"memory_mb": 32, "cpu_percent": 25, "max_threads": 8,
                               "max_open_files": 256, "hook_timeout_ms": 200, "max_in_flight": 64});
    counter["config"] = json!({
        "start": {"type": "integer", "description": "reset value", "default": 0,
                  "host_override": null, "effective": 0, "source": "manifest"},
        "step": {"type": "integer", "description": "added by count", "default": 1,
                 "host_override": 5, "effective": 5, "source": "host"},
        "token": {"type": "string", "description": "optional", "default": null,
                  "host_override": null, "effective": null, "source": "unset"},
    });
    counter["violations"] = json!(2);
    counter["resources"] = json!({
        "at_ms": NOW_MS, "memory_bytes": 12u64 << 20, "memory_peak_bytes": Value::Null,
        "memory_limit_bytes": 32u64 << 20, "memory_limit_hits": 0, "oom_kills": 0,
        "cpu_percent": 7.5, "cpu_percent_of_quota": Value::Null, "throttled_periods": 0,
        "throttled_ms": 0, "throttled_ratio": 0.0, "pids_current": 3, "pids_max": 8,
        "pids_limit_hits": 0, "threads": 3, "rss_bytes": 9u64 << 20, "open_fds": 5,
        "read_bytes": 0, "write_bytes": 0,
    });
    let mut dependent = plugin("dependent", "stopped");
    dependent["dependencies"] = json!({"counter": "^0.1"});
    let mut broken = plugin("broken", "failed");
    broken["reason"] = json!("crashed 5 times in 60 s");
    broken["supervision"]["restart_budget_left"] = json!(0);
    json!({
        "taken_at_ms": NOW_MS, "engine_pid": 100, "uptime_ms": 184_000, "version": "0.1.0",
        "traffic": 20.0,
        "host": {"cpu_percent": 12.0, "cpus": 2, "memory_total_bytes": 24u64 << 30,
                 "memory_used_bytes": 3u64 << 30, "load_1": 0.5, "load_5": 0.4, "load_15": 0.3,
                 "engine_cpu_percent": 1.0, "engine_rss_bytes": 40u64 << 20},
        "plugins": [hello, counter, dependent, broken],
        "recent_events": [],
    })
}

fn snapshot(value: Value) -> Snapshot {
    serde_json::from_value(value).expect("the fixture matches the engine's Snapshot")
}

fn event(seq: u64, plugin: Option<&str>, kind: Value) -> Event {
    let mut value = kind;
    value["seq"] = json!(seq);
    value["at_ms"] = json!(NOW_MS - 10_000 + seq * 1000);
    value["plugin"] = plugin.map_or(Value::Null, |name| json!(name));
    serde_json::from_value(value).expect("the fixture matches the engine's Event")
}

fn app_with(keymap: Keymap, theme: Theme) -> App {
    let mut app = App::new(keymap, Themes::built_in().unwrap(), theme);
    app.on_sample(snapshot(fleet()));
    app.on_engine_event(event(
        1,
        Some("hello"),
        json!({"kind": "discovered", "dir": "/bundles/hello"}),
    ));
    app.on_engine_event(event(
        2,
        Some("hello"),
        json!({"kind": "state_changed", "from": "verified", "to": "running"}),
    ));
    app.on_engine_event(event(
        3,
        Some("broken"),
        json!({"kind": "stopped", "exit": {"signal": 6}}),
    ));
    app.on_engine_event(event(
        4,
        None,
        json!({"kind": "engine", "message": "traffic on: 20 calls/s"}),
    ));
    app.on_engine_event(event(
        5,
        Some("counter"),
        json!({"kind": "state_changed", "from": "running", "to": "failed"}),
    ));
    app
}

/// A sample in which counter's bundle changed on disk since it was verified.
fn counter_changed_on_disk(app: &mut App) {
    let mut changed = fleet();
    changed["plugins"][1]["changed_on_disk"] = json!(true);
    app.on_sample(snapshot(changed));
}

fn app() -> App {
    app_with(Keymap::defaults(), Theme::default_theme())
}

/// Draws the app at `width`×`height` and returns the screen's rows.
fn render(app: &mut App, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| draw(frame, app)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol().to_owned())
                .collect::<String>()
        })
        .collect()
}

fn buffer(app: &mut App, width: u16, height: u16) -> ratatui::buffer::Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| draw(frame, app)).unwrap();
    terminal.backend().buffer().clone()
}

fn row_of<'a>(screen: &'a [String], needle: &str) -> &'a str {
    screen
        .iter()
        .find(|row| row.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in\n{}", screen.join("\n")))
}

fn contains(screen: &[String], needle: &str) -> bool {
    screen.iter().any(|row| row.contains(needle))
}

fn press(app: &mut App, code: KeyCode) -> Vec<Effect> {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        press(app, KeyCode::Char(c));
    }
}

fn plugin_order(screen: &[String]) -> Vec<String> {
    let names = ["hello", "counter", "dependent", "broken"];
    let mut rows: Vec<(usize, String)> = Vec::new();
    for (at, row) in screen.iter().enumerate() {
        for name in names {
            if row.starts_with(&format!("│{name} ")) && !rows.iter().any(|(_, seen)| seen == name)
            {
                rows.push((at, name.to_owned()));
            }
        }
    }
    rows.into_iter().map(|(_, name)| name).collect()
}

#[test]
fn the_main_screen_at_80x24_shows_header_table_events_and_keys() {
    let mut app = app();
    let screen = render(&mut app, 80, 24);
    let text = screen.join("\n");
    // 80 columns: the version and the words go, the figures stay.
    assert!(
        screen[0].starts_with(" plugboard up 3m04s │ traffic ● 20/s"),
        "{text}"
    );
    assert!(
        screen[0].contains("host 12% 3.0/24.0GiB │ engine 1% 40.0MiB"),
        "{text}"
    );
    let wide = render(&mut app, 120, 30);
    assert!(
        wide[0].contains("plugboard 0.1.0 up 3m04s │ traffic ● 20/s │ host cpu 12% mem 3.0/24.0GiB │ engine cpu 1% rss 40.0MiB"),
        "{}",
        wide[0]
    );
    assert!(screen[1].contains("4 plugins"), "{text}");
    assert!(screen[1].contains("✗ 1 failed"), "{text}");
    assert!(screen[1].contains("● 2 running"), "{text}");
    assert!(contains(&screen, "Plugins 4/4"), "{text}");
    for title in [
        "NAME",
        "STATE",
        "CPU%",
        "MEM/LIMIT",
        "CALLS/S",
        "P99",
        "ERR",
        "VIOL",
    ] {
        assert!(
            row_of(&screen, "NAME").contains(title),
            "{title} missing:\n{text}"
        );
    }
    let counter = row_of(&screen, "│counter ");
    assert!(counter.contains("● Running"), "{counter}");
    assert!(counter.contains("12.0/32.0MiB"), "{counter}");
    assert!(counter.contains("480.0ms"), "{counter}");
    assert!(counter.contains(" 3 "), "errors: {counter}");
    assert!(counter.contains(" 2│"), "violations: {counter}");
    let dependent = row_of(&screen, "│dependent ");
    assert!(dependent.contains("○ Stopped"), "{dependent}");
    assert!(dependent.contains('–'), "no samples: {dependent}");
    assert!(row_of(&screen, "│broken ").contains("✗ Failed"));
    // Events, newest first, with the plugin and the sentence.
    assert!(contains(&screen, "Events 5"), "{text}");
    let newest = screen
        .iter()
        .position(|row| row.contains("Running → ✗ Failed"))
        .unwrap();
    let older = screen
        .iter()
        .position(|row| row.contains("Verified → ● Running"))
        .unwrap();
    assert!(newest < older, "{text}");
    assert!(contains(&screen, "stopped (killed by signal 6)"), "{text}");
    // The footer comes from the keymap.
    let footer = &screen[23];
    for hint in [
        "? help", "q quit", "s start", "x stop", "r reload", "u unload",
    ] {
        assert!(footer.contains(hint), "{hint:?} not in {footer:?}");
    }
}

#[test]
fn at_40x12_one_pane_shows_and_tab_switches_it() {
    let mut app = app();
    let screen = render(&mut app, 40, 12);
    let text = screen.join("\n");
    assert!(screen[0].contains("plugboard"), "{text}");
    assert!(contains(&screen, "Plugins 4/4"), "{text}");
    assert!(!contains(&screen, "Events 5"), "{text}");
    assert!(row_of(&screen, "│hello").contains("● Running"), "{text}");
    assert!(row_of(&screen, "│broken").contains("✗ Failed"), "{text}");
    assert!(screen[11].starts_with("? help  q quit"), "{text}");

    press(&mut app, KeyCode::Tab);
    let screen = render(&mut app, 40, 12);
    assert!(contains(&screen, "Events 5"), "{}", screen.join("\n"));
    assert!(!contains(&screen, "Plugins 4/4"));
}

#[test]
fn below_40x12_the_screen_says_it_is_too_small() {
    for (width, height) in [(39, 24), (80, 11), (20, 5)] {
        let mut app = app();
        let screen = render(&mut app, width, height);
        assert!(
            contains(&screen, "terminal too small"),
            "{width}×{height}:\n{}",
            screen.join("\n")
        );
        assert!(!contains(&screen, "Plugins"));
    }
}

/// On a narrow screen the sort keys step through the columns shown only: a sort by a
/// column dropped for want of room reordered the rows with no arrow anywhere.
#[test]
fn sorting_steps_through_the_columns_on_screen_only() {
    let mut app = app();
    render(&mut app, 80, 24);
    let shown = Column::fitting(78);
    assert!(shown.len() < Column::ALL.len(), "{shown:?}");
    for action in [Action::SortNext, Action::SortPrevious] {
        for _ in 0..Column::ALL.len() * 2 {
            app.on_action(action);
            assert!(shown.contains(&app.sort.column), "{:?}", app.sort);
            let header = render(&mut app, 80, 24).join("\n");
            assert!(header.contains('▲') || header.contains('▼'), "{header}");
        }
    }
}

#[test]
fn every_column_sorts_and_numbers_put_the_worst_first() {
    let mut app = app();
    assert_eq!(
        plugin_order(&render(&mut app, 120, 30)),
        ["broken", "counter", "dependent", "hello"]
    );
    // Walk the sort through every column (all are on a screen this wide); each must draw
    // and keep every row.
    render(&mut app, 400, 30);
    for _ in Column::ALL {
        app.on_action(Action::SortNext);
        assert_eq!(
            plugin_order(&render(&mut app, 400, 30)).len(),
            4,
            "sorted by {:?}",
            app.sort
        );
    }
    app.sort = crate::tui::columns::Sort::by(Column::Violations);
    assert_eq!(plugin_order(&render(&mut app, 120, 30))[0], "counter");
    app.sort = crate::tui::columns::Sort::by(Column::State);
    assert_eq!(
        plugin_order(&render(&mut app, 120, 30))[0],
        "broken",
        "trouble first"
    );
    let mut mixed_health = fleet();
    mixed_health["plugins"][1]["health"] = json!("unhealthy");
    mixed_health["plugins"][2]["health"] = json!("degraded");
    app.on_sample(snapshot(mixed_health));
    app.sort = crate::tui::columns::Sort::by(Column::Health);
    assert_eq!(
        plugin_order(&render(&mut app, 120, 30)),
        ["counter", "dependent", "hello", "broken"],
        "sick, degraded, healthy, not checked"
    );
    app.sort = crate::tui::columns::Sort::by(Column::Version);
    let order = plugin_order(&render(&mut app, 120, 30));
    assert_eq!(
        order.last().unwrap(),
        "counter",
        "0.10.0 sorts after 0.1.0: {order:?}"
    );
    app.on_action(Action::SortReverse);
    assert_eq!(plugin_order(&render(&mut app, 120, 30))[0], "counter");
    // The sorted column is marked.
    let screen = render(&mut app, 120, 30);
    assert!(
        row_of(&screen, "NAME").contains("VERSION▼"),
        "{}",
        screen.join("\n")
    );
}

#[test]
fn the_filter_matches_names_and_states_as_typed_and_esc_restores() {
    let mut app = app();
    press(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "run");
    let screen = render(&mut app, 80, 24);
    assert_eq!(
        plugin_order(&screen),
        ["counter", "hello"],
        "{}",
        screen.join("\n")
    );
    assert!(contains(&screen, "Plugins 2/4 /run"));
    assert!(
        screen[22].contains("filter plugins: run"),
        "the prompt shows: {}",
        screen[22]
    );
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.plugin_filter, "run");
    assert!(app.overlay.is_none());

    press(&mut app, KeyCode::Char('/'));
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    type_text(&mut app, "dep");
    assert_eq!(plugin_order(&render(&mut app, 80, 24)), ["dependent"]);
    press(&mut app, KeyCode::Esc);
    assert_eq!(
        app.plugin_filter, "run",
        "esc restores the filter from before"
    );
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.plugin_filter, "", "esc on the screen clears it");
}

/// A selected plugin that leaves the engine's list (a refused duplicate is forgotten when
/// its bundle is removed) hands the selection to the first plugin shown.
#[test]
fn a_selected_plugin_that_is_gone_hands_the_selection_on() {
    let mut app = app();
    app.selected_plugin = Some("broken".to_owned());
    let mut without_broken = fleet();
    without_broken["plugins"].as_array_mut().unwrap().pop();
    app.on_sample(snapshot(without_broken));
    let first = app.visible_plugins()[0].name.clone();
    assert_eq!(app.selected_plugin.as_deref(), Some(first.as_str()));
    assert!(app.selected().is_some());

    // Its details open: they close and say why, rather than show another plugin.
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Detail);
    let shown = app.selected_plugin.clone().unwrap();
    let mut without_it = fleet();
    without_it["plugins"]
        .as_array_mut()
        .unwrap()
        .retain(|plugin| plugin["name"] != json!(shown));
    app.on_sample(snapshot(without_it));
    assert_eq!(app.screen, Screen::Main);
    assert!(
        app.status
            .as_ref()
            .is_some_and(|status| status.text.contains("is no longer listed")),
        "{:?}",
        app.status
    );
}

/// The table marks a bundle changed (`*`) or removed on disk since it was verified, and cuts
/// a duplicate's path from its start, where its directory's name is.
#[test]
fn the_table_marks_bundles_changed_or_removed_on_disk_and_cuts_paths_from_the_start() {
    let mut app = app();
    let mut fleet = fleet();
    fleet["plugins"][0]["changed_on_disk"] = json!(true);
    fleet["plugins"][1]["removed_from_disk"] = json!(true);
    fleet["plugins"][2]["name"] = json!("/srv/plugboard/bundles/counter-duplicate");
    app.on_sample(snapshot(fleet));
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("│hello* "), "{text}");
    assert!(text.contains("│count… (removed) "), "{text}");
    assert!(
        text.contains("-duplicate "),
        "the path's end is kept: {text}"
    );
    assert!(!text.contains("│/srv/"), "{text}");
}

/// CALLS/S is the rate now: a plugin whose calls stopped shows 0 though the minute's
/// average still counts them.
#[test]
fn calls_per_second_is_the_rate_now_not_the_minutes_average() {
    let mut app = app();
    let mut quiet = fleet();
    quiet["plugins"][0]["hooks"]["greet"]["calls_per_sec"] = json!(10.0);
    quiet["plugins"][0]["hooks"]["greet"]["calls_per_sec_10s"] = json!(0.0);
    app.on_sample(snapshot(quiet));
    let screen = render(&mut app, 80, 24);
    let hello = row_of(&screen, "│hello ");
    let cells: Vec<&str> = hello.split_whitespace().collect();
    assert!(
        cells.contains(&"0") && !cells.contains(&"10"),
        "no calls now: {hello}"
    );
}

/// A bundle never verified (rejected) shows no signer and no "as verified"; a hook whose
/// only call was never timed (its worker died) shows no p99 rather than 0 µs.
#[test]
fn what_was_never_verified_or_timed_is_not_shown_as_if_it_were() {
    let mut app = app();
    let mut fleet = fleet();
    fleet["plugins"][3]["trust"] = json!({"signed": false, "key_id": null, "level": null,
        "library_sha3_512": null, "unverified": false});
    fleet["plugins"][3]["state"] = json!("rejected");
    fleet["plugins"][3]["hooks"] = json!({"chaos": hook(1, 1, 0)});
    app.on_sample(snapshot(fleet));
    let screen = render(&mut app, 80, 24);
    let broken = row_of(&screen, "│broken ");
    assert!(!broken.contains("0µs"), "{broken}");
    app.selected_plugin = Some("broken".to_owned());
    press(&mut app, KeyCode::Enter);
    let text = render(&mut app, 100, 40).join("\n");
    assert!(text.contains("key       not verified"), "{text}");
    assert!(!text.contains("as verified"), "{text}");
    assert!(!text.contains("unsigned"), "{text}");
}

/// A selected plugin that drops out of a state filter (it crashed) is not a command's
/// target any more: keys act only on rows the operator can see.
#[test]
fn commands_never_reach_a_plugin_the_filter_hides() {
    let mut app = app();
    press(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "run");
    press(&mut app, KeyCode::Enter);
    app.selected_plugin = Some("hello".to_owned());
    let mut crashed = fleet();
    crashed["plugins"][0] = plugin("hello", "failed");
    app.on_sample(snapshot(crashed));
    assert_eq!(plugin_order(&render(&mut app, 80, 24)), ["counter"]);
    for key in ['x', 's', 'r', 'u'] {
        assert!(press(&mut app, KeyCode::Char(key)).is_empty(), "{key}");
    }
    assert!(
        app.status.as_ref().is_some_and(|status| status
            .text
            .contains("`hello` is hidden by the filter `run`")),
        "{:?}",
        app.status
    );
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert_eq!(app.screen, Screen::Main, "no details of a hidden plugin");
    // Moving from the hidden selection lands on the first row shown.
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected_plugin.as_deref(), Some("counter"));
    let effects = press(&mut app, KeyCode::Char('x'));
    let [Effect::Run(job)] = effects.as_slice() else {
        panic!("a shown plugin is stopped: {effects:?}");
    };
    assert_eq!(job.label, "stop counter");
}

/// With the event log focused, the table's row stays highlighted beside the chosen event:
/// a plugin key acts on neither, and says where it acts.
#[test]
fn plugin_keys_in_the_event_log_say_they_act_on_the_table() {
    let mut app = app();
    app.selected_plugin = Some("hello".to_owned());
    app.focus = Pane::Events;
    app.event_filter = "plugin:counter".to_owned();
    for key in ['x', 's', 'r', 'u'] {
        assert!(press(&mut app, KeyCode::Char(key)).is_empty(), "{key}");
    }
    let status = app.status.as_ref().map(|status| status.text.clone());
    assert!(
        status.as_deref().is_some_and(|text| text
            .contains("plugin keys act on the table: tab to it, or enter to open `counter`")),
        "{status:?}"
    );
    // Enter opens the event's plugin: the hint was about the screen left behind.
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Detail);
    assert!(app.status.is_none(), "{:?}", app.status);
    press(&mut app, KeyCode::Esc);
    app.selected_plugin = Some("hello".to_owned());
    app.focus = Pane::Plugins;
    let effects = press(&mut app, KeyCode::Char('x'));
    let [Effect::Run(job)] = effects.as_slice() else {
        panic!("the table's plugin is stopped: {effects:?}");
    };
    assert_eq!(job.label, "stop hello");
}

/// Enter on an event opens its plugin's details on that very event; an event too long
/// for its row is cut with a mark.
#[test]
fn enter_on_an_event_opens_its_plugin_on_that_event_and_cut_events_say_so() {
    let mut app = app();
    app.focus = Pane::Events;
    app.event_filter = "signal".to_owned();
    let chosen = app.visible_events(None)[0].clone();
    let plugin = chosen.plugin.clone().unwrap();
    app.event_filter.clear();
    app.event_cursor = app
        .visible_events(None)
        .iter()
        .position(|event| event.seq == chosen.seq)
        .unwrap();
    let screen = render(&mut app, 40, 24).join("\n");
    assert!(
        screen.contains("Verified → ● Ru…│"),
        "a cut event is marked: {screen}"
    );
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Detail);
    assert_eq!(app.selected_plugin.as_deref(), Some(plugin.as_str()));
    assert_eq!(app.focus, Pane::PluginEvents);
    let shown = app.visible_events(Some(&plugin))[app.plugin_event_cursor].seq;
    assert_eq!(shown, chosen.seq);

    // An engine's own event has no plugin to open: enter shows it whole.
    press(&mut app, KeyCode::Esc);
    app.focus = Pane::Events;
    app.event_filter = "plugin:engine".to_owned();
    app.event_cursor = 0;
    press(&mut app, KeyCode::Enter);
    let Some(Overlay::Text { lines, .. }) = &app.overlay else {
        panic!("the event's text: {:?}", app.overlay);
    };
    assert!(
        lines.iter().any(|line| line.contains("traffic on")),
        "{lines:?}"
    );
}

/// On the table, `:` offers a hook safe to call at enter: never one kept from traffic for
/// doing harm on purpose, nor one switched off.
#[test]
fn the_call_prompt_never_offers_a_harmful_or_disabled_hook() {
    let mut fleet = fleet();
    let mut chaos = hook(0, 0, 0);
    chaos["no_traffic"] = json!(true);
    fleet["plugins"][1]["hooks"] =
        json!({"aaa": hook(0, 0, 0), "chaos": chaos, "ping": hook(0, 0, 0)});
    fleet["plugins"][1]["disabled_hooks"] = json!(["aaa"]);
    let mut app = app();
    app.on_sample(snapshot(fleet));
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Char(':'));
    let Some(Overlay::Prompt(prompt)) = &app.overlay else {
        panic!("a prompt: {:?}", app.overlay);
    };
    assert_eq!(prompt.input, "ping ");
}

/// A reload says what it will do in the plugin's state, and one the engine would refuse
/// (quarantined) is refused at the key, saying what to do.
#[test]
fn a_reload_says_what_it_does_in_the_plugins_state() {
    let mut fleet = fleet();
    fleet["plugins"][0]["state"] = json!("quarantined");
    let mut app = app();
    app.on_sample(snapshot(fleet));
    app.selected_plugin = Some("hello".to_owned());
    assert!(press(&mut app, KeyCode::Char('r')).is_empty());
    let status = app.status.as_ref().map(|status| status.text.clone());
    assert!(
        status
            .as_deref()
            .is_some_and(|text| text.contains("hello is quarantined: clear its quarantine first")),
        "{status:?}"
    );
    let stopped = {
        let mut plugin = app.selected().unwrap().clone();
        plugin.state = plugboard_engine::PluginState::Stopped;
        plugin
    };
    app.on_reload_preview(&stopped, vec!["version 0.1.0 (unchanged)".to_owned()]);
    let text = render(&mut app, 100, 30).join("\n");
    assert!(
        text.contains("verify the bundle on disk again; it is not started"),
        "{text}"
    );
    assert!(!text.contains("beside the running one"), "{text}");
}

#[test]
fn the_event_log_filters_by_kind_and_plugin() {
    let mut app = app();
    app.focus = Pane::Events;
    app.event_filter = "kind:state plugin:counter".to_owned();
    let events = app.visible_events(None);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 5);
    app.event_filter = "signal".to_owned();
    assert_eq!(app.visible_events(None)[0].seq, 3);
    app.event_filter = "plugin:engine".to_owned();
    assert_eq!(app.visible_events(None)[0].seq, 4);
    let screen = render(&mut app, 80, 24);
    assert!(
        contains(&screen, "Events 1 /plugin:engine"),
        "{}",
        screen.join("\n")
    );
}

#[test]
fn a_remapped_key_acts_and_shows_in_footer_and_help() {
    let mut keymap = Keymap::defaults();
    keymap
        .overlay(
            "stop = \"X\"\nhelp = \"h\"\n",
            std::path::Path::new("keymap.toml"),
        )
        .unwrap();
    let mut app = app_with(keymap, Theme::default_theme());
    let screen = render(&mut app, 100, 24);
    assert!(screen[23].contains("X stop"), "{}", screen[23]);
    assert!(screen[23].contains("h help"), "{}", screen[23]);
    assert!(!screen[23].contains("x stop"));
    assert!(
        press(&mut app, KeyCode::Char('x')).is_empty(),
        "x does nothing now"
    );
    app.selected_plugin = Some("hello".to_owned());
    let effects = app.on_key(KeyEvent::new(KeyCode::Char('X'), KeyModifiers::SHIFT));
    assert_eq!(
        effects,
        [Effect::Run(Job {
            label: "stop hello".to_owned(),
            command: Command::Stop {
                plugin: "hello".to_owned(),
                force: false
            },
        })]
    );
    press(&mut app, KeyCode::Char('h'));
    assert_eq!(app.overlay, Some(Overlay::Help(0)));
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.overlay, Some(Overlay::Help(1)), "j scrolls the help");
    let screen = render(&mut app, 100, 30);
    let text = screen.join("\n");
    assert!(text.contains("Help"), "{text}");
    assert!(text.contains(" X "), "the help lists the new key:\n{text}");
    assert!(text.contains("stop the selected plugin"), "{text}");
    press(&mut app, KeyCode::Char('z'));
    assert_eq!(app.overlay, None, "any key closes the help");
}

#[test]
fn the_help_lists_every_action_with_its_keys() {
    let mut app = app();
    app.on_action(Action::Help);
    let text = render(&mut app, 140, 40).join("\n");
    for action in Action::ALL {
        assert!(
            text.contains(action.description()),
            "{action:?} missing:\n{text}"
        );
    }
}

#[test]
fn stopping_a_plugin_others_need_asks_and_then_forces() {
    let mut app = app();
    app.selected_plugin = Some("counter".to_owned());
    let effects = press(&mut app, KeyCode::Char('x'));
    let [Effect::Run(job)] = effects.as_slice() else {
        panic!("one command: {effects:?}");
    };
    let id = app.begin_job(job);
    assert!(
        render(&mut app, 80, 24)[22].contains("⟳ stop counter…"),
        "in flight is shown"
    );
    app.on_job_done(
        id,
        job,
        Err(JobError {
            message:
                "`counter` is needed by running plugins: dependent; force the stop to stop them too"
                    .to_owned(),
            dependents: vec!["dependent".to_owned()],
        }),
    );
    let screen = render(&mut app, 80, 24);
    let text = screen.join("\n");
    assert!(text.contains("Force stop counter?"), "{text}");
    assert!(
        text.contains("Running plugins depend on it: dependent."),
        "{text}"
    );
    assert!(
        screen[22].contains("✗ stop counter: `counter` is needed"),
        "{}",
        screen[22]
    );
    let effects = press(&mut app, KeyCode::Char('y'));
    assert_eq!(
        effects,
        [Effect::Run(Job {
            label: "stop counter (forced)".to_owned(),
            command: Command::Stop {
                plugin: "counter".to_owned(),
                force: true
            },
        })]
    );
}

/// Disabling a plugin others need is refused like a stop, and forced the same way.
#[test]
fn disabling_a_plugin_others_need_asks_and_then_forces() {
    let mut app = app();
    app.selected_plugin = Some("counter".to_owned());
    let effects = press(&mut app, KeyCode::Char('d'));
    let [Effect::Run(job)] = effects.as_slice() else {
        panic!("one command: {effects:?}");
    };
    let id = app.begin_job(job);
    app.on_job_done(
        id,
        job,
        Err(JobError {
            message:
                "`counter` is needed by running plugins: dependent; force the disable to stop them too"
                    .to_owned(),
            dependents: vec!["dependent".to_owned()],
        }),
    );
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("Force disable counter?"), "{text}");
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        [Effect::Run(Job {
            label: "disable counter (forced)".to_owned(),
            command: Command::Disable {
                plugin: "counter".to_owned(),
                force: true
            },
        })]
    );
}

/// An engine answer that arrives while the operator types in a prompt (a chaos call that
/// ran until its timeout, a refused stop) waits for the prompt to close: the keys typed
/// go on into the filter and never act as commands.
#[test]
fn an_answer_arriving_during_a_prompt_waits_for_it_to_close() {
    let mut app = app();
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "cr");
    let stop = Job {
        label: "stop counter".to_owned(),
        command: Command::Stop {
            plugin: "counter".to_owned(),
            force: false,
        },
    };
    let refused = JobError {
        message: "`counter` is needed by running plugins: dependent".to_owned(),
        dependents: vec!["dependent".to_owned()],
    };
    app.on_job_done(1, &stop, Err(refused));
    let call = Job {
        label: "chaos slowhook".to_owned(),
        command: Command::Call {
            plugin: "slowhook".to_owned(),
            hook: "chaos".to_owned(),
            payload: Vec::new(),
        },
    };
    let reply = plugboard_engine::CallReport {
        plugin: "slowhook".to_owned(),
        hook: "chaos".to_owned(),
        status: "timeout".to_owned(),
        reply: String::new(),
        duration_us: 2_000_000,
    };
    app.on_job_done(2, &call, Ok(Outcome::Called { report: reply }));
    // `y` and `s` are text in the filter, not "yes" to the forced stop or a start.
    for key in ['y', 's'] {
        assert!(press(&mut app, KeyCode::Char(key)).is_empty());
    }
    assert_eq!(app.plugin_filter, "crys");
    assert!(matches!(app.overlay, Some(Overlay::Prompt(_))));
    // Enter ends the filter; the dialogs come in the order they arrived.
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm(confirm)) if confirm.title == "Force stop counter?"),
        "{:?}",
        app.overlay
    );
    assert!(press(&mut app, KeyCode::Char('n')).is_empty());
    assert!(matches!(app.overlay, Some(Overlay::Reply(_))));
    // Only enter or esc closes a reply: keys meant for the table are not its close.
    for key in [KeyCode::Char('s'), KeyCode::Char('j')] {
        assert!(press(&mut app, key).is_empty());
        assert!(matches!(app.overlay, Some(Overlay::Reply(_))));
    }
    assert!(press(&mut app, KeyCode::Esc).is_empty());
    assert!(app.overlay.is_none());
}

#[test]
fn reload_and_unload_ask_first_and_no_cancels() {
    let mut app = app();
    counter_changed_on_disk(&mut app);
    app.selected_plugin = Some("counter".to_owned());
    let effects = press(&mut app, KeyCode::Char('r'));
    let [Effect::PreviewReload { plugin }] = effects.as_slice() else {
        panic!("the bundle is read first: {effects:?}");
    };
    assert_eq!(plugin.name, "counter");
    let plugin = plugin.as_ref().clone();
    app.on_reload_preview(
        &plugin,
        vec!["version   0.10.0 → 0.11.0   CHANGED".to_owned()],
    );
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("Reload counter?"), "{text}");
    assert!(text.contains("0.10.0 → 0.11.0   CHANGED"), "{text}");
    assert!(
        text.contains("bundle change since it was verified"),
        "{text}"
    );
    // Enter does not confirm (it opens details elsewhere): only `y` does.
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(matches!(app.overlay, Some(Overlay::Confirm(_))));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        [Effect::Run(Job {
            label: "reload counter".to_owned(),
            command: Command::Reload {
                plugin: "counter".to_owned()
            }
        })]
    );
    assert!(press(&mut app, KeyCode::Char('u')).is_empty());
    assert!(
        render(&mut app, 80, 24)
            .join("\n")
            .contains("Unload counter?")
    );
    assert!(press(&mut app, KeyCode::Char('n')).is_empty());
    assert!(app.overlay.is_none());
    assert!(
        app.status
            .as_ref()
            .unwrap()
            .text
            .contains("cancelled: unload counter")
    );
}

#[test]
fn the_detail_view_counts_violations_left_unrecorded_in_a_flood() {
    let mut app = app();
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    let header = render(&mut app, 130, 40)[2].clone();
    assert!(
        header.contains("2 violations") && !header.contains("unrecorded"),
        "{header}"
    );
    let mut flooded = fleet();
    flooded["plugins"][1]["violations_unrecorded"] = json!(7);
    app.on_sample(snapshot(flooded));
    let header = render(&mut app, 130, 40)[2].clone();
    assert!(header.contains("2 violations (+7 unrecorded)"), "{header}");
}

#[test]
fn the_isolation_column_shows_every_badge_or_what_is_missing() {
    let mut app = app();
    let screen = render(&mut app, 120, 30);
    assert!(
        row_of(&screen, "│hello ").contains(" uid ns cg rl nnp cap ll sc "),
        "all eight badges fit: {}",
        screen.join("\n")
    );
    let counter = row_of(&screen, "│counter ");
    assert!(counter.contains(" ✗ missing ll "), "{counter}");
    assert!(!counter.contains(" sc "), "the badges give way: {counter}");
    let cells = buffer(&mut app, 120, 30);
    let row = screen
        .iter()
        .position(|row| row.contains("│counter "))
        .unwrap();
    let column = screen[row].chars().position(|c| c == '✗').unwrap();
    let style = cells[(u16::try_from(column).unwrap(), u16::try_from(row).unwrap())].style();
    assert_eq!(
        style.fg,
        Theme::default_theme().error().fg,
        "a missing mechanism reads as an error"
    );
}

#[test]
fn the_detail_view_shows_hooks_slowest_first_grants_trust_and_log() {
    let mut app = app();
    counter_changed_on_disk(&mut app);
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Detail);
    let screen = render(&mut app, 100, 40);
    let text = screen.join("\n");
    assert!(screen[2].contains("counter 0.10.0  ● Running"), "{text}");
    assert!(screen[2].contains("2 violations"), "{text}");
    assert!(text.contains("0123456789abcdef"), "key id: {text}");
    assert!(text.contains("sha3-512 abababab"), "digest: {text}");
    assert!(text.contains("CHANGED since verified"), "{text}");
    assert!(text.contains("budget left 5"), "{text}");
    assert!(text.contains("✓ ns  namespaces"), "{text}");
    assert!(
        text.contains("✗ ll  landlock"),
        "a refused mechanism is marked: {text}"
    );
    let row_at = |start: &str| screen.iter().position(|row| row.contains(start)).unwrap();
    assert!(
        row_at("│count ") < row_at("│reset "),
        "slowest first:\n{text}"
    );
    // A hook never called is listed, with its priority and timeout.
    let idle = row_of(&screen, "│idle ");
    assert!(idle.contains("background"), "{idle}");
    assert!(
        idle.split_whitespace().any(|cell| cell == "0"),
        "zero calls: {idle}"
    );
    let count_row = row_of(&screen, "│count ");
    assert!(
        count_row.contains("high") && count_row.contains("200.0ms"),
        "{count_row}"
    );
    // The effective config: which source won each setting.
    assert!(text.contains("Effective config 3 · 1 from host"), "{text}");
    assert!(
        row_of(&screen, "step  ").contains("5 ◆ host (default 1)"),
        "{text}"
    );
    assert!(
        row_of(&screen, "start ").contains("0 · manifest default"),
        "{text}"
    );
    assert!(row_of(&screen, "token ").contains("– ✗ unset"), "{text}");
    assert!(text.contains("last error: boom"), "{text}");
    assert!(
        text.contains("▄ 12.0/32.0MiB"),
        "memory against its limit: {text}"
    );
    assert!(text.contains("pids      3/8  threads 3  fds 5"), "{text}");

    // e on the selected hook disables it.
    assert_eq!(
        press(&mut app, KeyCode::Char('e')),
        [Effect::Run(Job {
            label: "disable hook counter.count".to_owned(),
            command: Command::DisableHook {
                plugin: "counter".to_owned(),
                hook: "count".to_owned()
            },
        })]
    );
    // `:` prefills the selected hook; enter calls it with the payload.
    press(&mut app, KeyCode::Char(':'));
    type_text(&mut app, "7");
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        [Effect::Run(Job {
            label: "call counter.count".to_owned(),
            command: Command::Call {
                plugin: "counter".to_owned(),
                hook: "count".to_owned(),
                payload: b"7".to_vec()
            },
        })]
    );
    app.on_job_done(
        1,
        &Job {
            label: "call counter.count".to_owned(),
            command: Command::Reload {
                plugin: "counter".to_owned(),
            },
        },
        Ok(Outcome::Called {
            report: plugboard_engine::CallReport {
                plugin: "counter".to_owned(),
                hook: "count".to_owned(),
                status: "ok".to_owned(),
                reply: "8".to_owned(),
                duration_us: 420,
            },
        }),
    );
    let text = render(&mut app, 100, 40).join("\n");
    assert!(text.contains("counter.count → ok in 420µs"), "{text}");
    press(&mut app, KeyCode::Esc);
    assert!(app.overlay.is_none());
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.screen, Screen::Main);
}

#[test]
fn the_log_pane_has_timestamps_and_a_search() {
    let mut app = app();
    app.selected_plugin = Some("hello".to_owned());
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus, Pane::Log);
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("Log 3"), "{text}");
    // The SDK's levels: error 0, warn 1, info 2, debug 3.
    assert!(text.contains(".000 inf greeted world"), "{text}");
    press(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "warn");
    press(&mut app, KeyCode::Enter);
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("Log 1 /warn"), "{text}");
    assert!(text.contains("err a warning on stderr"), "{text}");
    assert!(!text.contains("greeted world"), "{text}");
    // Words match wherever they are, as in every filter.
    press(&mut app, KeyCode::Char('/'));
    for _ in 0..4 {
        press(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "WORLD greeted");
    press(&mut app, KeyCode::Enter);
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("Log 1 /WORLD greeted"), "{text}");
    assert!(text.contains("greeted world"), "{text}");
}

/// The log pane shows the whole log the engine keeps (a snapshot carries 20 lines), its
/// search reaches all of it, and a cursor away from the newest line stays on its line as
/// lines arrive.
#[test]
fn the_log_pane_shows_the_whole_kept_log_and_its_cursor_stays_on_its_line() {
    let mut app = app();
    app.selected_plugin = Some("hello".to_owned());
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus, Pane::Log);
    let lines = |count: u64| -> Vec<plugboard_engine::snapshot::OutputLine> {
        (0..count)
            .map(|at| {
                serde_json::from_value(json!({"at_ms": NOW_MS - 100_000 + at,
                    "stream": "stdout", "line": format!("log line {at}")}))
                .unwrap()
            })
            .collect()
    };
    app.on_output_history("hello".to_owned(), lines(300));
    let text = render(&mut app, 100, 40).join("\n");
    assert!(text.contains("Log 300"), "{text}");
    press(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "line 3");
    press(&mut app, KeyCode::Enter);
    assert!(
        app.visible_log()
            .iter()
            .any(|line| line.line == "log line 3"),
        "the search reaches the oldest lines"
    );
    press(&mut app, KeyCode::Char('/'));
    for _ in 0.."line 3".len() {
        press(&mut app, KeyCode::Backspace);
    }
    press(&mut app, KeyCode::Enter);
    for _ in 0..3 {
        press(&mut app, KeyCode::Down);
    }
    assert_eq!(app.visible_log()[app.log_cursor].line, "log line 296");
    app.on_output_history("hello".to_owned(), lines(305));
    assert_eq!(app.visible_log()[app.log_cursor].line, "log line 296");
}

#[test]
fn the_detail_view_degrades_to_one_pane_at_40x12() {
    let mut app = app();
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    let screen = render(&mut app, 40, 12);
    let text = screen.join("\n");
    assert!(text.contains("Hooks 3"), "{text}");
    assert!(!text.contains("What the kernel granted"), "{text}");
    press(&mut app, KeyCode::BackTab);
    let text = render(&mut app, 40, 12).join("\n");
    assert!(
        text.contains("Info"),
        "the info panels become a pane: {text}"
    );
    assert!(text.contains("0123456789abcdef"), "{text}");
}

#[test]
fn mouse_clicks_select_rows_and_panes_and_sort_by_a_title() {
    let mut app = app();
    let screen = render(&mut app, 80, 24);
    let row = screen
        .iter()
        .position(|row| row.starts_with("│hello "))
        .unwrap();
    let click = |column: u16, row: usize| MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column,
        row: u16::try_from(row).unwrap(),
        modifiers: KeyModifiers::NONE,
    };
    app.on_mouse(click(3, row));
    assert_eq!(app.selected_plugin.as_deref(), Some("hello"));
    app.on_mouse(click(3, row));
    assert_eq!(
        app.screen,
        Screen::Detail,
        "a click on the selected row opens it"
    );
    press(&mut app, KeyCode::Esc);

    let screen = render(&mut app, 80, 24);
    let events_row = screen
        .iter()
        .position(|row| row.contains("traffic on: 20 calls/s"))
        .unwrap();
    app.on_mouse(click(20, events_row));
    assert_eq!(app.focus, Pane::Events);
    assert_eq!(app.visible_events(None)[app.event_cursor].seq, 4);

    let screen = render(&mut app, 80, 24);
    let header = screen.iter().position(|row| row.contains("NAME")).unwrap();
    let x = screen[header].chars().take_while(|c| *c != 'V').count();
    let x = screen[header][..].find("VIOL").map_or(x, |_| {
        screen[header]
            .chars()
            .collect::<Vec<_>>()
            .iter()
            .position(|c| *c == 'V')
            .unwrap_or(x)
    });
    app.on_mouse(click(u16::try_from(x).unwrap() + 1, header));
    assert_ne!(
        app.sort.column,
        Column::Name,
        "a click on a title sorts by it"
    );
}

/// The wheel over a pane focuses it and moves its cursor, a row a notch.
#[test]
fn the_mouse_wheel_focuses_the_pane_under_it_and_moves_its_cursor() {
    let mut app = app();
    let screen = render(&mut app, 80, 24);
    let wheel = |kind: MouseEventKind, row: usize| MouseEvent {
        kind,
        column: 5,
        row: u16::try_from(row).unwrap(),
        modifiers: KeyModifiers::NONE,
    };
    let table_row = screen
        .iter()
        .position(|row| row.starts_with("│hello "))
        .unwrap();
    let first = app.selected_plugin.clone();
    app.on_mouse(wheel(MouseEventKind::ScrollDown, table_row));
    assert_eq!(app.focus, Pane::Plugins);
    assert_ne!(
        app.selected_plugin, first,
        "a notch down selects the next row"
    );
    app.on_mouse(wheel(MouseEventKind::ScrollUp, table_row));
    assert_eq!(app.selected_plugin, first, "and a notch up goes back");

    let events_row = screen
        .iter()
        .position(|row| row.contains("traffic on: 20 calls/s"))
        .unwrap();
    app.on_mouse(wheel(MouseEventKind::ScrollDown, events_row));
    assert_eq!(app.focus, Pane::Events);
    assert_eq!(app.event_cursor, 1);
}

#[test]
fn pause_freezes_the_display_and_steps_through_history() {
    let mut app = app();
    press(&mut app, KeyCode::Char('p'));
    let mut later = fleet();
    later["uptime_ms"] = json!(200_000);
    later["plugins"][0]["state"] = json!("stopped");
    app.on_sample(snapshot(later));
    app.on_engine_event(event(
        6,
        Some("hello"),
        json!({"kind": "state_changed", "from": "running", "to": "stopped"}),
    ));
    let screen = render(&mut app, 80, 24);
    let text = screen.join("\n");
    assert!(text.contains("PAUSED"), "{text}");
    assert!(
        row_of(&screen, "│hello ").contains("Running"),
        "frozen: {text}"
    );
    assert!(
        !text.contains("Running → ○ Stopped"),
        "events frozen too: {text}"
    );
    press(&mut app, KeyCode::Char(']'));
    let screen = render(&mut app, 80, 24);
    assert!(
        row_of(&screen, "│hello ").contains("Stopped"),
        "a newer sample"
    );
    press(&mut app, KeyCode::Char('['));
    assert!(
        row_of(&render(&mut app, 80, 24), "│hello ").contains("Running"),
        "back again"
    );
    // A command still acts on the live engine: its answer says the screen lags behind.
    let stop = Job {
        label: "stop counter".to_owned(),
        command: Command::Stop {
            plugin: "counter".to_owned(),
            force: false,
        },
    };
    app.on_job_done(1, &stop, Ok(Outcome::Done));
    let status = app.status.as_ref().map(|status| status.text.clone());
    assert_eq!(
        status.as_deref(),
        Some("✓ stop counter: done (paused: the screen shows an older sample; p resumes)")
    );
    press(&mut app, KeyCode::Char('p'));
    let text = render(&mut app, 80, 24).join("\n");
    assert!(!text.contains("PAUSED"));
    assert!(text.contains("Running → ○ Stopped"), "{text}");
}

/// Paused and stepped back to a sample from before the plugin in the details existed, the
/// details say so and keep it — no other plugin takes its place (keys would act on it).
#[test]
fn details_stepped_back_before_their_plugin_existed_keep_it() {
    let mut app = app();
    let mut later = fleet();
    later["taken_at_ms"] = json!(NOW_MS + 5_000);
    later["plugins"]
        .as_array_mut()
        .unwrap()
        .push(plugin("newbie", "running"));
    app.on_sample(snapshot(later));
    app.selected_plugin = Some("newbie".to_owned());
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Char('p'));
    press(&mut app, KeyCode::Char('['));
    app.on_sample(snapshot(fleet()));
    assert_eq!(app.screen, Screen::Detail);
    assert_eq!(app.selected_plugin.as_deref(), Some("newbie"));
    let text = render(&mut app, 100, 40).join("\n");
    assert!(text.contains("not in the sample shown"), "{text}");
    press(&mut app, KeyCode::Char(']'));
    assert!(app.selected().is_some_and(|shown| shown.name == "newbie"));
}

/// A log cursor on one of several equal lines (a plugin repeating itself within a
/// millisecond) stays on that one as lines arrive.
#[test]
fn a_log_cursor_on_a_repeated_line_stays_on_that_copy() {
    let mut app = app();
    app.selected_plugin = Some("hello".to_owned());
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    // Each a millisecond after the one before (lines of one millisecond keep their order).
    let line = |at: u64, text: &str| -> plugboard_engine::snapshot::OutputLine {
        serde_json::from_value(
            json!({"at_ms": NOW_MS - 100 + at, "stream": "stdout", "line": text}),
        )
        .unwrap()
    };
    let mut lines = vec![
        line(0, "a"),
        line(1, "same"),
        line(2, "same"),
        line(3, "same"),
        line(4, "b"),
    ];
    app.on_output_history("hello".to_owned(), lines.clone());
    // Newest first: b, same, same, same, a — the cursor on the second copy shown.
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Down);
    assert_eq!(app.log_cursor, 2);
    lines.extend([line(5, "same"), line(6, "c")]);
    app.on_output_history("hello".to_owned(), lines);
    // c, same, b, same, same, same, a: the same copy is now at 4.
    assert_eq!(app.log_cursor, 4);
}

/// Lines written together (one stream, one millisecond: a panic's message) read top to
/// bottom, while the log shows the newest first.
#[test]
fn lines_written_together_keep_their_order_in_the_newest_first_log() {
    let mut app = app();
    app.selected_plugin = Some("hello".to_owned());
    press(&mut app, KeyCode::Enter);
    let line = |at: u64, stream: &str, text: &str| -> plugboard_engine::snapshot::OutputLine {
        serde_json::from_value(json!({"at_ms": NOW_MS - 100 + at, "stream": stream, "line": text}))
            .unwrap()
    };
    app.on_output_history(
        "hello".to_owned(),
        vec![
            line(0, "stdout", "first"),
            line(5, "stderr", "thread panicked at lib.rs:24:9:"),
            line(5, "stderr", "panic number 1"),
            line(5, "stderr", "note: run with RUST_BACKTRACE=1"),
            line(9, "stdout", "after"),
        ],
    );
    let shown: Vec<&str> = app
        .visible_log()
        .iter()
        .map(|line| line.line.as_str())
        .collect();
    assert_eq!(
        shown,
        [
            "after",
            "thread panicked at lib.rs:24:9:",
            "panic number 1",
            "note: run with RUST_BACKTRACE=1",
            "first"
        ]
    );
}

/// Stepped back while paused, the event log ends where the sample shown was taken.
#[test]
fn a_sample_stepped_back_to_shows_the_events_up_to_it() {
    let mut app = app();
    let mut later = fleet();
    later["taken_at_ms"] = json!(NOW_MS + 5_000);
    app.on_sample(snapshot(later));
    app.on_engine_event(event(
        12,
        None,
        json!({"kind": "engine", "message": "after the first sample"}),
    ));
    press(&mut app, KeyCode::Char('p'));
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("after the first sample"), "{text}");
    press(&mut app, KeyCode::Char('['));
    let text = render(&mut app, 80, 24).join("\n");
    // The newest sample is 5 s later than the one shown.
    assert!(text.contains("PAUSED at 16:00:00, 5s behind"), "{text}");
    assert!(!text.contains("after the first sample"), "{text}");
    assert!(text.contains("traffic on: 20 calls/s"), "{text}");
}

#[test]
fn traffic_toggles_from_the_snapshot_state() {
    let mut app = app();
    assert_eq!(
        press(&mut app, KeyCode::Char('t')),
        [Effect::Run(Job {
            label: "traffic off".to_owned(),
            command: Command::Traffic { rate: None }
        })]
    );
    let mut quiet = fleet();
    quiet["traffic"] = Value::Null;
    app.on_sample(snapshot(quiet));
    assert_eq!(
        press(&mut app, KeyCode::Char('t')),
        [Effect::Run(Job {
            label: "traffic on (20 calls/s)".to_owned(),
            command: Command::Traffic { rate: Some(20.0) }
        })]
    );
    // A double tap before the next snapshot: off, then on again.
    assert_eq!(
        press(&mut app, KeyCode::Char('t')),
        [Effect::Run(Job {
            label: "traffic off".to_owned(),
            command: Command::Traffic { rate: None }
        })]
    );
    assert_eq!(press(&mut app, KeyCode::Char('q')), [Effect::Quit]);
}

/// `+` and `-` double and halve the rate the generator runs at; off, they set the rate `t`
/// turns on, and say so.
#[test]
fn traffic_faster_and_slower_step_the_rate() {
    let mut app = app();
    // The fleet's traffic runs at 20 calls/s; a second press before the next snapshot
    // doubles again.
    assert_eq!(
        press(&mut app, KeyCode::Char('+')),
        [Effect::Run(Job {
            label: "traffic at 40 calls/s".to_owned(),
            command: Command::Traffic { rate: Some(40.0) }
        })]
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('+')),
        [Effect::Run(Job {
            label: "traffic at 80 calls/s".to_owned(),
            command: Command::Traffic { rate: Some(80.0) }
        })]
    );
    press(&mut app, KeyCode::Char('-'));
    let mut quiet = fleet();
    quiet["traffic"] = Value::Null;
    app.on_sample(snapshot(quiet));
    assert!(press(&mut app, KeyCode::Char('-')).is_empty());
    let status = app.status.clone().expect("a status");
    assert_eq!(status.text, "traffic rate 20 calls/s when on (t)");
    assert_eq!(
        press(&mut app, KeyCode::Char('t')),
        [Effect::Run(Job {
            label: "traffic on (20 calls/s)".to_owned(),
            command: Command::Traffic { rate: Some(20.0) }
        })]
    );
    // Never below one call a second.
    for _ in 0..10 {
        press(&mut app, KeyCode::Char('-'));
    }
    assert!(
        (app.traffic_rate - 1.0).abs() < f64::EPSILON,
        "{}",
        app.traffic_rate
    );
}

#[test]
fn no_color_draws_without_colour_and_marks_the_selection_in_reverse() {
    let themes = Themes::built_in().unwrap();
    let mut app = app_with(Keymap::defaults(), themes.resolve("dark", true).unwrap());
    let buffer = buffer(&mut app, 80, 24);
    for cell in buffer.content() {
        assert_eq!(cell.fg, Color::Reset, "{cell:?}");
        assert_eq!(cell.bg, Color::Reset, "{cell:?}");
    }
    let screen = render(&mut app, 80, 24);
    let selected = screen
        .iter()
        .position(|row| row.starts_with("│broken "))
        .unwrap();
    let cell = &buffer[(5, u16::try_from(selected).unwrap())];
    assert!(cell.modifier.contains(Modifier::REVERSED), "{cell:?}");
    // States still read without colour: symbol and word.
    assert!(row_of(&screen, "│broken ").contains("✗ Failed"));
}

#[test]
fn every_built_in_theme_draws_every_screen() {
    let themes = Themes::built_in().unwrap();
    for name in themes.names() {
        let mut app = app_with(Keymap::defaults(), themes.resolve(&name, false).unwrap());
        render(&mut app, 80, 24);
        app.selected_plugin = Some("counter".to_owned());
        press(&mut app, KeyCode::Enter);
        render(&mut app, 80, 24);
        app.on_action(Action::Help);
        render(&mut app, 80, 24);
    }
    let mut app = app();
    app.on_action(Action::NextTheme);
    assert_ne!(app.theme.name, "dark");
}

#[test]
fn the_chaos_menu_starts_a_zoo_plugin_sets_it_off_and_quiets_it() {
    let mut app = app();
    assert!(press(&mut app, KeyCode::Char('c')).is_empty());
    assert!(
        app.status
            .as_ref()
            .unwrap()
            .text
            .contains("no misbehaving plugins")
    );
    let act = |plugin: &str, what: &str| crate::tui::app::ChaosAct {
        plugin: plugin.to_owned(),
        what: what.to_owned(),
        payload: Vec::new(),
    };
    app.chaos = vec![
        act("dependent", "does something bad"),
        act("hello", "greets too loudly"),
    ];
    let footer = render(&mut app, 80, 24)[23].clone();
    assert!(
        footer.contains("x stop  c chaos"),
        "the menu's key is offered: {footer}"
    );
    press(&mut app, KeyCode::Char('c'));
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("Chaos"), "{text}");
    assert!(text.contains("▶ dependent  does something bad"), "{text}");
    // A stopped plugin: start it first, then the chaos call — and nothing after it (the
    // zoo's manifests keep `chaos` from generated traffic).
    let effects = press(&mut app, KeyCode::Enter);
    let start = Job {
        label: "start dependent for chaos".to_owned(),
        command: Command::Start {
            plugin: "dependent".to_owned(),
        },
    };
    assert_eq!(effects, [Effect::Run(start.clone())]);
    let call = Job {
        label: "chaos dependent".to_owned(),
        command: Command::Call {
            plugin: "dependent".to_owned(),
            hook: "chaos".to_owned(),
            payload: Vec::new(),
        },
    };
    assert_eq!(
        app.on_job_done(1, &start, Ok(Outcome::Done)),
        [Effect::Run(call.clone())]
    );
    let report = plugboard_engine::CallReport {
        plugin: "dependent".to_owned(),
        hook: "chaos".to_owned(),
        status: "gone".to_owned(),
        reply: String::new(),
        duration_us: 2_000_000,
    };
    assert!(
        app.on_job_done(2, &call, Ok(Outcome::Called { report }))
            .is_empty()
    );
    let status = app.status.as_ref().map(|status| status.text.clone());
    assert_eq!(
        status.as_deref(),
        Some("chaos dependent: gone in 2.00s"),
        "the act's outcome stays in the status line"
    );
    press(&mut app, KeyCode::Enter);
    // A running plugin is called at once.
    press(&mut app, KeyCode::Char('c'));
    press(&mut app, KeyCode::Char('j'));
    let effects = press(&mut app, KeyCode::Enter);
    assert!(
        matches!(&effects[..], [Effect::Run(Job { command: Command::Call { plugin, .. }, .. })] if plugin == "hello"),
        "{effects:?}"
    );
    // A failed start sets nothing off.
    app.chaos = vec![act("broken", "x")];
    press(&mut app, KeyCode::Char('c'));
    let effects = press(&mut app, KeyCode::Enter);
    let [Effect::Run(start)] = effects.as_slice() else {
        panic!("a start: {effects:?}");
    };
    let refused = JobError {
        message: "no".to_owned(),
        dependents: Vec::new(),
    };
    assert!(app.on_job_done(3, start, Err(refused)).is_empty());
}

/// On a screen too short for the whole menu, the chosen entry stays in sight; a reload's
/// preview too tall for it drops the unchanged lines first, keeping every change.
#[test]
fn dialogs_taller_than_the_screen_keep_the_chosen_entry_and_the_changes() {
    let mut app = app();
    app.chaos = (0..14)
        .map(|at| crate::tui::app::ChaosAct {
            plugin: format!("zoo{at:02}"),
            what: "misbehaves".to_owned(),
            payload: Vec::new(),
        })
        .collect();
    press(&mut app, KeyCode::Char('c'));
    // End goes to the last entry, as in every list.
    press(&mut app, KeyCode::End);
    let text = render(&mut app, 80, 16).join("\n");
    assert!(text.contains("▶ zoo13"), "{text}");
    assert!(text.contains("esc close"), "{text}");
    press(&mut app, KeyCode::Home);
    assert!(render(&mut app, 80, 16).join("\n").contains("▶ zoo00"));
    press(&mut app, KeyCode::Esc);

    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Char('r'));
    let running = app.selected().unwrap().clone();
    let mut changes: Vec<String> = (0..12)
        .map(|at| format!("limit{at:<7} {at} (unchanged)"))
        .collect();
    changes.push("hooks        count 200ms → count 300ms   CHANGED".to_owned());
    app.on_reload_preview(&running, changes);
    let text = render(&mut app, 80, 16).join("\n");
    assert!(text.contains("count 300ms   CHANGED"), "{text}");
    assert!(text.contains("unchanged not shown"), "{text}");
    assert!(text.contains("no / esc"), "{text}");
}

/// A new sample like the newest, with `plugin` changed by `edit`.
fn sample_with(
    app: &mut App,
    plugin: &str,
    edit: impl FnOnce(&mut plugboard_engine::PluginSnapshot),
) {
    let mut snapshot = (**app.history.back().unwrap()).clone();
    let shown = snapshot
        .plugins
        .iter_mut()
        .find(|shown| shown.name == plugin)
        .unwrap();
    edit(shown);
    app.history.push_back(std::sync::Arc::new(snapshot));
}

/// A plugin waiting to restart is not started for an act: that would be an operator's
/// start, with a fresh restart budget, and acts repeated in a demo would never spend it.
#[test]
fn the_chaos_menu_leaves_a_plugin_waiting_to_restart_to_its_restart() {
    let mut app = app();
    app.chaos = vec![crate::tui::app::ChaosAct {
        plugin: "hello".to_owned(),
        what: "crashes".to_owned(),
        payload: Vec::new(),
    }];
    sample_with(&mut app, "hello", |hello| {
        hello.state = plugboard_engine::PluginState::BackingOff;
        hello.supervision.restart_budget_left = 3;
    });
    press(&mut app, KeyCode::Char('c'));
    let effects = press(&mut app, KeyCode::Enter);
    assert!(effects.is_empty(), "{effects:?}");
    let status = app.status.as_ref().map(|status| status.text.clone());
    assert_eq!(
        status.as_deref(),
        Some(
            "hello is backing off (3 restarts left in its budget): set it off again once it runs, or press s to start it now with a fresh restart budget"
        )
    );
}

#[test]
fn the_chaos_menu_turns_a_chaos_hook_turned_off_before_on_again_for_one_call() {
    let mut app = app();
    app.chaos = vec![crate::tui::app::ChaosAct {
        plugin: "hello".to_owned(),
        what: "greets too loudly".to_owned(),
        payload: b"8000".to_vec(),
    }];
    // Set off again once its chaos hook was turned off: on first, then the call.
    sample_with(&mut app, "hello", |hello| {
        hello.disabled_hooks = vec!["chaos".to_owned()];
    });
    press(&mut app, KeyCode::Char('c'));
    let effects = press(&mut app, KeyCode::Enter);
    let enable = Job {
        label: "enable hook hello.chaos".to_owned(),
        command: Command::EnableHook {
            plugin: "hello".to_owned(),
            hook: "chaos".to_owned(),
        },
    };
    assert_eq!(effects, [Effect::Run(enable.clone())]);
    let effects = app.on_job_done(1, &enable, Ok(Outcome::Done));
    assert!(
        matches!(&effects[..], [Effect::Run(Job { command: Command::Call { plugin, hook, payload }, .. })] if plugin == "hello" && hook == "chaos" && payload == b"8000"),
        "{effects:?}"
    );
}

#[test]
fn narrow_tables_keep_the_most_telling_columns() {
    let at_80 = Column::fitting(78);
    for column in [
        Column::Name,
        Column::State,
        Column::Violations,
        Column::Errors,
        Column::HooksPerSec,
        Column::P99,
    ] {
        assert!(at_80.contains(&column), "{column:?} at 80: {at_80:?}");
    }
    let at_40 = Column::fitting(38);
    assert_eq!(at_40[..2], [Column::Name, Column::State]);
    let used = at_40.iter().map(|column| column.width() + 1).sum::<u16>() - 1;
    assert!(used <= 38 || at_40.len() == 2, "{at_40:?}");
    assert_eq!(Column::fitting(400), Column::ALL.to_vec());
}

#[test]
fn the_help_scrolls_on_a_small_terminal() {
    let mut app = app();
    app.on_action(Action::Help);
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("start the selected plugin"), "{text}");
    assert!(
        text.contains("j/k scroll"),
        "the title says how to scroll: {text}"
    );
    assert!(!text.contains("keymap.toml"), "{text}");
    press(&mut app, KeyCode::Char('G'));
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("keymap.toml"), "the end of the help: {text}");
    assert!(!text.contains("start the selected plugin"), "{text}");
    press(&mut app, KeyCode::Char('x'));
    assert_eq!(app.overlay, None);
}

/// Whole screens, compared with the recorded ones in `snapshots/` (the fixtures carry
/// fixed times, so nothing volatile reaches the screen). After an intended change:
/// `INSTA_UPDATE=always cargo test -p plugboard`, then read the diff.
#[test]
fn whole_screens_match_the_recorded_ones() {
    let mut app = app();
    insta::assert_snapshot!("main_80x24", render(&mut app, 80, 24).join("\n"));
    insta::assert_snapshot!("main_40x12", render(&mut app, 40, 12).join("\n"));
    insta::assert_snapshot!("main_120x30", render(&mut app, 120, 30).join("\n"));
    // Counter's bundle changed on disk since it was verified: the details say so.
    counter_changed_on_disk(&mut app);
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    insta::assert_snapshot!("detail_100x40", render(&mut app, 100, 40).join("\n"));
    insta::assert_snapshot!("detail_80x24", render(&mut app, 80, 24).join("\n"));
    press(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!("help_80x24", render(&mut app, 80, 24).join("\n"));
    insta::assert_snapshot!("too_small_30x10", render(&mut app, 30, 10).join("\n"));
}

/// A fleet of `count` running plugins with hook statistics and resource samples, and a
/// full event log.
fn big_fleet(count: usize) -> App {
    let mut value = fleet();
    let template = value["plugins"][1].clone();
    let plugins: Vec<Value> = (0..count)
        .map(|at| {
            let mut plugin = template.clone();
            plugin["name"] = json!(format!("plugin-{at:04}"));
            plugin
        })
        .collect();
    value["plugins"] = Value::Array(plugins);
    let mut app = App::new(
        Keymap::defaults(),
        Themes::built_in().unwrap(),
        Theme::default_theme(),
    );
    app.on_sample(snapshot(value));
    for seq in 1..=2000 {
        app.on_engine_event(event(
            seq,
            Some("plugin-0001"),
            json!({"kind": "state_changed", "from": "starting", "to": "running"}),
        ));
    }
    app
}

#[test]
fn a_long_table_scrolls_to_the_selection_and_clicks_hit_the_row_shown() {
    let mut app = big_fleet(30);
    let screen = render(&mut app, 80, 24);
    assert!(row_of(&screen, "│plugin-0000 ").contains("Running"));
    press(&mut app, KeyCode::Char('G'));
    let screen = render(&mut app, 80, 24);
    assert!(contains(&screen, "│plugin-0029 "), "{}", screen.join("\n"));
    assert!(!contains(&screen, "│plugin-0000 "), "{}", screen.join("\n"));
    let buffer = buffer(&mut app, 80, 24);
    let row = screen
        .iter()
        .position(|row| row.starts_with("│plugin-0029 "))
        .unwrap();
    assert!(
        buffer[(3, u16::try_from(row).unwrap())].bg != Color::Reset,
        "the selected row is highlighted"
    );
    // A click on a row drawn after scrolling selects that plugin.
    let shown = screen
        .iter()
        .position(|row| row.starts_with("│plugin-0025 "))
        .unwrap();
    app.on_mouse(MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column: 4,
        row: u16::try_from(shown).unwrap(),
        modifiers: KeyModifiers::NONE,
    });
    assert_eq!(app.selected_plugin.as_deref(), Some("plugin-0025"));
    press(&mut app, KeyCode::Char('g'));
    assert!(contains(&render(&mut app, 80, 24), "│plugin-0000 "));
}

#[test]
fn the_charts_draw_the_engine_ring_of_the_plugin_in_view() {
    let mut app = app();
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.watched_plugin().as_deref(), Some("counter"));
    let template = fleet()["plugins"][1]["resources"].clone();
    // Ten minutes of memory creeping up to the limit, CPU idle but for one spike.
    let samples = (0..600u64)
        .map(|second| {
            let mut sample = template.clone();
            sample["at_ms"] = json!(NOW_MS - (600 - second) * 1000);
            sample["memory_bytes"] = json!((32u64 << 20) * (second + 1) / 600);
            sample["cpu_percent"] = json!(if second == 300 { 80.0 } else { 0.0 });
            serde_json::from_value(sample).unwrap()
        })
        .collect();
    app.on_resource_history("counter".to_owned(), samples);
    let text = render(&mut app, 100, 40).join("\n");
    assert!(
        text.contains("▁▂▂▃▃▄▄▅▅▅▆▆▇▇██ 12.0/32.0MiB"),
        "memory climbs to its limit: {text}"
    );
    assert!(
        text.contains("▁▁▁▁▁▁▁▁█▁▁▁▁▁▁▁ 8%"),
        "the spike survives the buckets: {text}"
    );
    // The span the charts cover is said: 600 samples a second apart.
    assert!(text.contains("↑ last 9m59s, peak per bar"), "{text}");
    // Paused: the display shows its own frozen samples, and stops asking.
    press(&mut app, KeyCode::Char('p'));
    assert_eq!(app.watched_plugin(), None);
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.watched_plugin(), None, "the main screen charts nothing");
}

#[test]
fn violations_read_as_sentences_and_are_counted_in_the_plugin_events() {
    let mut app = app();
    app.on_engine_event(event(
        6,
        Some("counter"),
        json!({"kind": "violation", "violation": "oom_kill", "hook": "count",
               "mechanism": "cgroup", "severity": "critical",
               "detail": "the kernel's OOM killer ended it at its 32 MiB limit",
               "facts": {"limit_bytes": 33_554_432}, "action": "restart"}),
    ));
    let text = render(&mut app, 160, 30).join("\n");
    assert!(
        text.contains("oom_kill           oom kill → restart: count: the kernel's OOM killer ended it at its 32 MiB limit"),
        "{text}"
    );
    app.event_filter = "kind:viol".to_owned();
    assert_eq!(app.visible_events(None).len(), 1);
    app.event_filter.clear();
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::BackTab);
    assert_eq!(app.focus, Pane::PluginEvents);
    let text = render(&mut app, 80, 24).join("\n");
    assert!(text.contains("Events 2 · 1 violation"), "{text}");
}

/// An idle plugin's CPU line keeps its quota (an idle sample is 0% of any quota).
#[test]
fn an_idle_plugin_shows_its_cpu_quota() {
    let mut fleet = fleet();
    fleet["plugins"][1]["resources"]["cpu_percent"] = json!(0.0);
    fleet["plugins"][1]["resources"]["cpu_percent_of_quota"] = json!(0.0);
    let mut app = app();
    app.on_sample(snapshot(fleet));
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    let text = render(&mut app, 100, 40).join("\n");
    assert!(text.contains(" 0% of 25%"), "{text}");
}

/// The hook table sorts by the latency it shows: the last minute's when there is one.
#[test]
fn hooks_sort_by_the_latency_shown() {
    let mut fleet = fleet();
    let hooks = &mut fleet["plugins"][1]["hooks"];
    // Slow once, fast in the last minute: shows 1.0ms, sorts as 1.0ms.
    hooks["count"]["recent"]["p99_us"] = json!(1_000);
    hooks["count"]["since_start"]["p99_us"] = json!(50_000);
    hooks["reset"]["recent"]["p99_us"] = json!(10_000);
    hooks["reset"]["since_start"]["p99_us"] = json!(10_000);
    let mut app = app();
    app.on_sample(snapshot(fleet));
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    let hooks = app.visible_hooks();
    assert_eq!(hooks[..2], ["reset", "count"], "{hooks:?}");
}

/// Scrolling up from the end of the help moves at once.
#[test]
fn the_help_scrolls_up_from_its_end_at_once() {
    let mut app = app();
    press(&mut app, KeyCode::Char('?'));
    press(&mut app, KeyCode::Char('G'));
    let title = |screen: &[String]| {
        screen
            .iter()
            .find(|row| row.contains(" Help "))
            .cloned()
            .unwrap()
    };
    let at_end = title(&render(&mut app, 60, 16));
    press(&mut app, KeyCode::Char('k'));
    let one_up = title(&render(&mut app, 60, 16));
    assert_ne!(at_end, one_up, "k moved the help");
    let Some(Overlay::Help(scroll)) = app.overlay else {
        panic!("the help is open");
    };
    assert!(scroll < 100, "{scroll}");
}

/// The event cursor stays on its event as others arrive, whether they pass the pane's
/// filter or not, and across a pause.
#[test]
fn the_event_cursor_stays_on_its_event() {
    let mut app = app();
    app.focus = Pane::Events;
    app.event_filter = "kind:state".to_owned();
    press(&mut app, KeyCode::Char('j'));
    let on = |app: &App| app.visible_events(None)[app.event_cursor].seq;
    assert_eq!(on(&app), 2);
    app.on_engine_event(event(
        6,
        None,
        json!({"kind": "engine", "message": "not a state change"}),
    ));
    assert_eq!(on(&app), 2, "an event the filter hides moves nothing");
    app.on_engine_event(event(
        7,
        Some("hello"),
        json!({"kind": "state_changed", "from": "running", "to": "stopping"}),
    ));
    assert_eq!(on(&app), 2);
    press(&mut app, KeyCode::Char('p'));
    app.on_engine_event(event(
        8,
        Some("hello"),
        json!({"kind": "state_changed", "from": "stopping", "to": "stopped"}),
    ));
    assert_eq!(on(&app), 2);
    press(&mut app, KeyCode::Char('p'));
    assert_eq!(
        on(&app),
        2,
        "what came in while paused shows above the cursor"
    );
}

#[test]
fn an_event_log_left_scrolled_back_follows_the_newest_again() {
    let mut app = app();
    app.focus = Pane::Events;
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.event_cursor, 1);
    // Scrolled back and focused, the title says the newest are above.
    let screen = render(&mut app, 120, 40).join("\n");
    assert!(screen.contains("1 newer ↑"), "{screen}");
    // Leaving the pane: back to the newest, which then stays in view as events arrive.
    press(&mut app, KeyCode::Tab);
    assert_ne!(app.focus, Pane::Events);
    assert_eq!(app.event_cursor, 0);
    app.on_engine_event(event(
        9,
        Some("hello"),
        json!({"kind": "engine", "message": "the newest event"}),
    ));
    assert_eq!(app.event_cursor, 0);
    let screen = render(&mut app, 120, 40).join("\n");
    assert!(screen.contains("the newest event"), "{screen}");
}

#[test]
fn every_column_has_room_for_its_title_with_the_sort_arrow_and_for_every_state() {
    use plugboard_engine::PluginState as S;
    for column in crate::tui::columns::Column::ALL {
        let title = column.title().chars().count() + 1;
        assert!(
            usize::from(column.width()) >= title,
            "{} is {} wide",
            column.title(),
            column.width()
        );
    }
    let state_width = usize::from(crate::tui::columns::Column::State.width());
    for state in [
        S::Discovered,
        S::Verified,
        S::Rejected,
        S::Starting,
        S::Running,
        S::Degraded,
        S::Reloading,
        S::Stopping,
        S::Stopped,
        S::Failed,
        S::BackingOff,
        S::Disabled,
        S::Quarantined,
        S::Unloaded,
    ] {
        let look = crate::tui::columns::state_look(state);
        let shown = look.symbol.chars().count() + 1 + look.label.chars().count();
        assert!(shown <= state_width, "{} does not fit", look.label);
    }
}

#[test]
fn enter_in_the_details_shows_the_selected_event_in_full_with_its_facts() {
    let mut app = app();
    let long = "the worker ended unexpectedly: killed by signal 11 (SIGSEGV) while serving chaos, after 3 OOM kill(s) in its cgroup, reported before — the end of this text";
    app.on_engine_event(event(
        9,
        Some("counter"),
        json!({"kind": "violation", "violation": "crash", "hook": "chaos",
               "mechanism": "engine", "severity": "critical", "detail": long,
               "facts": {"signal": 11, "signal_name": "SIGSEGV"}, "action": "restart"}),
    ));
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    app.focus = Pane::PluginEvents;
    press(&mut app, KeyCode::Enter);
    let screen = render(&mut app, 100, 40).join("\n");
    assert!(screen.contains("Event"), "{screen}");
    assert!(screen.contains("the end of this text"), "{screen}");
    assert!(screen.contains("signal_name = \"SIGSEGV\""), "{screen}");
    // Any key closes it.
    press(&mut app, KeyCode::Char('x'));
    assert!(app.overlay.is_none());
}

#[test]
fn the_details_of_another_plugin_open_without_the_last_ones_filters() {
    let mut app = app();
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    app.log_filter = "number".to_owned();
    app.plugin_event_filter = "kind:crash".to_owned();
    press(&mut app, KeyCode::Esc);
    // The same plugin again: its filters are kept.
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.log_filter, "number");
    press(&mut app, KeyCode::Esc);
    app.selected_plugin = Some("hello".to_owned());
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        (app.log_filter.as_str(), app.plugin_event_filter.as_str()),
        ("", "")
    );
}

#[test]
fn a_dialog_taller_than_the_screen_keeps_its_answer_keys() {
    let mut app = app();
    app.selected_plugin = Some("counter".to_owned());
    let effects = press(&mut app, KeyCode::Char('r'));
    let [Effect::PreviewReload { plugin }] = effects.as_slice() else {
        panic!("the bundle is read first: {effects:?}");
    };
    let plugin = plugin.as_ref().clone();
    let changes: Vec<String> = (0..30)
        .map(|n| format!("line {n:>2} of the preview"))
        .collect();
    app.on_reload_preview(&plugin, changes);
    let screen = render(&mut app, 40, 12);
    let text = screen.join("\n");
    assert!(text.contains("Reload counter?"), "{text}");
    assert!(text.contains("…"), "{text}");
    assert!(text.contains(" y ") && text.contains("no / esc"), "{text}");
    assert!(!text.contains("line 29"), "{text}");
}

#[test]
fn the_info_pane_scrolls_on_a_small_terminal() {
    let mut app = app();
    app.selected_plugin = Some("counter".to_owned());
    press(&mut app, KeyCode::Enter);
    render(&mut app, 60, 20);
    assert!(app.layout.compact, "one pane at a time at 60x20");
    while app.focus != Pane::Info {
        press(&mut app, KeyCode::Tab);
    }
    let top = render(&mut app, 60, 20).join("\n");
    let Some(at) = top.find("↑↓ 0/") else {
        panic!("the title says it scrolls: {top}");
    };
    let last: u16 = top[at + "↑↓ 0/".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap();
    assert!(last > 0);
    press(&mut app, KeyCode::Char('G'));
    let bottom = render(&mut app, 60, 20).join("\n");
    assert!(bottom.contains(&format!("↑↓ {last}/{last}")), "{bottom}");
    assert_ne!(top, bottom);
    // From the end, one step up moves at once.
    press(&mut app, KeyCode::Char('k'));
    let up = render(&mut app, 60, 20).join("\n");
    assert!(up.contains(&format!("↑↓ {}/{last}", last - 1)), "{up}");
}

#[test]
fn a_text_longer_than_the_screen_shows_its_beginning_and_the_close_key() {
    let mut app = app();
    app.overlay = Some(Overlay::Text {
        title: "Event".to_owned(),
        lines: vec![format!("the beginning {}", "x".repeat(4000))],
    });
    let text = render(&mut app, 40, 12).join("\n");
    assert!(text.contains("the beginning"), "{text}");
    assert!(text.contains("any key: close"), "{text}");
}

/// The dashboard's own start-up jobs say nothing when they work (the demo's first status
/// line, its key and directory, stays to be read); one that fails is said.
#[test]
fn start_up_jobs_that_work_leave_the_status_line_alone() {
    let mut app = app();
    app.status = Some(crate::tui::app::Status {
        text: "demo: bundles signed by throw-away key k in /tmp/x".to_owned(),
        role: crate::tui::theme::Role::Info,
    });
    let load = |plugin: &str| Job {
        label: format!("load {plugin}"),
        command: Command::Load {
            plugin: plugin.to_owned(),
        },
    };
    app.quiet_jobs.extend([1, 2]);
    app.on_job_done(1, &load("hello"), Ok(Outcome::Done));
    let status = app.status.as_ref().map(|status| status.text.clone());
    assert_eq!(
        status.as_deref(),
        Some("demo: bundles signed by throw-away key k in /tmp/x")
    );
    let refused = JobError {
        message: "no".to_owned(),
        dependents: Vec::new(),
    };
    app.on_job_done(2, &load("broken"), Err(refused));
    let status = app.status.as_ref().map(|status| status.text.clone());
    assert_eq!(status.as_deref(), Some("✗ load broken: no"));
    // Any other job is said as before.
    app.on_job_done(3, &load("counter"), Ok(Outcome::Done));
    let status = app.status.as_ref().map(|status| status.text.clone());
    assert_eq!(status.as_deref(), Some("✓ load counter: done"));
}

/// A success said long ago leaves the status line ("✓ start crasher: done" while it has
/// crashed since); a warning stays until something replaces it.
#[test]
fn a_success_leaves_the_status_line_after_a_while_and_a_warning_stays() {
    use std::time::{Duration, Instant};
    let long_ago = Instant::now()
        .checked_sub(crate::tui::app::STATUS_OK_FOR + Duration::from_secs(1))
        .unwrap();
    for (role, stays) in [
        (crate::tui::theme::Role::Ok, false),
        (crate::tui::theme::Role::Warn, true),
    ] {
        let mut app = app();
        app.status = Some(crate::tui::app::Status {
            text: "said".to_owned(),
            role,
        });
        app.on_sample(snapshot(fleet()));
        assert!(app.status.is_some(), "just said: kept");
        app.status_seen = Some(("said".to_owned(), long_ago));
        app.on_sample(snapshot(fleet()));
        assert_eq!(app.status.is_some(), stays, "{role:?}");
    }
}

/// The table's P99 is the last minute's: a hook called once, slowly, long ago (a chaos
/// act) does not stand for a plugin whose other hooks serve fast; only when nothing was
/// called in the last minute does the lifetime p99 show.
#[test]
fn the_p99_column_is_the_last_minutes_while_any_hook_was_called_in_it() {
    let mut fleet = fleet();
    let mut slow_once = hook(1, 0, 201_700);
    slow_once["recent"] = json!({"p50_us": 0, "p90_us": 0, "p99_us": 0, "max_us": 0});
    fleet["plugins"][0]["hooks"] = json!({"work": hook(600, 0, 157), "chaos": slow_once});
    let shown = snapshot(fleet.clone());
    assert_eq!(crate::tui::columns::worst_p99(&shown.plugins[0]), Some(157));
    // Nothing called lately: the lifetime p99 is all there is.
    let mut quiet = hook(600, 0, 157);
    quiet["recent"] = json!({"p50_us": 0, "p90_us": 0, "p99_us": 0, "max_us": 0});
    fleet["plugins"][0]["hooks"]["work"] = quiet;
    let shown = snapshot(fleet);
    assert_eq!(
        crate::tui::columns::worst_p99(&shown.plugins[0]),
        Some(201_700)
    );
}
