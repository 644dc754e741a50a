//! How numbers, durations and times read on screen.

/// Shown where a value does not exist (yet): no samples, no calls.
pub const NONE: &str = "–";

/// `1 violation`, `3 violations`: a count with its noun (plural by `s`).
pub fn count(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// A state's label as words of running text: `BackingOff` → `backing off`.
pub fn state_words(label: &str) -> String {
    let mut words = String::with_capacity(label.len() + 2);
    for (at, letter) in label.char_indices() {
        if at > 0 && letter.is_uppercase() {
            words.push(' ');
        }
        words.extend(letter.to_lowercase());
    }
    words
}

/// `1h02m`, `3m04s`, `12.3s`.
pub fn uptime(ms: u64) -> String {
    let seconds = ms / 1000;
    if seconds >= 3600 {
        format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60)
    } else if seconds >= 60 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{seconds}s")
    }
}

/// A latency in microseconds: `850µs`, `12.4ms`, `1.20s`.
pub fn micros(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        let tenths = us / 100;
        format!("{}.{}ms", tenths / 10, tenths % 10)
    } else {
        let hundredths = us / 10_000;
        format!("{}.{:02}s", hundredths / 100, hundredths % 100)
    }
}

/// `512B`, `3.4KiB`, `64.0MiB`, `1.2GiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count}B");
    }
    let mut value = count;
    let mut unit = 0;
    while value >= 1024 * 1024 && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    let tenths = value * 10 / 1024;
    format!("{}.{}{}", tenths / 10, tenths % 10, UNITS[unit])
}

/// A part of a whole in the whole's unit: `1.5/23.5GiB`.
pub fn bytes_of(part: u64, whole: u64) -> String {
    let whole_text = bytes(whole);
    let unit_at = whole_text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(whole_text.len());
    let (number, unit) = whole_text.split_at(unit_at);
    let divisor: u64 = match unit {
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return format!("{}/{whole_text}", bytes(part)),
    };
    let tenths = part.saturating_mul(10) / divisor;
    format!("{}.{}/{number}{unit}", tenths / 10, tenths % 10)
}

/// Calls per second: `0`, `0.5`, `12`, `1.2k`.
pub fn rate(per_second: f64) -> String {
    if per_second <= 0.0 || !per_second.is_finite() {
        "0".to_owned()
    } else if per_second < 10.0 {
        format!("{per_second:.1}")
    } else if per_second < 1000.0 {
        format!("{per_second:.0}")
    } else {
        format!("{:.1}k", per_second / 1000.0)
    }
}

/// Wall-clock `HH:MM:SS` (UTC) of a Unix time in milliseconds.
pub fn clock(at_ms: u64) -> String {
    let seconds = at_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

/// `HH:MM:SS.mmm` (UTC), for log lines.
pub fn clock_millis(at_ms: u64) -> String {
    format!("{}.{:03}", clock(at_ms), at_ms % 1000)
}

/// How long from `now_ms` until `at_ms`: `in 3.2s`, or `now`.
pub fn until(at_ms: u64, now_ms: u64) -> String {
    match at_ms.checked_sub(now_ms) {
        Some(wait) if wait > 0 => {
            let tenths = wait / 100;
            format!("in {}.{}s", tenths / 10, tenths % 10)
        }
        _ => "now".to_owned(),
    }
}

/// Cuts `text` to at most `width` characters, marking the cut with `…`.
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// Cuts `text` to at most `width` characters from the start, marking the cut with `…`:
/// for paths, whose end tells them apart.
pub fn truncate_start(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut = String::from("…");
    cut.extend(text.chars().skip(count - (width - 1)));
    cut
}

/// A plugin's name in at most `width` characters: a path (a duplicate bundle's name) cut
/// from its start, where its directory's name is; any other from its end.
pub fn truncate_name(name: &str, width: usize) -> String {
    if name.contains('/') {
        truncate_start(name, width)
    } else {
        truncate(name, width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_cut_from_its_start() {
        assert_eq!(truncate_start("/tmp/plugins/hello-dup", 10), "…hello-dup");
        assert_eq!(truncate_start("hello", 10), "hello");
        assert_eq!(truncate("/tmp/plugins/hello-dup", 10), "/tmp/plug…");
        assert_eq!(truncate_name("/tmp/plugins/hello-dup", 10), "…hello-dup");
        assert_eq!(truncate_name("a-long-plugin-name", 10), "a-long-pl…");
    }

    #[test]
    fn values_read_well() {
        assert_eq!(uptime(3_723_000), "1h02m");
        assert_eq!(uptime(184_000), "3m04s");
        assert_eq!(uptime(9_999), "9s");
        assert_eq!(micros(850), "850µs");
        assert_eq!(micros(12_480), "12.4ms");
        assert_eq!(micros(1_200_000), "1.20s");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(64 * 1024 * 1024), "64.0MiB");
        assert_eq!(bytes(3 * 1024 + 400), "3.3KiB");
        assert_eq!(bytes_of(3 << 29, 24 << 30), "1.5/24.0GiB");
        assert_eq!(bytes_of(12 << 20, 32 << 20), "12.0/32.0MiB");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(2.25), "2.2");
        assert_eq!(rate(120.4), "120");
        assert_eq!(clock(3_723_456), "01:02:03");
        assert_eq!(clock_millis(3_723_456), "01:02:03.456");
        assert_eq!(until(5_000, 1_800), "in 3.2s");
        assert_eq!(until(1_000, 1_800), "now");
        assert_eq!(truncate("plugboard", 5), "plug…");
        assert_eq!(truncate("plug", 5), "plug");
        assert_eq!(count(1, "violation"), "1 violation");
        assert_eq!(count(0, "violation"), "0 violations");
        assert_eq!(state_words("BackingOff"), "backing off");
        assert_eq!(state_words("Running"), "running");
    }
}
