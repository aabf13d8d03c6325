//! The snapshot list an operator reads: one row per snapshot, as a table (times in the
//! retention time zone) or JSON (the `snapshots` field of its report, times in UTC).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use backup_common::manifest::Manifest;
use backup_common::term::escape;

use crate::clock::{self, json_time};
use crate::store::repository::{RepoError, Repository};
use crate::store::verdicts;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SnapshotRow {
    pub snapshot_id: String,
    /// Commit time, receiver clock.
    #[serde(serialize_with = "json_time")]
    pub time: DateTime<Utc>,
    pub dump_bytes: u64,
    pub object_count: u64,
    pub total_bytes: u64,
    pub new_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    /// `good`, `suspect`, `acknowledged` (suspect, then acknowledged) or `rejected`.
    pub status: &'static str,
    /// The receiver checked its content at commit (format 2); format-1 snapshots hold
    /// only the sender's claims.
    pub verified: bool,
    /// A restore drill passed on it.
    pub drilled: bool,
}

impl SnapshotRow {
    /// The row with the operator's and the drill's verdicts from `repo`.
    /// A verdict that cannot be read is an error: the list never shows "good" for a
    /// snapshot whose rejection it could not read.
    pub fn with_verdicts(mut self, repo: &Repository) -> Result<Self, RepoError> {
        let contested = verdicts::is_contested(repo, &self.snapshot_id)?;
        if contested && self.suspect.is_none() {
            self.suspect = Some("contested: another commit of its day was refused".into());
        }
        self.status = if verdicts::is_rejected(repo, &self.snapshot_id)? {
            "rejected"
        } else if self.suspect.is_none() {
            "good"
        } else if verdicts::is_acknowledged(repo, &self.snapshot_id)? {
            "acknowledged"
        } else {
            "suspect"
        };
        self.drilled = verdicts::drill_passed(repo, &self.snapshot_id)?;
        Ok(self)
    }
}

impl From<&Manifest> for SnapshotRow {
    fn from(m: &Manifest) -> Self {
        SnapshotRow {
            snapshot_id: m.id.clone(),
            time: m.time,
            dump_bytes: m.stats.dump_bytes,
            object_count: m.stats.object_count,
            total_bytes: m.total_bytes(),
            new_bytes: m.stats.new_bytes,
            suspect: m.suspect.clone(),
            status: if m.suspect.is_some() {
                "suspect"
            } else {
                "good"
            },
            verified: m.content_verified(),
            drilled: false,
        }
    }
}

fn flags(r: &SnapshotRow) -> String {
    let mut f = Vec::new();
    match (r.status, &r.suspect) {
        ("rejected", _) => f.push("REJECTED".to_string()),
        ("suspect", Some(s)) => f.push(format!("SUSPECT: {}", escape(s))),
        ("acknowledged", Some(s)) => f.push(format!("acknowledged (was suspect: {})", escape(s))),
        _ => {}
    }
    if r.drilled {
        f.push("drill passed".into());
    }
    if !r.verified {
        f.push("unverified (format 1: sender's claims)".into());
    }
    f.join("; ")
}

/// Bytes as a short human figure (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The rows as a table, commit times (receiver clock) in `tz` with their offset.
pub fn table(rows: &[SnapshotRow], tz: Tz) -> String {
    let mut out = format!(
        "{:<22} {:<26} {:>10} {:>8} {:>10} {:>10}  {}\n",
        "ID",
        format!("TIME ({tz})"),
        "DUMP",
        "OBJECTS",
        "TOTAL",
        "NEW",
        "FLAGS"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<22} {:<26} {:>10} {:>8} {:>10} {:>10}  {}\n",
            escape(&r.snapshot_id),
            clock::on_screen(r.time, tz),
            human_bytes(r.dump_bytes),
            r.object_count,
            human_bytes(r.total_bytes),
            human_bytes(r.new_bytes),
            flags(r)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(13 * 1024 * 1024 * 1024), "13.0 GiB");
    }
}
