//! Append-only audit log (`REPO/audit.log`, JSON lines): sessions, commits, rejections and
//! operator acknowledgements, each with the peer's identity and address. Opened with
//! O_APPEND and synced after each record; never rewritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub struct AuditLog {
    path: PathBuf,
    lock: Mutex<()>,
}

impl AuditLog {
    pub fn new(repo_root: &Path) -> Self {
        AuditLog {
            path: repo_root.join("audit.log"),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record. A failure to audit is logged but does not fail the request:
    /// the data path must not depend on the log's disk space.
    pub fn record(&self, time: DateTime<Utc>, event: &str, fields: Value) {
        let mut line = json!({ "time": time.to_rfc3339(), "event": event });
        if let (Some(obj), Value::Object(extra)) = (line.as_object_mut(), fields) {
            obj.extend(extra);
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| {
                writeln!(f, "{line}")?;
                f.sync_data()
            });
        if let Err(e) = result {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write audit log");
        }
    }
}
