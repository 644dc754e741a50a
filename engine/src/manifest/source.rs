//! Finding keys in the manifest's text, so that messages can name a line and quote a value
//! exactly as the author wrote it.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// Values quoted in messages are cut after this many characters.
const MAX_QUOTED_CHARS: usize = 80;

/// A dotted key such as `hooks.greet.priority` or `capabilities.fs_read[2]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct KeyPath {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub(crate) fn of(keys: &[&str]) -> Self {
        Self {
            segments: keys
                .iter()
                .map(|key| Segment::Key((*key).to_owned()))
                .collect(),
        }
    }

    #[must_use]
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut child = self.clone();
        child.segments.push(Segment::Key(key.to_owned()));
        child
    }

    #[must_use]
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut child = self.clone();
        child.segments.push(Segment::Index(index));
        child
    }

    #[must_use]
    pub(crate) fn parent(&self) -> Self {
        let mut parent = self.clone();
        parent.segments.pop();
        parent
    }

    pub(crate) fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The path serde was at when it failed.
    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as Serde;
        let segments = path
            .iter()
            .map(|segment| match segment {
                Serde::Seq { index } => Segment::Index(*index),
                Serde::Map { key } => Segment::Key(key.clone()),
                Serde::Enum { variant } => Segment::Key(variant.clone()),
                Serde::Unknown => Segment::Key("?".to_owned()),
            })
            .collect();
        Self { segments }
    }

    /// Parses a dotted key as TOML writes it (`hooks."a.b".timeout_ms`).
    pub(crate) fn parse_dotted(dotted: &str) -> Option<Self> {
        let keys = toml_edit::Key::parse(dotted).ok()?;
        Some(Self {
            segments: keys
                .iter()
                .map(|key| Segment::Key(key.get().to_owned()))
                .collect(),
        })
    }

    /// The path with names of map entries kept and indexes replaced by `[]`, for matching
    /// against the schema: `["capabilities", "fs_read", "[]"]`.
    pub(crate) fn shape(&self) -> Vec<&str> {
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Key(key) => key.as_str(),
                Segment::Index(_) => "[]",
            })
            .collect()
    }

    /// How the table at this path is named in messages: `[hooks.greet]` or "the top level".
    pub(crate) fn section(&self) -> String {
        if self.is_root() {
            "the top level".to_owned()
        } else {
            format!("[{self}]")
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if position > 0 {
                        formatter.write_str(".")?;
                    }
                    // Quoted as TOML would need it, so `hooks."a.b"` stays unambiguous.
                    formatter.write_str(&toml_edit::Key::new(key.as_str()).display_repr())?;
                }
                Segment::Index(index) => write!(formatter, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The parsed text with the position of every key and value.
pub(crate) struct SourceMap<'s> {
    source: &'s str,
    document: ImDocument<&'s str>,
}

/// A place in the document: a table entry, an array element or an array-of-tables entry.
#[derive(Clone, Copy)]
enum Node<'d> {
    Item(&'d Item),
    Value(&'d Value),
    Table(&'d Table),
}

impl<'d> Node<'d> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(item) => item.span(),
            Node::Value(value) => value.span(),
            Node::Table(table) => table.span(),
        }
    }

    /// The span of a plain value, not of a table (whose text is a whole section).
    fn value_span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(Item::Value(value)) | Node::Value(value) => value.span(),
            Node::Item(_) | Node::Table(_) => None,
        }
    }

    /// The entry `key` of this table and the span of the key itself.
    fn child(self, key: &str) -> Option<(Node<'d>, Option<Range<usize>>)> {
        let (key, item) = match self {
            Node::Item(item) => item.as_table_like()?.get_key_value(key)?,
            Node::Value(value) => value.as_inline_table()?.get_key_value(key)?,
            Node::Table(table) => table.get_key_value(key)?,
        };
        Some((Node::Item(item), key.span()))
    }

    fn element(self, index: usize) -> Option<Node<'d>> {
        match self {
            Node::Item(Item::ArrayOfTables(tables)) => tables.get(index).map(Node::Table),
            Node::Item(item) => item.as_array()?.get(index).map(Node::Value),
            Node::Value(value) => value.as_array()?.get(index).map(Node::Value),
            Node::Table(_) => None,
        }
    }
}

impl<'s> SourceMap<'s> {
    pub(crate) fn parse(source: &'s str) -> Result<Self, toml_edit::TomlError> {
        let document = ImDocument::parse(source)?;
        Ok(Self { source, document })
    }

    /// Walks to `path`; also returns the span of the last key on the way, for entries (such
    /// as dotted-key tables) that have no span of their own.
    fn find(&self, path: &KeyPath) -> Option<(Node<'_>, Option<Range<usize>>)> {
        let mut node = Node::Table(self.document.as_table());
        let mut key_span = None;
        for segment in &path.segments {
            match segment {
                Segment::Key(key) => (node, key_span) = node.child(key)?,
                Segment::Index(index) => node = node.element(*index)?,
            }
        }
        Some((node, key_span))
    }

    /// The 1-based line of the key or value at `path`, if it is written in the file.
    pub(crate) fn line_of(&self, path: &KeyPath) -> Option<u32> {
        if path.is_root() {
            return None;
        }
        let (node, key_span) = self.find(path)?;
        let span = node.span().or(key_span)?;
        Some(self.line_at(span.start))
    }

    /// The line of `path`, or else of the nearest enclosing table that is written in the
    /// file: where a value that was left at its default would go.
    pub(crate) fn line_near(&self, path: &KeyPath) -> Option<u32> {
        let mut path = path.clone();
        loop {
            if let Some(line) = self.line_of(&path) {
                return Some(line);
            }
            if path.is_root() {
                return None;
            }
            path = path.parent();
        }
    }

    /// The value at `path` as written (shortened), if it is a plain value in the file.
    pub(crate) fn value_text(&self, path: &KeyPath) -> Option<String> {
        let (node, _) = self.find(path)?;
        self.excerpt(node.value_span()?)
    }

    /// The text of `span`, on one line and shortened.
    pub(crate) fn excerpt(&self, span: Range<usize>) -> Option<String> {
        let text = self.source.get(span)?.trim();
        (!text.is_empty()).then(|| shorten(text))
    }

    pub(crate) fn line_at(&self, offset: usize) -> u32 {
        line_and_column(self.source, offset).0
    }
}

/// 1-based line and column (in characters) of a byte offset. Manifests are far smaller than
/// 4 GiB ([`super::MAX_MANIFEST_BYTES`]), so both fit a `u32`; they saturate otherwise.
pub(crate) fn line_and_column(source: &str, offset: usize) -> (u32, u32) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    let to_u32 = |count: usize| u32::try_from(count).unwrap_or(u32::MAX);
    (to_u32(line), to_u32(column))
}

/// A multi-line message on one line, its lines joined with `; `.
pub(crate) fn one_line(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The first line of `text`, cut at [`MAX_QUOTED_CHARS`], with `…` where something was cut.
pub(crate) fn shorten(text: &str) -> String {
    let first_line = text.lines().next().unwrap_or_default().trim_end();
    let mut shortened: String = first_line.chars().take(MAX_QUOTED_CHARS).collect();
    if shortened.len() < text.len() {
        shortened.push('…');
    }
    shortened
}
