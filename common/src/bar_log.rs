//! Log lines and a progress bar on one terminal: while a bar is drawn, every log line is
//! written through [`indicatif::ProgressBar::suspend`], which clears the bar, writes the
//! line and draws the bar again below it, so a log line never lands on top of the bar.
//! One process-wide slot holds the bar that is drawn now ([`show`], [`hide`]); the
//! tracing writer ([`StderrThroughBar`]) looks there for every event.

use std::io::{self, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;

use std::sync::atomic::{AtomicU64, Ordering};

static CURRENT: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Makes `bar` the one log lines go around (the newest bar wins); the token is for
/// [`hide`].
pub fn show(bar: &ProgressBar) -> u64 {
    let token = NEXT.fetch_add(1, Ordering::Relaxed);
    if !bar.is_hidden() {
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some((token, bar.clone()));
    }
    token
}

/// Log lines go straight to stderr again, if the bar [`show`] gave `token` for is still
/// the current one.
pub fn hide(token: u64) {
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if current.as_ref().is_some_and(|(t, _)| *t == token) {
        *current = None;
    }
}

/// Log lines go straight to stderr again, whichever bar was current.
pub fn hide_all() {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Writes `bytes` to stderr, around the current bar if there is one. A closed or
/// failing stderr is ignored: a message nobody can read must not stop a restore.
pub fn write_stderr(bytes: &[u8]) {
    let bar = CURRENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|(_, b)| b.clone());
    let write = || {
        let mut err = io::stderr().lock();
        let _ = err.write_all(bytes);
        let _ = err.flush();
    };
    match bar {
        Some(b) => b.suspend(write),
        None => write(),
    }
}

/// A `tracing_subscriber` writer (`.with_writer(StderrThroughBar)`): each event is
/// collected whole and written by [`write_stderr`] when the event is done.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrThroughBar;

/// One event's text on its way to stderr.
#[derive(Debug, Default)]
pub struct EventWriter(Vec<u8>);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            write_stderr(&self.0);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrThroughBar {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter::default()
    }
}
