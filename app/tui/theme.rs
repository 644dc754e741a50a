//! Colour themes: TOML files in the repository's `themes/` (built into the binary) and in
//! the user's `$XDG_CONFIG_HOME/plugboard/themes/`, which replace built-ins of the same
//! name. With `NO_COLOR` set every colour is dropped and meaning is carried by bold,
//! reverse video and the state symbols alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ratatui::style::{Color, Modifier, Style};

/// The themes shipped with Plugboard: (name, file contents).
pub const BUILT_IN: [(&str, &str); 4] = [
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
    (
        "solarized-dark",
        include_str!("../../themes/solarized-dark.toml"),
    ),
];

pub const DEFAULT_THEME: &str = "dark";

/// What a colour is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Background,
    Text,
    Muted,
    Accent,
    Title,
    Border,
    BorderFocused,
    SelectionFg,
    SelectionBg,
    /// Running, healthy, a command that worked.
    Ok,
    /// Starting, degraded, backing off.
    Warn,
    /// Failed, rejected, violations, refusals.
    Error,
    /// Stopped, verified, discovered: fine but not running.
    Idle,
    Info,
}

impl Role {
    pub const ALL: [Role; 14] = [
        Role::Background,
        Role::Text,
        Role::Muted,
        Role::Accent,
        Role::Title,
        Role::Border,
        Role::BorderFocused,
        Role::SelectionFg,
        Role::SelectionBg,
        Role::Ok,
        Role::Warn,
        Role::Error,
        Role::Idle,
        Role::Info,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Background => "background",
            Role::Text => "text",
            Role::Muted => "muted",
            Role::Accent => "accent",
            Role::Title => "title",
            Role::Border => "border",
            Role::BorderFocused => "border_focused",
            Role::SelectionFg => "selection_fg",
            Role::SelectionBg => "selection_bg",
            Role::Ok => "ok",
            Role::Warn => "warn",
            Role::Error => "error",
            Role::Idle => "idle",
            Role::Info => "info",
        }
    }
}

/// A theme file that could not be used: which file, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {key}: expected {expected}, found {found}", file.display())]
pub struct ThemeError {
    pub file: PathBuf,
    pub key: String,
    pub expected: String,
    pub found: String,
}

const COLOR_EXPECTATION: &str = "a colour name (black, red, green, yellow, blue, magenta, cyan, gray, dark_gray, light_red, light_green, light_yellow, light_blue, light_magenta, light_cyan, white, reset), \"#rrggbb\" or an index 0-255";

/// A resolved theme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Theme {
    pub name: String,
    colors: BTreeMap<Role, Color>,
    /// `NO_COLOR`: styles carry modifiers only.
    pub monochrome: bool,
}

/// A parsed theme file: the colours it sets and the theme it starts from.
#[derive(Debug, Clone)]
struct ThemeFile {
    extends: Option<String>,
    colors: BTreeMap<Role, Color>,
    file: PathBuf,
}

fn parse_color(text: &str) -> Option<Color> {
    if let Some(hex) = text.strip_prefix('#') {
        if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let channel = |at: usize| u8::from_str_radix(&hex[at..at + 2], 16).ok();
        return Some(Color::Rgb(channel(0)?, channel(2)?, channel(4)?));
    }
    Some(match text.to_ascii_lowercase().replace('-', "_").as_str() {
        "reset" | "default" => Color::Reset,
        "black" => Color::Black,
        "red" => Color::Red,
        "green" => Color::Green,
        "yellow" => Color::Yellow,
        "blue" => Color::Blue,
        "magenta" => Color::Magenta,
        "cyan" => Color::Cyan,
        "gray" | "grey" => Color::Gray,
        "dark_gray" | "dark_grey" => Color::DarkGray,
        "light_red" => Color::LightRed,
        "light_green" => Color::LightGreen,
        "light_yellow" => Color::LightYellow,
        "light_blue" => Color::LightBlue,
        "light_magenta" => Color::LightMagenta,
        "light_cyan" => Color::LightCyan,
        "white" => Color::White,
        _ => return None,
    })
}

impl ThemeFile {
    fn parse(text: &str, file: &Path) -> Result<ThemeFile, ThemeError> {
        let error = |key: &str, expected: &str, found: String| ThemeError {
            file: file.to_owned(),
            key: key.to_owned(),
            expected: expected.to_owned(),
            found,
        };
        let table: toml::Table = toml::from_str(text).map_err(|err| {
            error(
                "(syntax)",
                "a TOML theme: [colors] role = \"colour\"",
                err.message().to_owned(),
            )
        })?;
        let mut theme = ThemeFile {
            extends: None,
            colors: BTreeMap::new(),
            file: file.to_owned(),
        };
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("extends", toml::Value::String(base)) => theme.extends = Some(base.clone()),
                ("extends", other) => {
                    return Err(error(
                        "extends",
                        "the name of another theme (a string)",
                        format!("{} {other}", other.type_str()),
                    ));
                }
                ("colors", toml::Value::Table(colors)) => {
                    for (role_name, value) in colors {
                        let key = format!("colors.{role_name}");
                        let Some(role) =
                            Role::ALL.into_iter().find(|role| role.name() == role_name)
                        else {
                            let known: Vec<&str> =
                                Role::ALL.iter().map(|role| role.name()).collect();
                            return Err(error(
                                &key,
                                &format!("one of {}", known.join(", ")),
                                format!("unknown colour role `{role_name}`"),
                            ));
                        };
                        let color = match value {
                            toml::Value::String(text) => parse_color(text),
                            toml::Value::Integer(index) => {
                                u8::try_from(*index).ok().map(Color::Indexed)
                            }
                            _ => None,
                        }
                        .ok_or_else(|| error(&key, COLOR_EXPECTATION, value.to_string()))?;
                        theme.colors.insert(role, color);
                    }
                }
                ("colors", other) => {
                    return Err(error(
                        "colors",
                        "a table of role = \"colour\"",
                        format!("{} {other}", other.type_str()),
                    ));
                }
                (other, _) => {
                    return Err(error(
                        other,
                        "only `extends` and `[colors]`",
                        format!("unknown key `{other}`"),
                    ));
                }
            }
        }
        Ok(theme)
    }
}

/// Every theme known: built-ins, replaced or joined by the user's.
#[derive(Debug, Clone)]
pub struct Themes {
    files: BTreeMap<String, ThemeFile>,
    built_in: BTreeMap<String, ThemeFile>,
}

impl Themes {
    /// The built-in themes only.
    pub fn built_in() -> Result<Themes, ThemeError> {
        let mut files = BTreeMap::new();
        for (name, text) in BUILT_IN {
            let file = PathBuf::from(format!("themes/{name}.toml"));
            files.insert(name.to_owned(), ThemeFile::parse(text, &file)?);
        }
        Ok(Themes {
            built_in: files.clone(),
            files,
        })
    }

    /// Built-ins plus every `*.toml` in `dir` (a user theme replaces a built-in by name).
    pub fn load(dir: Option<&Path>) -> Result<Themes, ThemeError> {
        let mut themes = Themes::built_in()?;
        let Some(dir) = dir else {
            return Ok(themes);
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(themes);
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|err| ThemeError {
                file: path.clone(),
                key: "(file)".to_owned(),
                expected: "a readable TOML file".to_owned(),
                found: err.to_string(),
            })?;
            let name = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
            themes.files.insert(name, ThemeFile::parse(&text, &path)?);
        }
        // Resolve each now, so a bad `extends` is reported at start, naming its file.
        for name in themes.names() {
            themes.resolve(&name, false)?;
        }
        Ok(themes)
    }

    /// `$XDG_CONFIG_HOME/plugboard/themes` (else `~/.config/plugboard/themes`).
    pub fn user_dir() -> Option<PathBuf> {
        super::config_dir().map(|dir| dir.join("themes"))
    }

    pub fn names(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    /// The named theme, each colour it leaves out taken from the theme it extends (by
    /// default `dark`).
    pub fn resolve(&self, name: &str, monochrome: bool) -> Result<Theme, ThemeError> {
        let mut chain: Vec<&ThemeFile> = Vec::new();
        // (theme name, whether to take the built-in of that name rather than the user's)
        let mut next = Some((name.to_owned(), false));
        while let Some((current, built_in)) = next {
            let source = if built_in {
                &self.built_in
            } else {
                &self.files
            };
            let Some(file) = source.get(&current) else {
                let (file, key) = chain.last().map_or_else(
                    || (PathBuf::from("--theme"), "(name)".to_owned()),
                    |last| (last.file.clone(), "extends".to_owned()),
                );
                return Err(ThemeError {
                    file,
                    key,
                    expected: format!("one of the themes {}", self.names().join(", ")),
                    found: format!("{current:?}"),
                });
            };
            if chain.iter().any(|seen| std::ptr::eq(*seen, file)) {
                return Err(ThemeError {
                    file: file.file.clone(),
                    key: "extends".to_owned(),
                    expected: "a chain of themes without a cycle".to_owned(),
                    found: format!("{current:?} again"),
                });
            }
            chain.push(file);
            let complete = file.colors.len() == Role::ALL.len();
            next = match &file.extends {
                Some(base) => Some((base.clone(), false)),
                None if complete || built_in => None,
                // A partial user theme over a built-in of its name starts from that
                // built-in; any other starts from the default.
                None if self.built_in.contains_key(&current) => Some((current.clone(), true)),
                None => Some((DEFAULT_THEME.to_owned(), true)),
            };
        }
        let mut colors = BTreeMap::new();
        for file in chain.iter().rev() {
            colors.extend(file.colors.iter().map(|(role, color)| (*role, *color)));
        }
        if let Some(missing) = Role::ALL
            .into_iter()
            .find(|role| !colors.contains_key(role))
        {
            return Err(ThemeError {
                file: chain[0].file.clone(),
                key: format!("colors.{}", missing.name()),
                expected: COLOR_EXPECTATION.to_owned(),
                found: "nothing".to_owned(),
            });
        }
        Ok(Theme {
            name: name.to_owned(),
            colors,
            monochrome,
        })
    }

    /// The theme after `current`, in name order (wrapping).
    pub fn next_after(&self, current: &str) -> String {
        let names = self.names();
        let at = names.iter().position(|name| name == current).unwrap_or(0);
        names[(at + 1) % names.len()].clone()
    }
}

/// Whether `NO_COLOR` asks for no colour (set and not empty, per no-color.org).
pub fn no_color_requested() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty())
}

impl Theme {
    /// The built-in default theme.
    #[cfg(test)]
    pub fn default_theme() -> Theme {
        Themes::built_in()
            .and_then(|themes| themes.resolve(DEFAULT_THEME, false))
            .expect("the built-in themes are valid (a unit test parses them)")
    }

    pub fn color(&self, role: Role) -> Color {
        if self.monochrome {
            return Color::Reset;
        }
        self.colors.get(&role).copied().unwrap_or(Color::Reset)
    }

    fn fg(&self, role: Role) -> Style {
        Style::new().fg(self.color(role))
    }

    /// The whole screen's base style.
    pub fn base(&self) -> Style {
        Style::new()
            .fg(self.color(Role::Text))
            .bg(self.color(Role::Background))
    }

    pub fn text(&self) -> Style {
        self.fg(Role::Text)
    }

    pub fn muted(&self) -> Style {
        if self.monochrome {
            Style::new().add_modifier(Modifier::DIM)
        } else {
            self.fg(Role::Muted)
        }
    }

    pub fn accent(&self) -> Style {
        self.fg(Role::Accent)
    }

    pub fn title(&self) -> Style {
        self.fg(Role::Title).add_modifier(Modifier::BOLD)
    }

    pub fn border(&self, focused: bool) -> Style {
        if focused {
            self.fg(Role::BorderFocused).add_modifier(Modifier::BOLD)
        } else {
            self.fg(Role::Border)
        }
    }

    /// The selected row: reverse video without colour, so it shows everywhere.
    pub fn selection(&self) -> Style {
        if self.monochrome {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
                .fg(self.color(Role::SelectionFg))
                .bg(self.color(Role::SelectionBg))
                .add_modifier(Modifier::BOLD)
        }
    }

    pub fn ok(&self) -> Style {
        self.fg(Role::Ok)
    }

    pub fn warn(&self) -> Style {
        self.fg(Role::Warn).add_modifier(Modifier::BOLD)
    }

    pub fn error(&self) -> Style {
        self.fg(Role::Error).add_modifier(Modifier::BOLD)
    }

    pub fn idle(&self) -> Style {
        self.fg(Role::Idle)
    }

    pub fn info(&self) -> Style {
        self.fg(Role::Info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_theme_parses_and_sets_every_colour() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("themes");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut built_in: Vec<String> = BUILT_IN
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        built_in.sort();
        assert_eq!(
            on_disk, built_in,
            "every file in themes/ is built in, and only those"
        );
        assert!(built_in.len() >= 4);
        for (name, text) in BUILT_IN {
            let file = ThemeFile::parse(text, Path::new(name)).unwrap();
            assert_eq!(file.extends, None, "{name}: a built-in stands alone");
            for role in Role::ALL {
                assert!(
                    file.colors.contains_key(&role),
                    "themes/{name}.toml does not set colors.{}",
                    role.name()
                );
            }
        }
        assert_eq!(Theme::default_theme().name, "dark");
    }

    fn broken(text: &str) -> String {
        ThemeFile::parse(text, Path::new("/cfg/plugboard/themes/mine.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn broken_themes_name_the_file_the_key_and_the_expectation() {
        let cases = [
            (
                "[colors]\nok = \"gren\"\n",
                "mine.toml: colors.ok: expected a colour name",
                "found \"gren\"",
            ),
            (
                "[colors]\nok = \"#12345\"\n",
                "colors.ok: expected a colour name",
                "found \"#12345\"",
            ),
            ("[colors]\nok = 300\n", "colors.ok: expected", "found 300"),
            (
                "[colors]\nokay = \"red\"\n",
                "colors.okay: expected one of background, text",
                "unknown colour role `okay`",
            ),
            (
                "colours = {}\n",
                "colours: expected only `extends` and `[colors]`",
                "unknown key `colours`",
            ),
            (
                "colors = 1\n",
                "colors: expected a table",
                "found integer 1",
            ),
            (
                "extends = 1\n",
                "extends: expected the name of another theme",
                "integer 1",
            ),
            ("[colors\n", "(syntax): expected a TOML theme", ""),
        ];
        for (text, expected, found) in cases {
            let message = broken(text);
            assert!(
                message.starts_with("/cfg/plugboard/themes/mine.toml: "),
                "{message}"
            );
            assert!(
                message.contains(expected),
                "{text:?}: {message:?} lacks {expected:?}"
            );
            assert!(
                message.contains(found),
                "{text:?}: {message:?} lacks {found:?}"
            );
        }
    }

    #[test]
    fn user_themes_replace_built_ins_by_name_and_inherit_what_they_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dark.toml"), "[colors]\nok = \"#00ff00\"\n").unwrap();
        std::fs::write(
            dir.path().join("mine.toml"),
            "extends = \"light\"\n[colors]\nerror = 196\n",
        )
        .unwrap();
        let themes = Themes::load(Some(dir.path())).unwrap();
        let dark = themes.resolve("dark", false).unwrap();
        assert_eq!(dark.color(Role::Ok), Color::Rgb(0, 255, 0));
        let mine = themes.resolve("mine", false).unwrap();
        assert_eq!(mine.color(Role::Error), Color::Indexed(196));
        assert_eq!(mine.color(Role::Text), Color::Black, "from light");
        assert!(themes.names().contains(&"mine".to_owned()));

        std::fs::write(dir.path().join("loop.toml"), "extends = \"loop\"\n").unwrap();
        let err = Themes::load(Some(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("loop.toml: extends: expected a chain of themes without a cycle"),
            "{err}"
        );
        std::fs::write(dir.path().join("loop.toml"), "extends = \"nope\"\n").unwrap();
        let err = Themes::load(Some(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("loop.toml: extends: expected one of the themes"),
            "{err}"
        );
    }

    #[test]
    fn no_color_drops_every_colour_and_keeps_the_modifiers() {
        let themes = Themes::built_in().unwrap();
        let theme = themes.resolve("solarized-dark", true).unwrap();
        for role in Role::ALL {
            assert_eq!(theme.color(role), Color::Reset);
        }
        assert!(theme.selection().add_modifier.contains(Modifier::REVERSED));
        assert!(theme.error().add_modifier.contains(Modifier::BOLD));
    }
}
