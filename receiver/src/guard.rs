//! The anomaly guard: at commit, a snapshot is compared with the previous good one and
//! marked suspect (in its manifest, before it is published) when objects, object bytes,
//! the dump or a table's rows fell by more than the `[guard]` thresholds. Ten nights of
//! empty snapshots from a hostile sender must not cost a single good one.
//!
//! An operator acknowledges a suspect snapshot with `backup-receiver ack`, which writes
//! `REPO/acks/<snapshot-id>.json` write-once. The contract other modules rely on
//! (retention, the delta base in `Repository::latest_good`):
//!
//! - a snapshot is *suspect* iff its manifest has `suspect: Some(_)` and no ack file exists;
//! - an acknowledged snapshot counts as good (it becomes the next baseline);
//! - retention pins the newest good snapshot older than any unacknowledged suspect one.
//!
//! This module never changes a manifest after it is published and never removes an ack.

use std::path::PathBuf;

use backup_common::config::Guard;
use backup_common::durable::{self, Published};
use backup_common::manifest::Manifest;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repository::{RepoError, Repository};

/// Why `snapshot` is suspect against `previous` (the newest good snapshot), if it is.
/// Several reasons are joined with "; ". The first snapshot is never suspect.
pub fn assess(
    thresholds: &Guard,
    previous: Option<&Manifest>,
    snapshot: &Manifest,
) -> Option<String> {
    let prev = previous?;
    let mut reasons = Vec::new();
    // `now` fell by more than `max` (a fraction) of `before`.
    let fell = |before: u64, now: u64, max: f64| {
        before > 0 && now < before && (before - now) as f64 > before as f64 * max
    };
    let (p, n) = (&prev.stats, &snapshot.stats);
    if fell(
        p.object_count,
        n.object_count,
        thresholds.max_object_count_drop,
    ) {
        reasons.push(format!(
            "object count fell from {} to {} (guard.max_object_count_drop {})",
            p.object_count, n.object_count, thresholds.max_object_count_drop
        ));
    }
    if fell(
        p.object_bytes,
        n.object_bytes,
        thresholds.max_object_bytes_drop,
    ) {
        reasons.push(format!(
            "object bytes fell from {} to {} (guard.max_object_bytes_drop {})",
            p.object_bytes, n.object_bytes, thresholds.max_object_bytes_drop
        ));
    }
    if fell(p.dump_bytes, n.dump_bytes, thresholds.max_dump_shrink) {
        reasons.push(format!(
            "dump shrank from {} to {} bytes (guard.max_dump_shrink {})",
            p.dump_bytes, n.dump_bytes, thresholds.max_dump_shrink
        ));
    }
    if let Some(prev_dump) = &prev.dump {
        let now_rows = snapshot.dump.as_ref().map(|d| &d.row_counts);
        for (table, &before) in &prev_dump.row_counts {
            let now = now_rows.and_then(|r| r.get(table)).copied().unwrap_or(0);
            if fell(before, now, thresholds.max_table_rows_drop) {
                reasons.push(format!(
                    "table {table} fell from {before} to {now} rows (guard.max_table_rows_drop {})",
                    thresholds.max_table_rows_drop
                ));
            }
        }
    }
    if reasons.is_empty() {
        return None;
    }
    Some(format!(
        "against snapshot {}: {}",
        prev.id,
        reasons.join("; ")
    ))
}

/// An operator's acknowledgement of a suspect snapshot (`REPO/acks/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub snapshot: String,
    pub time: DateTime<Utc>,
    pub operator: String,
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("snapshot {0} is not suspect; there is nothing to acknowledge")]
    NotSuspect(String),
    #[error("snapshot {0} was already acknowledged ({1})")]
    AlreadyAcknowledged(String, PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn acks_dir(repo: &Repository) -> PathBuf {
    repo.root().join("acks")
}

pub fn ack_path(repo: &Repository, snapshot_id: &str) -> PathBuf {
    acks_dir(repo).join(format!("{snapshot_id}.json"))
}

/// Whether an operator acknowledged snapshot `snapshot_id` (its ack file exists).
pub fn is_acknowledged(repo: &Repository, snapshot_id: &str) -> bool {
    !snapshot_id.contains(['/', '\\', '\0'])
        && !snapshot_id.starts_with('.')
        && ack_path(repo, snapshot_id).is_file()
}

/// Whether a snapshot counts as suspect: flagged by the guard and not acknowledged.
pub fn is_suspect(repo: &Repository, manifest: &Manifest) -> bool {
    manifest.suspect.is_some() && !is_acknowledged(repo, &manifest.id)
}

/// Acknowledges a suspect snapshot (`name` is an id or `latest`) write-once.
pub fn acknowledge(
    repo: &Repository,
    name: &str,
    operator: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Ack, AckError> {
    let manifest = repo.resolve(name)?;
    if manifest.suspect.is_none() {
        return Err(AckError::NotSuspect(manifest.id));
    }
    let dir = acks_dir(repo);
    std::fs::create_dir_all(&dir).map_err(|source| AckError::Io {
        path: dir.clone(),
        source,
    })?;
    let ack = Ack {
        snapshot: manifest.id.clone(),
        time: now,
        operator: operator.to_string(),
        note: note.map(str::to_string),
    };
    let bytes = serde_json::to_vec_pretty(&ack).expect("ack serializes");
    let name = format!("{}.json", manifest.id);
    match durable::write_once(&repo.tmp_dir(), &dir, &name, &bytes) {
        Ok(Published::Created) => Ok(ack),
        Ok(Published::AlreadyExisted) => Err(AckError::AlreadyAcknowledged(
            manifest.id.clone(),
            ack_path(repo, &manifest.id),
        )),
        Err(source) => Err(AckError::Io { path: dir, source }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use backup_common::chunk::ChunkId;
    use backup_common::manifest::{DumpEntry, SnapshotStats, FORMAT_VERSION};

    use super::*;

    fn snap(id: &str, objects: u64, bytes: u64, dump: u64, rows: &[(&str, u64)]) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            id: id.into(),
            time: Utc::now(),
            sender_time: None,
            source_host: "vps".into(),
            peer_identity: "prod-vps".into(),
            bucket: "b".into(),
            dump: Some(DumpEntry {
                file_name: "d.dump".into(),
                database: "archiv".into(),
                size: dump,
                hash: ChunkId([0; 32]),
                chunks: vec![],
                row_counts: rows
                    .iter()
                    .map(|(t, n)| (t.to_string(), *n))
                    .collect::<BTreeMap<_, _>>(),
            }),
            objects: vec![],
            stats: SnapshotStats {
                object_count: objects,
                object_bytes: bytes,
                dump_bytes: dump,
                new_chunks: 0,
                new_bytes: 0,
            },
            suspect: None,
        }
    }

    #[test]
    fn ordinary_growth_and_small_drops_pass() {
        let g = Guard::default();
        let prev = snap("a", 100, 1000, 500, &[("public.t", 10)]);
        assert_eq!(assess(&g, None, &prev), None);
        let next = snap("b", 95, 950, 400, &[("public.t", 6), ("public.new", 0)]);
        assert_eq!(assess(&g, Some(&prev), &next), None);
    }

    #[test]
    fn each_drop_beyond_its_threshold_is_named() {
        let g = Guard::default();
        let prev = snap("a", 100, 1000, 500, &[("public.t", 10), ("public.u", 4)]);
        let r = assess(
            &g,
            Some(&prev),
            &snap("b", 89, 1000, 500, &[("public.t", 10), ("public.u", 4)]),
        )
        .unwrap();
        assert!(r.contains("object count fell from 100 to 89"), "{r}");
        assert!(r.contains("snapshot a"), "{r}");
        let r = assess(
            &g,
            Some(&prev),
            &snap("b", 100, 899, 500, &[("public.t", 10), ("public.u", 4)]),
        )
        .unwrap();
        assert!(r.contains("object bytes"), "{r}");
        let r = assess(
            &g,
            Some(&prev),
            &snap("b", 100, 1000, 249, &[("public.t", 10), ("public.u", 4)]),
        )
        .unwrap();
        assert!(r.contains("dump shrank"), "{r}");
        let r = assess(
            &g,
            Some(&prev),
            &snap("b", 100, 1000, 500, &[("public.t", 4)]),
        )
        .unwrap();
        assert!(r.contains("table public.t fell from 10 to 4"), "{r}");
        assert!(r.contains("table public.u fell from 4 to 0"), "{r}");
        let mut empty = snap("b", 0, 0, 10, &[]);
        empty.dump = None;
        let r = assess(&g, Some(&prev), &empty).unwrap();
        assert_eq!(r.matches("; ").count(), 4, "{r}");
    }

    #[test]
    fn acks_are_write_once_and_make_a_snapshot_good() {
        let d = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_init(d.path()).unwrap();
        let good = snap("20260101T000000Z", 10, 10, 10, &[]);
        let mut bad = snap("20260102T000000Z", 0, 0, 0, &[]);
        bad.suspect = Some("empty".into());
        assert!(repo.publish_manifest(&good).unwrap());
        assert!(repo.publish_manifest(&bad).unwrap());
        assert_eq!(repo.latest_good().unwrap().unwrap().id, good.id);
        assert!(is_suspect(&repo, &bad));
        assert!(matches!(
            acknowledge(&repo, &good.id, "op", None, Utc::now()),
            Err(AckError::NotSuspect(_))
        ));
        let ack = acknowledge(
            &repo,
            "latest",
            "op",
            Some("bucket emptied on purpose"),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(ack.snapshot, bad.id);
        assert!(is_acknowledged(&repo, &bad.id));
        assert!(!is_suspect(&repo, &bad));
        assert_eq!(repo.latest_good().unwrap().unwrap().id, bad.id);
        assert!(matches!(
            acknowledge(&repo, &bad.id, "op", None, Utc::now()),
            Err(AckError::AlreadyAcknowledged(..))
        ));
        assert!(!is_acknowledged(&repo, "../snapshots/20260102T000000Z"));
    }
}
