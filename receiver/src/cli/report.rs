//! What a command prints when it is done: its report as text, or with `--json` as the one
//! envelope of backup_common::report (schema: docs/json/schema.json). A command whose
//! report says it did not succeed (verify's damage, a restore that is incomplete, a
//! failed drill) prints the report with `ok: false` and its error; a command that failed
//! before it had a report gets an envelope with only the error, printed by `main`
//! ([`print_failure`]). Every report goes through here, so each command prints at most
//! one.

use std::sync::atomic::{AtomicBool, Ordering};

use backup_common::report::{self, Envelope, ErrorBody};
use serde::Serialize;

use super::exit;
use crate::operator::out;

static PRINTED: AtomicBool = AtomicBool::new(false);

/// Whether this process printed a report already.
pub fn printed() -> bool {
    PRINTED.load(Ordering::Relaxed)
}

/// `e` as a JSON report's `error`: the exit code's name and number, and the message.
pub fn error_body(e: &anyhow::Error) -> ErrorBody {
    let code = exit::classify(e);
    ErrorBody {
        kind: code.kind().into(),
        exit_code: code.code(),
        message: backup_common::error_chain(e.as_ref()),
    }
}

/// The error envelope of `command`, which failed with `e` before it printed a report.
pub fn print_failure(command: &str, e: &anyhow::Error) {
    let _ = out::print(&report::to_text(&report::failure(command, error_body(e))));
}

/// One command's way of reporting: JSON or text.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    pub command: &'static str,
    pub json: bool,
}

impl Reporter {
    pub fn new(command: &'static str, json: bool) -> Self {
        Reporter { command, json }
    }

    fn print<T: Serialize>(
        &self,
        snapshot_id: Option<&str>,
        body: &T,
        error: Option<ErrorBody>,
        text: impl FnOnce() -> String,
    ) -> std::io::Result<()> {
        PRINTED.store(true, Ordering::Relaxed);
        if self.json {
            out::print(&report::to_text(&Envelope {
                command: self.command,
                ok: error.is_none(),
                snapshot_id,
                error,
                body,
            }))
        } else {
            out::print(&text())
        }
    }

    /// Prints the report of a command that did what it was asked.
    pub fn ok<T: Serialize>(
        &self,
        snapshot_id: Option<&str>,
        body: &T,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        Ok(self.print(snapshot_id, body, None, text)?)
    }

    /// Prints the report of a command that did not succeed, and returns its error (the
    /// exit code follows from it).
    pub fn failed<T: Serialize>(
        &self,
        snapshot_id: Option<&str>,
        body: &T,
        text: impl FnOnce() -> String,
        error: anyhow::Error,
    ) -> anyhow::Error {
        if let Err(e) = self.print(snapshot_id, body, Some(error_body(&error)), text) {
            return anyhow::Error::from(e).context(error.to_string());
        }
        error
    }

    /// [`Reporter::ok`] or [`Reporter::failed`], by `error`.
    pub fn finish<T: Serialize>(
        &self,
        snapshot_id: Option<&str>,
        body: &T,
        text: impl FnOnce() -> String,
        error: Option<anyhow::Error>,
    ) -> anyhow::Result<()> {
        match error {
            None => self.ok(snapshot_id, body, text),
            Some(e) => Err(self.failed(snapshot_id, body, text, e)),
        }
    }
}
