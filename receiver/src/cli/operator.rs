//! The operator's listing and verdict commands (snapshots, ack, reject).

use chrono::{DateTime, Utc};

use super::args::RepoArgs;
use crate::clock;
use crate::monitoring::audit::{self, AuditLog};
use crate::monitoring::guard;
use crate::operator::out;
use crate::operator::snapshots::{self, SnapshotRow};
use crate::store::repository::{RepoError, Repository};
use crate::store::verdicts;

pub fn list(target: &RepoArgs, json: bool) -> anyhow::Result<()> {
    let repo = target.open()?;
    let mut rows: Vec<SnapshotRow> = Vec::new();
    repo.try_for_each_manifest(|m| {
        rows.push(SnapshotRow::from(&m).with_verdicts(&repo)?);
        Ok::<_, RepoError>(true)
    })?;
    if json {
        out::print_json(&rows)?;
    } else if rows.is_empty() {
        out::print("no snapshots yet\n")?;
    } else {
        out::print(&snapshots::table(&rows))?;
    }
    Ok(())
}

pub fn ack(
    snapshot: &str,
    target: &RepoArgs,
    note: Option<&str>,
    operator: Option<String>,
) -> anyhow::Result<()> {
    let repo = target.open_maintainer()?;
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
    target: &RepoArgs,
    note: Option<&str>,
    operator: Option<String>,
) -> anyhow::Result<()> {
    let repo = target.open_maintainer()?;
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
    let dir = audit::dir_for(std::path::Path::new(&repo.describe()));
    AuditLog::new(&dir).record(
        now,
        event,
        serde_json::json!({
            "snapshot": v.snapshot,
            "operator": v.operator,
            "note": v.note,
        }),
    );
}
