//! Peer-supplied strings in log lines, error messages and audit records: short ones as
//! they are (control characters escaped), long ones as a prefix, their length and a hash,
//! so a megabyte of `source_host` costs a hundred bytes wherever it is reported and can
//! still be recognised (the hash is blake3 of the whole string).

/// Strings up to this many bytes are shown whole.
pub const SHOWN_BYTES: usize = 128;
/// Characters of a longer string shown before its length and hash.
pub const PREFIX_CHARS: usize = 48;

fn summary(s: &str) -> (String, String) {
    let prefix: String = s.chars().take(PREFIX_CHARS).collect();
    let hash = blake3::hash(s.as_bytes()).to_hex();
    let tail = format!("… ({} bytes, blake3 {})", s.len(), &hash.as_str()[..16]);
    (prefix, tail)
}

/// `s`, bounded, for an audit field or a log value: `prod-vps` as it is, a long one as
/// `first 48 chars… (1048576 bytes, blake3 0123456789abcdef)`. Control characters are
/// escaped. At most a few hundred bytes whatever `s` holds.
pub fn bounded(s: &str) -> String {
    if s.len() <= SHOWN_BYTES {
        return s.escape_debug().to_string();
    }
    let (prefix, tail) = summary(s);
    format!("{}{tail}", prefix.escape_debug())
}

/// `s`, bounded and quoted, for an error message: `"short"`, or
/// `"first 48 chars"… (1048576 bytes, blake3 0123456789abcdef)`.
pub fn quoted(s: &str) -> String {
    if s.len() <= SHOWN_BYTES {
        return format!("{s:?}");
    }
    let (prefix, tail) = summary(s);
    format!("{prefix:?}{tail}")
}

/// Peer-supplied strings joined with `,`, each [`bounded`], at most `max` of them, then
/// how many more there were.
pub fn bounded_join(items: &[String], max: usize) -> String {
    let mut shown: Vec<String> = items.iter().take(max).map(|s| bounded(s)).collect();
    if items.len() > max {
        shown.push(format!("… {} more", items.len() - max));
    }
    shown.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_shown_as_they_are() {
        assert_eq!(bounded("prod-vps"), "prod-vps");
        assert_eq!(bounded("a\nb"), "a\\nb");
        assert_eq!(quoted("prod-vps"), "\"prod-vps\"");
    }

    #[test]
    fn long_strings_are_a_prefix_length_and_hash() {
        let long = "x".repeat(1 << 20);
        let hash = blake3::hash(long.as_bytes()).to_hex();
        for b in [bounded(&long), quoted(&long)] {
            assert!(b.len() < 150, "{b}");
            assert!(b.contains(&"x".repeat(PREFIX_CHARS)), "{b}");
            assert!(!b.contains(&"x".repeat(PREFIX_CHARS + 1)), "{b}");
            assert!(b.contains("1048576 bytes"), "{b}");
            assert!(b.contains(&hash.as_str()[..16]), "{b}");
        }
        // Escaping cannot blow a prefix of control characters up beyond a few hundred bytes.
        assert!(bounded(&"\u{1}".repeat(10_000)).len() < 500);
        assert!(quoted(&"\u{1}".repeat(10_000)).len() < 500);
    }

    #[test]
    fn lists_are_cut() {
        let items: Vec<String> = (0..1000).map(|i| format!("san{i}")).collect();
        assert_eq!(bounded_join(&items, 3), "san0,san1,san2,… 997 more");
        assert_eq!(bounded_join(&items[..1], 3), "san0");
    }
}
