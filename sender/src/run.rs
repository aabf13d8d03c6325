//! One nightly run: open a session, dump the database and sync the bucket concurrently
//! through one upload pipeline, then commit. The snapshot exists only once the receiver
//! has accepted the commit; a failed run leaves chunks (reused next night) but no snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SenderConfig;
use backup_common::contract::Reason;
use backup_common::manifest::{DumpEntry, ObjectEntry};
use backup_common::{proto, wire};
use serde::Serialize;
use tonic::Status;

use crate::client::{self, Client};
use crate::database::{self, DumpError};
use crate::local_dumps;
use crate::objects::{self, Delta, ObjectError};
use crate::progress::Progress;
use crate::session::Session;
use crate::upload::Uploader;

/// Why a run failed; each kind has its own exit code (see `docs/MONITORING.md`):
///
/// | code | kind       | meaning                                                        |
/// |------|------------|----------------------------------------------------------------|
/// | 0    | (success)  | the receiver confirmed the commit of the whole snapshot         |
/// | 2    | `config`   | the config file or a file it names is missing or invalid        |
/// | 3    | `source`   | the database (down, credentials, pg_dump) or the bucket         |
/// | 4    | `receiver` | unreachable, refused us, refused the snapshot, or recorded less |
/// | 5    | `local`    | the local dump directory: not writable or not enough space     |
/// | 6    | `timeout`  | the run did not finish within `run.deadline`                    |
/// | 7    | `suspect`  | committed, but the receiver flagged the snapshot suspect        |
///
/// The `kind` is also the first word of the reason in the healthcheck's fail ping.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("configuration: {}", chain(.0))]
    Config(anyhow::Error),
    #[error("source: {}", chain(.0))]
    Source(anyhow::Error),
    #[error("receiver: {}", chain(.0))]
    Receiver(anyhow::Error),
    #[error("local backup directory: {}", chain(.0))]
    Local(anyhow::Error),
    #[error("timeout: the run did not finish within run.deadline ({})", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The snapshot was committed, but the receiver's guard flagged it suspect (the reason
    /// is the receiver's, bounded there): the night is not a success.
    #[error("suspect: the receiver committed snapshot {} but flagged it SUSPECT: {}", .0.snapshot_id, .0.suspect.as_deref().unwrap_or(""))]
    Suspect(Box<Summary>),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => 2,
            RunError::Source(_) => 3,
            RunError::Receiver(_) => 4,
            RunError::Local(_) => 5,
            RunError::Timeout(_) => 6,
            RunError::Suspect(_) => 7,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Config(_) => "config",
            RunError::Source(_) => "source",
            RunError::Receiver(_) => "receiver",
            RunError::Local(_) => "local",
            RunError::Timeout(_) => "timeout",
            RunError::Suspect(_) => "suspect",
        }
    }
}

fn chain(e: &anyhow::Error) -> String {
    backup_common::error_chain(e.as_ref())
}

fn receiver_err(what: &str, s: Status) -> RunError {
    // The error contract says why, where the sender must tell it apart.
    let why = match backup_common::contract::reason(&s) {
        Some(Reason::MissingChunks) => {
            " (the receiver lacks chunks this snapshot refers to; the next run uploads them again)"
        }
        Some(Reason::LimitExceeded) => " (a limit of the receiver was reached)",
        Some(Reason::RefusedByPolicy) => " (the receiver's admission refused this sender)",
        Some(Reason::SessionLost) => " (the receiver lost the session)",
        Some(Reason::Unspecified) | None => "",
    };
    RunError::Receiver(anyhow::anyhow!(
        "{what}: {} ({:?}){why}",
        s.message(),
        s.code()
    ))
}

impl From<DumpError> for RunError {
    fn from(e: DumpError) -> Self {
        match e {
            DumpError::Local { .. } => RunError::Local(e.into()),
            DumpError::Upload(_) => RunError::Receiver(e.into()),
            _ => RunError::Source(e.into()),
        }
    }
}

impl From<ObjectError> for RunError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Upload(_) => RunError::Receiver(e.into()),
            ObjectError::Config(_) => RunError::Config(e.into()),
            _ => RunError::Source(e.into()),
        }
    }
}

/// What a successful run did: printed at the end and sent with the success ping.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// In JSON the envelope's `snapshot_id` (backup_common::report), not a body field.
    #[serde(skip)]
    pub snapshot_id: String,
    pub dump_bytes: u64,
    pub dump_file: String,
    pub objects_total: u64,
    pub objects_new: u64,
    pub objects_changed: u64,
    pub objects_unchanged: u64,
    pub objects_gone: u64,
    pub object_bytes_read: u64,
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub raw_bytes_sent: u64,
    pub duration_secs: f64,
    pub suspect: Option<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapshot {} committed: dump {} bytes; objects {} total, {} new, {} changed, {} gone; \
             {} chunks / {} bytes sent; {:.1} s",
            self.snapshot_id,
            self.dump_bytes,
            self.objects_total,
            self.objects_new,
            self.objects_changed,
            self.objects_gone,
            self.chunks_sent,
            self.bytes_sent,
            self.duration_secs
        )?;
        if let Some(reason) = &self.suspect {
            write!(f, "; RECEIVER FLAGGED IT SUSPECT: {reason}")?;
        }
        Ok(())
    }
}

async fn previous_objects(
    client: &Client,
    session: &Session,
) -> Result<HashMap<String, ObjectEntry>, RunError> {
    let batches = session
        .call("PreviousObjects", |session_id| {
            let mut c = client.clone();
            let req = proto::PreviousObjectsRequest { session_id };
            async move {
                let mut stream = c.previous_objects(req).await?.into_inner();
                let mut all = Vec::new();
                while let Some(b) = stream.message().await? {
                    all.push(b);
                }
                Ok(all)
            }
        })
        .await
        .map_err(|s| receiver_err("reading the previous snapshot", s))?;
    let mut map = HashMap::new();
    for b in batches {
        for o in b.objects {
            let e = wire::object_from_proto(o)
                .map_err(|e| RunError::Receiver(anyhow::anyhow!("previous snapshot entry: {e}")))?;
            map.insert(e.key.clone(), e);
        }
    }
    Ok(map)
}

async fn commit(
    client: &Client,
    session: &Session,
    dump: &DumpEntry,
    bucket: &str,
    objects: &[ObjectEntry],
) -> Result<proto::CommitResponse, RunError> {
    session
        .call("Commit", |session_id| {
            let mut c = client.clone();
            let header = proto::CommitPart {
                part: Some(proto::commit_part::Part::Header(proto::CommitHeader {
                    session_id,
                    dump: Some(wire::dump_to_proto(dump)),
                    object_count: objects.len() as u64,
                    bucket: bucket.to_string(),
                })),
            };
            let mut parts = vec![header];
            parts.extend(objects.chunks(1000).map(|batch| proto::CommitPart {
                part: Some(proto::commit_part::Part::Objects(proto::ObjectBatch {
                    snapshot_id: String::new(),
                    objects: batch.iter().map(wire::object_to_proto).collect(),
                })),
            }));
            async move {
                c.commit(tokio_stream::iter(parts))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        .map_err(|s| receiver_err("commit refused", s))
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Partial sync is a failure: `recorded` (what a manifest holds) must account for every
/// one of the `listed` objects the source listed tonight.
pub fn check_complete(what: &str, recorded: u64, listed: u64) -> anyhow::Result<()> {
    if recorded != listed {
        anyhow::bail!(
            "{what} {recorded} objects but {listed} were listed at the source; \
             a snapshot that misses objects is not a backup"
        );
    }
    Ok(())
}

/// Pre-flight, then the run, within `run.deadline`. Past the deadline the run's future is
/// dropped: the pg_dump child is killed (`kill_on_drop`), no commit is sent, so no
/// snapshot exists; only chunks already stored remain (reused next night).
pub async fn run_with_deadline(cfg: &SenderConfig) -> Result<Summary, RunError> {
    let deadline = cfg.run.deadline;
    let work = async {
        crate::preflight::require(cfg).await?;
        run(cfg).await
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => {
            // The half-written local dump of the abandoned run.
            let _ = local_dumps::remove_stale_partials(&cfg.database.local_dir);
            tracing::error!(deadline = %humantime::format_duration(deadline), "run abandoned at its deadline");
            Err(RunError::Timeout(deadline))
        }
    }
}

/// Runs one nightly backup to completion (no deadline and no pre-flight; see
/// [`run_with_deadline`]).
pub async fn run(cfg: &SenderConfig) -> Result<Summary, RunError> {
    let started = Instant::now();
    let attempts = cfg.run.retries.get();
    let db = &cfg.database;
    std::fs::create_dir_all(&db.local_dir)
        .and_then(|_| local_dumps::remove_stale_partials(&db.local_dir))
        .map_err(|e| RunError::Local(anyhow::anyhow!("{}: {e}", db.local_dir.display())))?;
    let s3 = objects::client(&cfg.objects)?;
    let client = client::connect(&cfg.receiver).map_err(RunError::Config)?;

    let source_host = cfg.source_host.clone().unwrap_or_else(hostname);
    let session = Arc::new(
        Session::begin(client.clone(), source_host, attempts)
            .await
            .map_err(|s| receiver_err("opening a session", s))?,
    );

    let previous = previous_objects(&client, &session).await?;
    let listed = objects::list(&s3, &cfg.objects.bucket).await?;
    tracing::info!(
        listed = listed.len(),
        previous = previous.len(),
        "bucket listed"
    );

    let progress = Progress::for_stderr();
    let uploader = Uploader::start(client.clone(), session.clone(), progress.clone());
    let today = chrono::Local::now().date_naive();
    let dump_name = local_dumps::file_name(&db.dump_name, today);
    let partial = local_dumps::partial_path(&db.local_dir, &dump_name);

    let dump_fut = database::dump(db, &partial, uploader.sink());
    let objects_fut = objects::sync(
        &s3,
        &cfg.objects.bucket,
        listed,
        &previous,
        cfg.objects.concurrency.get(),
        uploader.sink(),
        &progress,
    );
    let (dumped, synced) = tokio::join!(dump_fut, objects_fut);
    let upload_result = uploader.finish().await;
    progress.finish();
    // A source error explains an upload that stopped because its producer vanished, and
    // an upload error explains a producer that stopped because the pipeline closed.
    let upload_stats = match (dumped.as_ref().err(), synced.as_ref().err(), upload_result) {
        (Some(DumpError::Upload(_)), _, Err(s)) | (_, Some(ObjectError::Upload(_)), Err(s)) => {
            let _ = std::fs::remove_file(&partial);
            return Err(receiver_err("uploading chunks", s));
        }
        (_, _, r) => r,
    };
    let dumped = match dumped {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    // The local copy is worth keeping even if the receiver fails below.
    let final_path = db.local_dir.join(&dump_name);
    std::fs::rename(&dumped.local_path, &final_path)
        .and_then(|_| backup_common::durable::sync_dir(&db.local_dir))
        .map_err(|e| {
            RunError::Local(anyhow::anyhow!("publishing {}: {e}", final_path.display()))
        })?;
    let removed = local_dumps::rotate(
        &db.local_dir,
        &db.dump_name,
        db.keep_daily.get(),
        db.keep_weekly,
        &dump_name,
    )
    .map_err(|e| RunError::Local(anyhow::anyhow!("rotating {}: {e}", db.local_dir.display())))?;
    if !removed.is_empty() {
        tracing::info!(removed = ?removed, "rotated local dumps");
    }
    let (entries, delta): (Vec<ObjectEntry>, Delta) = synced?;
    let upload_stats = upload_stats.map_err(|s| receiver_err("uploading chunks", s))?;
    check_complete(
        "tonight's object list holds",
        entries.len() as u64,
        delta.total,
    )
    .map_err(RunError::Source)?;

    let dump_entry = DumpEntry {
        file_name: dump_name.clone(),
        database: dumped.database,
        size: dumped.summary.size,
        hash: dumped.summary.hash,
        chunks: dumped.chunks,
        row_counts: dumped.row_counts,
    };
    let committed = commit(
        &client,
        &session,
        &dump_entry,
        &cfg.objects.bucket,
        &entries,
    )
    .await?;
    check_complete("the receiver recorded", committed.object_count, delta.total)
        .map_err(RunError::Receiver)?;
    Ok(Summary {
        snapshot_id: committed.snapshot_id,
        dump_bytes: dump_entry.size,
        dump_file: final_path.display().to_string(),
        objects_total: delta.total,
        objects_new: delta.new,
        objects_changed: delta.changed,
        objects_unchanged: delta.unchanged,
        objects_gone: delta.gone,
        object_bytes_read: delta.bytes_read,
        chunks_sent: upload_stats.chunks_sent,
        bytes_sent: upload_stats.wire_bytes_sent,
        raw_bytes_sent: upload_stats.raw_bytes_sent,
        duration_secs: started.elapsed().as_secs_f64(),
        suspect: committed.suspect.then_some(committed.suspect_reason),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_missing_objects_is_a_failure() {
        assert!(check_complete("recorded", 25, 25).is_ok());
        let e = check_complete("the receiver recorded", 24, 25)
            .unwrap_err()
            .to_string();
        assert!(e.contains("24 objects but 25 were listed"), "{e}");
        assert!(check_complete("recorded", 26, 25).is_err());
        let e = RunError::Receiver(check_complete("recorded", 0, 1).unwrap_err());
        assert_eq!((e.kind(), e.exit_code()), ("receiver", 4));
    }

    #[test]
    fn exit_codes_are_distinct() {
        let errs = [
            RunError::Config(anyhow::anyhow!("x")),
            RunError::Source(anyhow::anyhow!("x")),
            RunError::Receiver(anyhow::anyhow!("x")),
            RunError::Local(anyhow::anyhow!("x")),
            RunError::Timeout(Duration::from_secs(1)),
            RunError::Suspect(Box::new(Summary {
                snapshot_id: "s1".into(),
                dump_bytes: 0,
                dump_file: String::new(),
                objects_total: 0,
                objects_new: 0,
                objects_changed: 0,
                objects_unchanged: 0,
                objects_gone: 0,
                object_bytes_read: 0,
                chunks_sent: 0,
                bytes_sent: 0,
                raw_bytes_sent: 0,
                duration_secs: 0.0,
                suspect: Some("rows vanished".into()),
            })),
        ];
        let codes: Vec<u8> = errs.iter().map(RunError::exit_code).collect();
        assert_eq!(codes, [2, 3, 4, 5, 6, 7]);
        assert_eq!(
            errs[5].to_string(),
            "suspect: the receiver committed snapshot s1 but flagged it SUSPECT: rows vanished"
        );
        assert_eq!(
            errs[4].to_string(),
            "timeout: the run did not finish within run.deadline (1s)"
        );
    }
}
