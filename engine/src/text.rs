//! Text that comes from a plugin and is kept for display — log lines, error replies,
//! health details, reasons — is bounded where it arrives, so a plugin cannot make the
//! engine keep (and copy into every snapshot and event) megabytes of it.

/// The longest error, detail or reason from a plugin that is kept whole.
pub const DETAIL_MAX: usize = 1024;

/// `text` cut to at most `max` bytes (at a character boundary), with a note of how much
/// was left out.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

/// [`clip`] for an owned string, which is kept as it is when short enough.
pub fn clipped(text: String, max: usize) -> String {
    if text.len() <= max {
        text
    } else {
        clip(&text, max)
    }
}

/// `text` with its control characters written as escapes (`\n`, `\r`, `\t`, `\u{1b}`):
/// one line of a line-based file, whatever a plugin put in it — a newline in a plugin's
/// log message must not start a line that passes for another plugin's.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        if character.is_control() {
            escaped.extend(character.escape_default());
        } else {
            escaped.push(character);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_control_characters_and_keeps_the_rest() {
        assert_eq!(one_line("plain text, é ✓"), "plain text, é ✓");
        assert_eq!(
            one_line("a\n1700000000000 victim stderr forged\r\t\u{1b}[2J"),
            "a\\n1700000000000 victim stderr forged\\r\\t\\u{1b}[2J"
        );
        assert!(!one_line("x\ny\u{85}z").contains(char::is_control));
    }

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_at_a_character_with_a_note() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clipped("exactly10!".to_owned(), 10), "exactly10!");
        assert_eq!(clip("abcdefghij", 4), "abcd… (6 more bytes)");
        // "é" is two bytes: a cut inside it moves back before it.
        assert_eq!(clip("aé", 2), "a… (2 more bytes)");
    }
}
