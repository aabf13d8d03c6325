//! The operator's listing and verdict commands (snapshots, ack, reject).

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::clock;
use crate::monitoring::audit::AuditLog;
use crate::monitoring::guard;
use crate::operator::snapshots::{self, SnapshotRow};
use crate::store::repository::Repository;
use crate::store::verdicts;

pub fn list(repo: &Path, json: bool) -> anyhow::Result<()> {
    let repo = Repository::open(repo)?;
    let mut rows: Vec<SnapshotRow> = Vec::new();
    repo.for_each_manifest(|m| {
        rows.push(SnapshotRow::from(&m).with_verdicts(&repo));
        true
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no snapshots yet");
    } else {
        print!("{}", snapshots::table(&rows));
    }
    Ok(())
}

pub fn ack(
    snapshot: &str,
    repo: &Path,
    note: Option<&str>,
    operator: Option<String>,
) -> anyhow::Result<()> {
    let repo = Repository::open(repo)?;
    let now = clock::from_env()();
    let ack = guard::acknowledge(&repo, snapshot, &operator_name(operator), note, now)?;
    audit_verdict(&repo, "ack", &ack, now);
    println!(
        "acknowledged suspect snapshot {} ({})",
        ack.snapshot,
        guard::ack_path(&repo, &ack.snapshot).display()
    );
    Ok(())
}

pub fn reject(
    snapshot: &str,
    repo: &Path,
    note: Option<&str>,
    operator: Option<String>,
) -> anyhow::Result<()> {
    let repo = Repository::open(repo)?;
    let now = clock::from_env()();
    let r = verdicts::reject(&repo, snapshot, &operator_name(operator), note, now)?;
    audit_verdict(&repo, "reject", &r, now);
    println!(
        "rejected snapshot {} ({}); it stays on disk for forensics until retention",
        r.snapshot,
        verdicts::reject_path(&repo, &r.snapshot).display()
    );
    Ok(())
}

/// Who runs an operator command: `--operator`, else $SUDO_USER, else $USER.
fn operator_name(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("SUDO_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The audit record of an operator's verdict (`ack`, `reject`).
fn audit_verdict(repo: &Repository, event: &str, v: &verdicts::Ack, now: DateTime<Utc>) {
    AuditLog::new(repo.root()).record(
        now,
        event,
        serde_json::json!({
            "snapshot": v.snapshot,
            "operator": v.operator,
            "note": v.note,
        }),
    );
}
