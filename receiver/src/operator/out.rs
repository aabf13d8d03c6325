//! Standard output for the CLI. A reader that went away (`snapshots --json | head -1`) is
//! not an error of the command: writing to a closed pipe ends the process quietly with
//! exit code 141 (128 + SIGPIPE, what a shell shows for `cat` in the same place), never
//! with a panic or a message. The receiver ignores SIGPIPE (Rust's default), so the pipe
//! shows up as an `EPIPE` write error; [`Stdout`] and [`print`] map it, and
//! [`quiet_broken_pipe`] covers any `println!` left in the binary.

use std::io::{self, Write};

/// Exit code of a command whose stdout was closed by its reader.
pub const BROKEN_PIPE_EXIT: i32 = 141;

fn closed() -> ! {
    std::process::exit(BROKEN_PIPE_EXIT)
}

/// Locked stdout whose broken pipe ends the process quietly (exit 141).
pub struct Stdout(io::StdoutLock<'static>);

impl Stdout {
    pub fn lock() -> Self {
        Stdout(io::stdout().lock())
    }
}

fn check<T>(r: io::Result<T>) -> io::Result<T> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => closed(),
        r => r,
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        check(self.0.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        check(self.0.flush())
    }
}

/// Writes `text` to stdout and flushes; a closed stdout exits 141, another error is
/// returned.
pub fn print(text: &str) -> io::Result<()> {
    let mut out = Stdout::lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// `value` as pretty JSON and a newline, through [`print`].
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(print(&text)?)
}

/// A panic hook that turns `println!`'s "failed printing to stdout: Broken pipe" into
/// the same quiet exit 141; every other panic is reported as before.
pub fn quiet_broken_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            closed();
        }
        previous(info);
    }));
}
