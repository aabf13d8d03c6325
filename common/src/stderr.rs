//! Lines for the operator on stderr that never panic: `eprintln!` panics when stderr is
//! closed (`restore … 2>&1 | head -1` closes it once `head` has its line), which turned a
//! finished restore into exit 101. A message nobody can read any more is dropped; the
//! command's outcome and exit code stay what they were.

/// Writes `text` and a newline to stderr, ignoring a closed or failing stderr; around a
/// progress bar while one is drawn (crate::bar_log), never onto it.
pub fn line(text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    crate::bar_log::write_stderr(&bytes);
}

/// `eprintln!` that never panics: formats its arguments and writes them with [`line`].
#[macro_export]
macro_rules! eprintln_quiet {
    ($($arg:tt)*) => {
        $crate::stderr::line(&format!($($arg)*))
    };
}
