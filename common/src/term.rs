//! Text that came from a peer or a dump (object keys, table names, the source host, a
//! pg_restore message), made safe to print on an operator's terminal: every character a
//! terminal would interpret (C0 and C1 controls such as ESC, DEL, and the bidirectional
//! overrides that reorder what is shown) is written as a visible escape instead. JSON
//! output needs none of this (serde escapes control characters itself).

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        // Bidirectional embeddings, overrides and isolates ("Trojan Source").
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character written as `\n`, `\t`, `\x1b` or `\u{9b}`.
/// Backslashes stay as they are, so text that is escaped already (a `{:?}` rendering
/// inside an error message) reads the same. Borrows when nothing needs escaping, which
/// is the ordinary case.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// As [`escape`], but line breaks stay line breaks: for multi-line text such as a server
/// log or a pg_restore message, printed as it is meant to be read.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && needs_escape(c)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.split('\n').map(escape).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in [
            "briefe/1923/grete.pdf",
            "fotos/ä ö ü.jpg",
            "public.\"Schlagworte\"",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(t) if t == s));
        }
    }

    #[test]
    fn terminal_controls_become_visible() {
        assert_eq!(escape("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape("x\ny\rz\t"), "x\\ny\\rz\\t");
        assert_eq!(escape("del\x7f"), "del\\x7f");
        assert_eq!(escape("csi\u{9b}31m"), "csi\\u{9b}31m");
        assert_eq!(escape("gpj.\u{202E}exe"), "gpj.\\u{202e}exe");
        assert_eq!(escape("a\\x1b"), "a\\x1b");
        assert!(!escape("\x07\x08\x00").chars().any(|c| c.is_control()));
        assert_eq!(
            escape_lines("one\x1b]0;x\x07\ntwo"),
            "one\\x1b]0;x\\x07\ntwo"
        );
        assert!(matches!(escape_lines("a\nb"), Cow::Borrowed(_)));
    }
}
