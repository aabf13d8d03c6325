//! Lines for the operator on stderr that never panic: `eprintln!` panics when stderr is
//! closed (`restore … 2>&1 | head -1` closes it once `head` has its line), which turned a
//! finished restore into exit 101. A message nobody can read any more is dropped; the
//! command's outcome and exit code stay what they were.

use std::io::Write;

/// Writes `text` and a newline to stderr, ignoring a closed or failing stderr.
pub fn line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.write_all(b"\n");
}

/// `eprintln!` that never panics: formats its arguments and writes them with [`line`].
#[macro_export]
macro_rules! eprintln_quiet {
    ($($arg:tt)*) => {
        $crate::stderr::line(&format!($($arg)*))
    };
}
