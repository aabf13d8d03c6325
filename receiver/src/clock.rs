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

/// A time as text output shows it: in the retention time zone `tz`, with its offset
/// (`2026-01-05 02:30:00 +01:00`), so an operator reads the calendar retention counts
/// and still knows the instant. JSON output uses [`in_json`].
pub fn on_screen(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S %:z")
        .to_string()
}

/// A time as JSON output holds it: RFC 3339 in UTC, whole seconds.
pub fn in_json(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Serde's `serialize_with` for a time in JSON output ([`in_json`]).
pub fn json_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&in_json(*t))
}

/// As [`json_time`], for an optional time (`null` when absent).
pub fn json_time_opt<S: serde::Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&in_json(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn text_shows_the_zone_and_its_offset_json_stays_utc() {
        let winter = Utc.with_ymd_and_hms(2026, 1, 5, 1, 30, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 7, 5, 1, 30, 0).unwrap();
        let berlin = chrono_tz::Europe::Berlin;
        assert_eq!(on_screen(winter, berlin), "2026-01-05 02:30:00 +01:00");
        assert_eq!(on_screen(summer, berlin), "2026-07-05 03:30:00 +02:00");
        assert_eq!(
            on_screen(winter, chrono_tz::UTC),
            "2026-01-05 01:30:00 +00:00"
        );
        assert_eq!(in_json(winter), "2026-01-05T01:30:00Z");
    }
}
