//! The operator's listing and verdict commands (snapshots, ack, reject).

use std::path::PathBuf;

use backup_common::term::escape;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::args::RepoArgs;
use super::report::Reporter;
use crate::clock;
use crate::monitoring::audit::{self, AuditLog};
use crate::monitoring::guard;
use crate::operator::snapshots::{self, SnapshotRow};
use crate::store::repository::{RepoError, Repository};
use crate::store::verdicts;

/// snapshots' JSON report.
#[derive(Serialize)]
struct List {
    snapshots: Vec<SnapshotRow>,
}

pub fn list(target: &RepoArgs, json: bool) -> anyhow::Result<()> {
    let (repo, tz) = target.open_with_zone()?;
    let mut rows: Vec<SnapshotRow> = Vec::new();
    repo.try_for_each_manifest(|m| {
        rows.push(SnapshotRow::from(&m).with_verdicts(&repo)?);
        Ok::<_, RepoError>(true)
    })?;
    let list = List { snapshots: rows };
    Reporter::new("snapshots", json).ok(None, &list, || {
        if list.snapshots.is_empty() {
            "no snapshots yet\n".into()
        } else {
            snapshots::table(&list.snapshots, tz)
        }
    })
}

/// ack's and reject's JSON report: the verdict as it was written.
#[derive(Serialize)]
struct Verdict<'a> {
    #[serde(serialize_with = "clock::json_time")]
    time: DateTime<Utc>,
    operator: &'a str,
    note: Option<&'a str>,
    /// The verdict's file.
    path: PathBuf,
}

pub fn ack(
    snapshot: &str,
    target: &RepoArgs,
    note: Option<&str>,
    operator: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let repo = target.open_maintainer()?;
    let now = clock::from_env()();
    let ack = guard::acknowledge(&repo, snapshot, &operator_name(operator), note, now)?;
    audit_verdict(&repo, "ack", &ack, now);
    let path = guard::ack_path(&repo, &ack.snapshot);
    let body = verdict(&ack, path.clone());
    Reporter::new("ack", json).ok(Some(&ack.snapshot), &body, || {
        format!(
            "acknowledged suspect snapshot {} ({})\n",
            escape(&ack.snapshot),
            path.display()
        )
    })
}

pub fn reject(
    snapshot: &str,
    target: &RepoArgs,
    note: Option<&str>,
    operator: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let repo = target.open_maintainer()?;
    let now = clock::from_env()();
    let r = verdicts::reject(&repo, snapshot, &operator_name(operator), note, now)?;
    audit_verdict(&repo, "reject", &r, now);
    let path = verdicts::reject_path(&repo, &r.snapshot);
    let body = verdict(&r, path.clone());
    Reporter::new("reject", json).ok(Some(&r.snapshot), &body, || {
        format!(
            "rejected snapshot {} ({}); it stays on disk for forensics until retention\n",
            escape(&r.snapshot),
            path.display()
        )
    })
}

fn verdict(v: &verdicts::Ack, path: PathBuf) -> Verdict<'_> {
    Verdict {
        time: v.time,
        operator: &v.operator,
        note: v.note.as_deref(),
        path,
    }
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
