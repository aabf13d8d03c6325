//! The receiver's clock: the only clock snapshot ids, per-day limits and retention use.
//! Tests inject a fake one; the binary accepts `BACKUP_RECEIVER_FAKE_CLOCK_FILE` (an
//! RFC 3339 time read on every tick) so end-to-end tests can simulate months. That variable
//! is set by whoever starts the receiver on the NAS, never by the sender.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};

pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub const FAKE_CLOCK_ENV: &str = "BACKUP_RECEIVER_FAKE_CLOCK_FILE";

pub fn system() -> Clock {
    Arc::new(Utc::now)
}

/// The system clock, or the fake clock file named by [`FAKE_CLOCK_ENV`].
pub fn from_env() -> Clock {
    match std::env::var_os(FAKE_CLOCK_ENV) {
        None => system(),
        Some(path) => {
            let path = PathBuf::from(path);
            tracing::warn!(path = %path.display(), "using a fake clock from a file (tests only)");
            Arc::new(move || {
                std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(Utc::now)
            })
        }
    }
}
