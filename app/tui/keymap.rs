//! Key bindings: what each key does, loaded from the built-in TOML with the user's file
//! laid over it (an action named there gets exactly the keys given there). The footer and
//! the `?` overlay are generated from the live keymap, so they never lie after a remap.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// The built-in bindings (also the documentation of the file format).
pub const DEFAULT_KEYMAP: &str = include_str!("default_keymap.toml");
/// The name the built-in bindings go by in error messages.
pub const DEFAULT_KEYMAP_NAME: &str = "app/tui/default_keymap.toml (built in)";

/// Everything a key can do in the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Quit,
    Help,
    Start,
    Stop,
    Reload,
    Unload,
    Load,
    ClearQuarantine,
    Chaos,
    ToggleEnabled,
    ToggleHook,
    Traffic,
    TrafficFaster,
    TrafficSlower,
    Call,
    Pause,
    Filter,
    SortNext,
    SortPrevious,
    SortReverse,
    NextPane,
    PreviousPane,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    HistoryBack,
    HistoryForward,
    Open,
    Back,
    NextTheme,
}

/// Where an action belongs in the `?` overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ActionGroup {
    Plugin,
    View,
    Navigation,
}

impl ActionGroup {
    pub fn title(self) -> &'static str {
        match self {
            ActionGroup::Plugin => "Plugins",
            ActionGroup::View => "View",
            ActionGroup::Navigation => "Navigation",
        }
    }
}

impl Action {
    pub const ALL: [Action; 33] = [
        Action::Start,
        Action::Stop,
        Action::Reload,
        Action::Unload,
        Action::Load,
        Action::ClearQuarantine,
        Action::Chaos,
        Action::ToggleEnabled,
        Action::ToggleHook,
        Action::Call,
        Action::Traffic,
        Action::TrafficFaster,
        Action::TrafficSlower,
        Action::Filter,
        Action::SortNext,
        Action::SortPrevious,
        Action::SortReverse,
        Action::Pause,
        Action::HistoryBack,
        Action::HistoryForward,
        Action::NextTheme,
        Action::Help,
        Action::Quit,
        Action::NextPane,
        Action::PreviousPane,
        Action::Up,
        Action::Down,
        Action::PageUp,
        Action::PageDown,
        Action::Top,
        Action::Bottom,
        Action::Open,
        Action::Back,
    ];

    /// The action's name in keymap files.
    pub fn name(self) -> &'static str {
        match self {
            Action::Quit => "quit",
            Action::Help => "help",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Reload => "reload",
            Action::Unload => "unload",
            Action::Load => "load",
            Action::ClearQuarantine => "clear_quarantine",
            Action::Chaos => "chaos",
            Action::ToggleEnabled => "toggle_enabled",
            Action::ToggleHook => "toggle_hook",
            Action::Traffic => "traffic",
            Action::TrafficFaster => "traffic_faster",
            Action::TrafficSlower => "traffic_slower",
            Action::Call => "call",
            Action::Pause => "pause",
            Action::Filter => "filter",
            Action::SortNext => "sort_next",
            Action::SortPrevious => "sort_previous",
            Action::SortReverse => "sort_reverse",
            Action::NextPane => "next_pane",
            Action::PreviousPane => "previous_pane",
            Action::Up => "up",
            Action::Down => "down",
            Action::PageUp => "page_up",
            Action::PageDown => "page_down",
            Action::Top => "top",
            Action::Bottom => "bottom",
            Action::HistoryBack => "history_back",
            Action::HistoryForward => "history_forward",
            Action::Open => "open",
            Action::Back => "back",
            Action::NextTheme => "next_theme",
        }
    }

    /// A few words for the footer.
    pub fn short(self) -> &'static str {
        match self {
            Action::Quit => "quit",
            Action::Help => "help",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Reload => "reload",
            Action::Unload => "unload",
            Action::Load => "load",
            Action::ClearQuarantine => "unquarantine",
            Action::Chaos => "chaos",
            Action::ToggleEnabled => "enable/disable",
            Action::ToggleHook => "hook on/off",
            Action::Traffic => "traffic",
            Action::TrafficFaster => "traffic ×2",
            Action::TrafficSlower => "traffic ÷2",
            Action::Call => "call",
            Action::Pause => "pause",
            Action::Filter => "filter",
            Action::SortNext => "sort",
            Action::SortPrevious => "sort back",
            Action::SortReverse => "reverse",
            Action::NextPane => "pane",
            Action::PreviousPane => "pane back",
            Action::Up => "up",
            Action::Down => "down",
            Action::PageUp => "page up",
            Action::PageDown => "page down",
            Action::Top => "top",
            Action::Bottom => "bottom",
            Action::HistoryBack => "older",
            Action::HistoryForward => "newer",
            Action::Open => "details",
            Action::Back => "back",
            Action::NextTheme => "theme",
        }
    }

    /// What it does, for the `?` overlay.
    pub fn description(self) -> &'static str {
        match self {
            Action::Quit => "quit (stops every plugin gracefully)",
            Action::Help => "show or hide this help",
            Action::Start => "start the selected plugin (its dependencies first)",
            Action::Stop => "stop the selected plugin",
            Action::Reload => "reload: verify again, swap in when healthy (asks)",
            Action::Unload => "unload: stop, drop the verified library (asks)",
            Action::Load => "load (verify) a discovered bundle",
            Action::ClearQuarantine => "clear the quarantine of the selected plugin",
            Action::Chaos => "chaos menu: make one misbehaving plugin misbehave",
            Action::ToggleEnabled => "enable or disable the selected plugin (persisted)",
            Action::ToggleHook => "enable or disable the selected hook (detail view)",
            Action::Traffic => "traffic generator on/off",
            Action::TrafficFaster => "traffic generator: twice the rate",
            Action::TrafficSlower => "traffic generator: half the rate",
            Action::Call => "call a hook of the selected plugin with a payload",
            Action::Pause => "pause the display; older/newer step through history",
            Action::Filter => "filter the focused list (name, state, kind, text)",
            Action::SortNext => "sort by the next column",
            Action::SortPrevious => "sort by the previous column",
            Action::SortReverse => "reverse the sort order",
            Action::NextPane => "focus the next pane",
            Action::PreviousPane => "focus the previous pane",
            Action::Up => "move up",
            Action::Down => "move down",
            Action::PageUp => "page up",
            Action::PageDown => "page down",
            Action::Top => "go to the first row",
            Action::Bottom => "go to the last row",
            Action::HistoryBack => "while paused: an older snapshot",
            Action::HistoryForward => "while paused: a newer snapshot",
            Action::Open => "details (there: the row in full)",
            Action::Back => "back, close, cancel",
            Action::NextTheme => "switch to the next theme",
        }
    }

    pub fn group(self) -> ActionGroup {
        match self {
            Action::Start
            | Action::Stop
            | Action::Reload
            | Action::Unload
            | Action::Load
            | Action::ClearQuarantine
            | Action::Chaos
            | Action::ToggleEnabled
            | Action::ToggleHook
            | Action::Call
            | Action::Traffic
            | Action::TrafficFaster
            | Action::TrafficSlower => ActionGroup::Plugin,
            Action::Filter
            | Action::SortNext
            | Action::SortPrevious
            | Action::SortReverse
            | Action::Pause
            | Action::HistoryBack
            | Action::HistoryForward
            | Action::NextTheme
            | Action::Help
            | Action::Quit => ActionGroup::View,
            Action::NextPane
            | Action::PreviousPane
            | Action::Up
            | Action::Down
            | Action::PageUp
            | Action::PageDown
            | Action::Top
            | Action::Bottom
            | Action::Open
            | Action::Back => ActionGroup::Navigation,
        }
    }

    fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.name() == name)
    }
}

/// One key with its modifiers, as written in keymap files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    code: KeyCode,
    modifiers: KeyModifiers,
}

impl Key {
    /// The key as crossterm reports it, normalised: Shift is part of the character
    /// (`G`, `?`) and of back-tab, not a separate modifier.
    pub fn from_event(event: &KeyEvent) -> Key {
        let mut modifiers =
            event.modifiers & (KeyModifiers::CONTROL | KeyModifiers::ALT | KeyModifiers::SHIFT);
        if matches!(event.code, KeyCode::Char(_) | KeyCode::BackTab) {
            modifiers.remove(KeyModifiers::SHIFT);
        }
        Key {
            code: event.code,
            modifiers,
        }
    }

    /// Parses `s`, `G`, `?`, `enter`, `ctrl-c`, `alt-x`, `shift-tab`, `f1`.
    pub fn parse(text: &str) -> Option<Key> {
        let mut modifiers = KeyModifiers::NONE;
        let mut rest = text;
        // A lone "-" is the minus key, not a separator.
        while let Some((prefix, tail)) = rest.split_once('-').filter(|(_, tail)| !tail.is_empty()) {
            match prefix.to_ascii_lowercase().as_str() {
                "ctrl" | "control" => modifiers |= KeyModifiers::CONTROL,
                "alt" | "meta" => modifiers |= KeyModifiers::ALT,
                "shift" => modifiers |= KeyModifiers::SHIFT,
                _ => return None,
            }
            rest = tail;
        }
        let mut chars = rest.chars();
        let code = match (chars.next(), chars.next()) {
            (Some(only), None) => KeyCode::Char(only),
            _ => match rest.to_ascii_lowercase().as_str() {
                "enter" | "return" => KeyCode::Enter,
                "esc" | "escape" => KeyCode::Esc,
                "tab" => KeyCode::Tab,
                "backtab" => KeyCode::BackTab,
                "space" => KeyCode::Char(' '),
                "up" => KeyCode::Up,
                "down" => KeyCode::Down,
                "left" => KeyCode::Left,
                "right" => KeyCode::Right,
                "pageup" | "pgup" => KeyCode::PageUp,
                "pagedown" | "pgdn" => KeyCode::PageDown,
                "home" => KeyCode::Home,
                "end" => KeyCode::End,
                "delete" | "del" => KeyCode::Delete,
                "backspace" => KeyCode::Backspace,
                "insert" => KeyCode::Insert,
                function => {
                    let number: u8 = function.strip_prefix('f')?.parse().ok()?;
                    if !(1..=12).contains(&number) {
                        return None;
                    }
                    KeyCode::F(number)
                }
            },
        };
        // shift-tab is back-tab; Shift on a character is the character itself.
        let code = match code {
            KeyCode::Tab if modifiers.contains(KeyModifiers::SHIFT) => KeyCode::BackTab,
            other => other,
        };
        if matches!(code, KeyCode::Char(_) | KeyCode::BackTab) {
            modifiers.remove(KeyModifiers::SHIFT);
        }
        Some(Key { code, modifiers })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.modifiers.contains(KeyModifiers::CONTROL) {
            f.write_str("ctrl-")?;
        }
        if self.modifiers.contains(KeyModifiers::ALT) {
            f.write_str("alt-")?;
        }
        if self.modifiers.contains(KeyModifiers::SHIFT) {
            f.write_str("shift-")?;
        }
        match self.code {
            KeyCode::Char(' ') => f.write_str("space"),
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::Enter => f.write_str("enter"),
            KeyCode::Esc => f.write_str("esc"),
            KeyCode::Tab => f.write_str("tab"),
            KeyCode::BackTab => f.write_str("shift-tab"),
            KeyCode::Up => f.write_str("↑"),
            KeyCode::Down => f.write_str("↓"),
            KeyCode::Left => f.write_str("←"),
            KeyCode::Right => f.write_str("→"),
            KeyCode::PageUp => f.write_str("pgup"),
            KeyCode::PageDown => f.write_str("pgdn"),
            KeyCode::Home => f.write_str("home"),
            KeyCode::End => f.write_str("end"),
            KeyCode::Delete => f.write_str("del"),
            KeyCode::Backspace => f.write_str("backspace"),
            KeyCode::Insert => f.write_str("insert"),
            KeyCode::F(number) => write!(f, "f{number}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A keymap file that could not be used: which file, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {key}: expected {expected}, found {found}", file.display())]
pub struct KeymapError {
    pub file: PathBuf,
    pub key: String,
    pub expected: String,
    pub found: String,
}

/// Actions and their keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keymap {
    bindings: BTreeMap<Action, Vec<Key>>,
}

const KEY_EXPECTATION: &str =
    "a key such as \"s\", \"G\", \"enter\", \"pagedown\", \"f1\" or \"ctrl-c\"";

impl Keymap {
    /// The built-in bindings.
    pub fn defaults() -> Keymap {
        let mut keymap = Keymap {
            bindings: BTreeMap::new(),
        };
        keymap
            .overlay(DEFAULT_KEYMAP, Path::new(DEFAULT_KEYMAP_NAME))
            .expect("the built-in keymap is valid (a unit test parses it)");
        keymap
    }

    /// The built-in bindings with `file` laid over them, when it exists.
    pub fn load(file: Option<&Path>) -> Result<Keymap, KeymapError> {
        let mut keymap = Keymap::defaults();
        if let Some(file) = file {
            match std::fs::read_to_string(file) {
                Ok(text) => keymap.overlay(&text, file)?,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(KeymapError {
                        file: file.to_owned(),
                        key: "(file)".to_owned(),
                        expected: "a readable TOML file".to_owned(),
                        found: err.to_string(),
                    });
                }
            }
        }
        Ok(keymap)
    }

    /// `$XDG_CONFIG_HOME/plugboard/keymap.toml` (else `~/.config/plugboard/keymap.toml`).
    pub fn user_file() -> Option<PathBuf> {
        super::config_dir().map(|dir| dir.join("keymap.toml"))
    }

    /// Replaces the keys of every action `text` names; checks that no key does two things.
    pub fn overlay(&mut self, text: &str, file: &Path) -> Result<(), KeymapError> {
        let error = |key: &str, expected: &str, found: String| KeymapError {
            file: file.to_owned(),
            key: key.to_owned(),
            expected: expected.to_owned(),
            found,
        };
        let table: toml::Table = toml::from_str(text).map_err(|err| {
            error(
                "(syntax)",
                "TOML: action = [\"key\", …]",
                err.message().to_owned()
                    + &err
                        .span()
                        .map(|span| format!(" at line {}", line_of(text, span.start)))
                        .unwrap_or_default(),
            )
        })?;
        for (name, value) in &table {
            let Some(action) = Action::from_name(name) else {
                let known: Vec<&str> = Action::ALL.iter().map(|action| action.name()).collect();
                return Err(error(
                    name,
                    &format!("one of the actions {}", known.join(", ")),
                    format!("unknown action `{name}`"),
                ));
            };
            let texts: Vec<&toml::Value> = match value {
                toml::Value::Array(items) => items.iter().collect(),
                single @ toml::Value::String(_) => vec![single],
                other => {
                    return Err(error(
                        name,
                        "a key or a list of keys",
                        format!("{} {other}", other.type_str()),
                    ));
                }
            };
            let mut keys = Vec::new();
            for item in texts {
                let Some(text) = item.as_str() else {
                    return Err(error(
                        name,
                        KEY_EXPECTATION,
                        format!("{} {item}", item.type_str()),
                    ));
                };
                let key = Key::parse(text)
                    .ok_or_else(|| error(name, KEY_EXPECTATION, format!("{text:?}")))?;
                keys.push(key);
            }
            self.bindings.insert(action, keys);
        }
        self.check_conflicts(file)
    }

    fn check_conflicts(&self, file: &Path) -> Result<(), KeymapError> {
        let mut seen: std::collections::HashMap<Key, Action> = std::collections::HashMap::new();
        for (action, keys) in &self.bindings {
            for key in keys {
                if let Some(other) = seen.insert(*key, *action)
                    && other != *action
                {
                    return Err(KeymapError {
                        file: file.to_owned(),
                        key: action.name().to_owned(),
                        expected: format!(
                            "a key no other action uses (`{key}` is already bound to `{}`)",
                            other.name()
                        ),
                        found: format!("\"{key}\""),
                    });
                }
            }
        }
        Ok(())
    }

    /// What the key does, if anything.
    pub fn action_for(&self, event: &KeyEvent) -> Option<Action> {
        let key = Key::from_event(event);
        self.bindings
            .iter()
            .find(|(_, keys)| keys.contains(&key))
            .map(|(action, _)| *action)
    }

    pub fn keys(&self, action: Action) -> &[Key] {
        self.bindings.get(&action).map_or(&[], Vec::as_slice)
    }

    /// The first key of an action, as shown in the footer ("" when it has none).
    pub fn label(&self, action: Action) -> String {
        self.keys(action)
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Every key of an action, as shown in the help overlay.
    pub fn labels(&self, action: Action) -> String {
        let keys: Vec<String> = self.keys(action).iter().map(ToString::to_string).collect();
        keys.join(" ")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    /// README's key table is the default keymap, row for row: a key remapped in
    /// `default_keymap.toml` or a new action fails here until README says so.
    #[test]
    fn the_readme_key_table_is_the_default_keymap() {
        let readme = include_str!("../../README.md");
        let keymap = Keymap::defaults();
        let rows: Vec<String> = Action::ALL
            .iter()
            .map(|action| {
                let keys: Vec<String> = keymap
                    .keys(*action)
                    .iter()
                    .map(|key| format!("`{key}`"))
                    .collect();
                format!("| {} | {} |", keys.join(" "), action.description())
            })
            .collect();
        let missing: Vec<&String> = rows.iter().filter(|row| !readme.contains(*row)).collect();
        assert!(
            missing.is_empty(),
            "README's key table lacks these rows:\n{}",
            missing
                .iter()
                .map(|row| row.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        let table_rows = readme
            .lines()
            .skip_while(|line| *line != "| keys | action |")
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .count();
        assert_eq!(table_rows, Action::ALL.len(), "one row per action");
    }

    #[test]
    fn the_default_keymap_parses_and_binds_every_action() {
        let mut keymap = Keymap {
            bindings: BTreeMap::new(),
        };
        keymap
            .overlay(DEFAULT_KEYMAP, Path::new(DEFAULT_KEYMAP_NAME))
            .unwrap();
        for action in Action::ALL {
            assert!(
                !keymap.keys(action).is_empty(),
                "`{}` has no key in the default keymap",
                action.name()
            );
        }
        assert_eq!(
            keymap.action_for(&press(KeyCode::Char('x'), KeyModifiers::NONE)),
            Some(Action::Stop)
        );
        assert_eq!(
            keymap.action_for(&press(KeyCode::Char('G'), KeyModifiers::SHIFT)),
            Some(Action::Bottom)
        );
        assert_eq!(
            keymap.action_for(&press(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(
            keymap.action_for(&press(KeyCode::BackTab, KeyModifiers::SHIFT)),
            Some(Action::PreviousPane)
        );
    }

    #[test]
    fn a_user_file_overrides_only_the_actions_it_names() {
        let mut keymap = Keymap::defaults();
        keymap
            .overlay(
                "stop = [\"X\", \"ctrl-s\"]\nquit = \"ctrl-q\"\n",
                Path::new("keymap.toml"),
            )
            .unwrap();
        assert_eq!(
            keymap.action_for(&press(KeyCode::Char('X'), KeyModifiers::SHIFT)),
            Some(Action::Stop)
        );
        assert_eq!(
            keymap.action_for(&press(KeyCode::Char('s'), KeyModifiers::CONTROL)),
            Some(Action::Stop)
        );
        assert_eq!(
            keymap.action_for(&press(KeyCode::Char('x'), KeyModifiers::NONE)),
            None,
            "the old key of a remapped action is free"
        );
        assert_eq!(
            keymap.action_for(&press(KeyCode::Char('s'), KeyModifiers::NONE)),
            Some(Action::Start),
            "untouched actions keep their keys"
        );
        assert_eq!(keymap.label(Action::Quit), "ctrl-q");
    }

    #[test]
    fn a_user_file_is_read_from_disk_and_a_missing_one_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("keymap.toml");
        assert_eq!(Keymap::load(Some(&missing)).unwrap(), Keymap::defaults());
        std::fs::write(&missing, "reload = \"R\"\n").unwrap();
        let keymap = Keymap::load(Some(&missing)).unwrap();
        assert_eq!(keymap.label(Action::Reload), "R");
    }

    fn broken(text: &str) -> KeymapError {
        let mut keymap = Keymap::defaults();
        keymap
            .overlay(text, Path::new("/home/op/.config/plugboard/keymap.toml"))
            .unwrap_err()
    }

    #[test]
    fn broken_keymaps_name_the_file_the_key_and_the_expectation() {
        let cases = [
            (
                "stopp = \"x\"\n",
                "keymap.toml: stopp: expected one of the actions",
            ),
            (
                "stop = \"ctrl-\"\n",
                "keymap.toml: stop: expected a key such as",
            ),
            ("stop = \"hyper-x\"\n", "found \"hyper-x\""),
            (
                "stop = 3\n",
                "stop: expected a key or a list of keys, found integer 3",
            ),
            ("stop = [3]\n", "stop: expected a key such as"),
            ("stop = \"f13\"\n", "found \"f13\""),
            (
                "stop = \"s\"\n",
                "a key no other action uses (`s` is already bound to `start`)",
            ),
            ("stop = [\n", "(syntax): expected TOML"),
        ];
        for (text, expected) in cases {
            let message = broken(text).to_string();
            assert!(
                message.contains(expected),
                "{text:?}: {message:?} does not contain {expected:?}"
            );
            assert!(message.starts_with("/home/op/.config/plugboard/keymap.toml: "));
        }
    }

    #[test]
    fn keys_print_the_way_they_are_written() {
        for text in [
            "s", "G", "?", "ctrl-c", "alt-x", "f5", "enter", "space", "-",
        ] {
            assert_eq!(Key::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            Key::parse("shift-tab").unwrap(),
            Key::parse("backtab").unwrap()
        );
    }
}
