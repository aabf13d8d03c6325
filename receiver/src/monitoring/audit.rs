//! Append-only audit log (`REPO/audit.log`, JSON lines): sessions, commits, rejections and
//! operator acknowledgements, each with the peer's identity and address. Never rewritten.
//!
//! What the network can make it write is bounded: every peer-supplied string is
//! [`bounded`](backup_common::bounded::bounded) by the callers, a record longer than
//! [`MAX_RECORD_BYTES`] is replaced by a short note, refusals are rate-limited per peer
//! address and reason (one record per [`REFUSAL_WINDOW`], the next one carries how many
//! were suppressed), and the file rotates: at `limits.audit_log_max_bytes` it becomes
//! `audit.log.1.zst` (zstd), older generations move up to `audit.log.N.zst` and the
//! oldest beyond `limits.audit_log_generations` is deleted. So the log never takes more
//! than [`AuditLog::max_disk_bytes`], which the free-space reserve keeps free for it.
//!
//! Records are written and synced by a dedicated thread fed by a bounded channel, which
//! syncs many at once. The caller waits (up to [`ACK_TIMEOUT`]) until its record is on
//! disk, so a request is answered only after its record is durable, but never on a tokio
//! worker: on the multi-threaded runtime the wait runs in `block_in_place`, which hands
//! the worker's other tasks to another thread. When the queue is full a record is dropped
//! without waiting and counted, and the count is written as an `audit_records_dropped`
//! record.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Longest record written as it is; a longer one is replaced by `audit_record_too_large`.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Refusals of one peer address for one reason: at most one record per this window.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Peer addresses whose refusal windows are tracked; beyond that, refusals of new
/// addresses share one window.
const MAX_TRACKED_PEERS: usize = 4096;
/// Records queued for the writer thread.
const QUEUE: usize = 4096;
/// Longest a caller waits for its record to be synced.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A queued record and whom to tell once it is synced.
type Queued = (String, SyncSender<()>);
/// Defaults for a log opened without `[limits]` (the CLI's own records).
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_GENERATIONS: u32 = 8;

/// Peer address, reason, and a hash of what else tells refusals apart (call, detail).
type RefusalKey = (Option<IpAddr>, &'static str, u64);

struct Window {
    start: Instant,
    suppressed: u64,
}

pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    generations: u32,
    tx: Mutex<Option<SyncSender<Queued>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    dropped: Arc<AtomicU64>,
    refusals: Mutex<HashMap<RefusalKey, Window>>,
}

/// Where the audit log of the repository at `repo_root` is: the sibling directory
/// `<repo>.audit/`, outside the repository (whose root only the store changes), on the
/// same file system (so the free-space reserve covers it).
pub fn dir_for(repo_root: &Path) -> PathBuf {
    let mut name = repo_root
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "repository".into());
    name.push(".audit");
    repo_root.with_file_name(name)
}

impl AuditLog {
    /// The audit log in directory `dir` (see [`dir_for`]), with the default rotation.
    pub fn new(dir: &Path) -> Self {
        Self::with_rotation(dir, DEFAULT_MAX_BYTES, DEFAULT_GENERATIONS)
    }

    /// The audit log in `dir` rotated at `max_bytes`, keeping `generations` compressed
    /// old ones.
    pub fn with_rotation(dir: &Path, max_bytes: u64, generations: u32) -> Self {
        if let Err(e) = backup_common::durable::create_private_dir_all(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the audit log directory");
        }
        let path = dir.join("audit.log");
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = {
            let (path, dropped) = (path.clone(), dropped.clone());
            std::thread::Builder::new()
                .name("audit-log".into())
                .spawn(move || write_loop(&path, max_bytes, generations.max(1), rx, &dropped))
                .map_err(|e| tracing::error!(error = %e, "cannot start the audit log writer"))
                .ok()
        };
        AuditLog {
            path,
            max_bytes,
            generations: generations.max(1),
            tx: Mutex::new(writer.as_ref().map(|_| tx)),
            writer: Mutex::new(writer),
            dropped,
            refusals: Mutex::new(HashMap::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The most the current log and its rotated generations can take on disk: each
    /// generation is one full log at most (zstd never grows a file by more than a few
    /// bytes per block), plus one record of slack per file.
    pub fn max_disk_bytes(&self) -> u64 {
        (u64::from(self.generations) + 1) * (self.max_bytes + MAX_RECORD_BYTES as u64 + 1024)
    }

    /// Writes one record and waits until it is synced (see the module doc). A failure to
    /// audit is logged but does not fail the request: the data path must not depend on
    /// the log's disk space.
    pub fn record(&self, time: DateTime<Utc>, event: &str, fields: Value) {
        let mut line = json!({ "time": time.to_rfc3339(), "event": event });
        if let (Some(obj), Value::Object(extra)) = (line.as_object_mut(), fields) {
            obj.extend(extra);
        }
        let mut line = line.to_string();
        if line.len() > MAX_RECORD_BYTES {
            line = json!({
                "time": time.to_rfc3339(),
                "event": "audit_record_too_large",
                "original_event": backup_common::bounded::bounded(event),
                "bytes": line.len(),
            })
            .to_string();
        }
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            let Some(tx) = tx.as_ref() else {
                tracing::error!(path = %self.path.display(), "audit log writer is not running; record lost");
                return;
            };
            match tx.try_send((line, ack_tx)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    tracing::error!(path = %self.path.display(), "audit log writer stopped; record lost");
                    return;
                }
            }
        }
        let wait = || ack_rx.recv_timeout(ACK_TIMEOUT);
        let synced = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        if synced.is_err() {
            tracing::warn!(path = %self.path.display(), "audit record not synced within {ACK_TIMEOUT:?}; going on");
        }
    }

    /// Records a refusal of `peer` for `reason`, at most once per [`REFUSAL_WINDOW`] per
    /// peer address, reason and `kind` (the call and detail: what the receiver itself says,
    /// bounded, so a peer cannot make every refusal look new); the next record of that kind
    /// carries `suppressed`, the number of refusals left out since the previous one.
    /// Returns whether it was written (the caller logs only then).
    pub fn refused(
        &self,
        time: DateTime<Utc>,
        peer: Option<IpAddr>,
        reason: &'static str,
        kind: &str,
        mut fields: Value,
    ) -> bool {
        let hash = blake3::hash(kind.as_bytes());
        let kind = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        let suppressed = {
            let mut windows = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            if windows.len() >= MAX_TRACKED_PEERS && !windows.contains_key(&(peer, reason, kind)) {
                windows.retain(|_, w| w.start.elapsed() < REFUSAL_WINDOW);
            }
            // Too many addresses at once: the newcomers share one window.
            let key = if windows.len() >= MAX_TRACKED_PEERS
                && !windows.contains_key(&(peer, reason, kind))
            {
                (None, "overflow", 0)
            } else {
                (peer, reason, kind)
            };
            match windows.get_mut(&key) {
                Some(w) if w.start.elapsed() < REFUSAL_WINDOW => {
                    w.suppressed += 1;
                    return false;
                }
                Some(w) => {
                    let n = w.suppressed;
                    *w = Window {
                        start: Instant::now(),
                        suppressed: 0,
                    };
                    n
                }
                None => {
                    windows.insert(
                        key,
                        Window {
                            start: Instant::now(),
                            suppressed: 0,
                        },
                    );
                    0
                }
            }
        };
        if let Value::Object(obj) = &mut fields {
            obj.insert("suppressed".into(), json!(suppressed));
        }
        self.record(time, "refused", fields);
        true
    }

    /// Waits until every record queued so far is written and synced (the writer stops).
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: appends queued records, syncs after each batch, rotates at
/// `max_bytes`.
fn write_loop(
    path: &Path,
    max_bytes: u64,
    generations: u32,
    rx: Receiver<Queued>,
    dropped: &AtomicU64,
) {
    let mut file: Option<(File, u64)> = None;
    while let Ok((first, ack)) = rx.recv() {
        let mut batch = vec![first];
        let mut acks = vec![ack];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok((line, ack)) => {
                    batch.push(line);
                    acks.push(ack);
                }
                Err(_) => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(
                json!({
                    "time": Utc::now().to_rfc3339(),
                    "event": "audit_records_dropped",
                    "count": lost,
                    "reason": "the audit log's queue was full",
                })
                .to_string(),
            );
        }
        if let Err(e) = write_batch(path, max_bytes, generations, &mut file, &batch) {
            tracing::error!(path = %path.display(), error = %e, "cannot write audit log");
            file = None;
        }
        for ack in acks {
            let _ = ack.try_send(());
        }
    }
}

fn write_batch(
    path: &Path,
    max_bytes: u64,
    generations: u32,
    file: &mut Option<(File, u64)>,
    batch: &[String],
) -> io::Result<()> {
    for line in batch {
        let len = line.len() as u64 + 1;
        if let Some((_, size)) = file {
            if *size > 0 && *size + len > max_bytes {
                if let Some((f, _)) = file.take() {
                    f.sync_data()?;
                }
                rotate(path, generations)?;
            }
        }
        if file.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(path)?;
            let size = f.metadata()?.len();
            *file = Some((f, size));
            // A log that is already full (written by an earlier run) rotates first.
            if size > 0 && size + len > max_bytes {
                *file = None;
                rotate(path, generations)?;
                let f = OpenOptions::new().create(true).append(true).open(path)?;
                *file = Some((f, 0));
            }
        }
        let (f, size) = file.as_mut().expect("opened above");
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        f.write_all(&bytes)?;
        *size += len;
    }
    if let Some((f, _)) = file {
        f.sync_data()?;
    }
    Ok(())
}

/// Path of rotated generation `n` (1 is the newest).
pub fn generation_path(path: &Path, n: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit.log".into());
    path.with_file_name(format!("{name}.{n}.zst"))
}

/// `audit.log` becomes generation 1 (compressed), the older ones move up by one, and the
/// one beyond `generations` is deleted.
fn rotate(path: &Path, generations: u32) -> io::Result<()> {
    match std::fs::remove_file(generation_path(path, generations)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for n in (1..generations).rev() {
        let from = generation_path(path, n);
        if from.exists() {
            std::fs::rename(&from, generation_path(path, n + 1))?;
        }
    }
    let first = generation_path(path, 1);
    let tmp = first.with_extension("zst.tmp");
    {
        let input = File::open(path)?;
        let out = File::create(&tmp)?;
        zstd::stream::copy_encode(input, &out, 3)?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, &first)?;
    std::fs::remove_file(path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn records_are_written_in_order_and_synced_by_close() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::new(d.path());
        for i in 0..100 {
            log.record(Utc::now(), "session", json!({ "n": i }));
        }
        log.close();
        let got = lines(&d.path().join("audit.log"));
        assert_eq!(got.len(), 100);
        assert!(got.iter().enumerate().all(|(i, r)| r["n"] == i));
    }

    #[test]
    fn the_log_rotates_into_a_fixed_number_of_compressed_generations() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::with_rotation(d.path(), 64 * 1024, 3);
        let filler = "f".repeat(1000);
        for i in 0..1000 {
            log.record(Utc::now(), "session", json!({ "n": i, "filler": filler }));
        }
        log.close();
        let path = d.path().join("audit.log");
        let current = std::fs::metadata(&path).unwrap().len();
        assert!(current <= 64 * 1024, "{current}");
        for n in 1..=3 {
            let g = generation_path(&path, n);
            let text = zstd::decode_all(File::open(&g).unwrap()).unwrap();
            assert!(text.len() as u64 <= 64 * 1024, "{}", text.len());
            assert!(String::from_utf8(text)
                .unwrap()
                .lines()
                .all(|l| l.contains("filler")));
        }
        assert!(!generation_path(&path, 4).exists());
        // The newest records are in the current file, the oldest are gone.
        let last = lines(&path);
        assert_eq!(last.last().unwrap()["n"], 999);
        let total: u64 = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= log.max_disk_bytes(), "{total}");
    }

    #[test]
    fn an_oversized_record_is_replaced_by_a_note() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::new(d.path());
        log.record(Utc::now(), "session", json!({ "x": "y".repeat(1 << 20) }));
        log.close();
        let got = lines(&d.path().join("audit.log"));
        assert_eq!(got[0]["event"], "audit_record_too_large");
        assert_eq!(got[0]["original_event"], "session");
    }

    #[test]
    fn refusals_are_rate_limited_per_peer_and_reason() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::new(d.path());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(log.refused(Utc::now(), Some(a), "tls", "x", json!({})));
        for _ in 0..500 {
            assert!(!log.refused(Utc::now(), Some(a), "tls", "x", json!({})));
        }
        assert!(log.refused(Utc::now(), Some(a), "network", "x", json!({})));
        assert!(log.refused(Utc::now(), Some(a), "tls", "another detail", json!({})));
        assert!(log.refused(Utc::now(), Some(b), "tls", "x", json!({})));
        // The windows of `a` are over: its next record counts what was left out.
        for w in log.refusals.lock().unwrap().values_mut() {
            w.start -= REFUSAL_WINDOW;
        }
        assert!(log.refused(Utc::now(), Some(a), "tls", "x", json!({})));
        log.close();
        let got = lines(&d.path().join("audit.log"));
        assert_eq!(got.len(), 5);
        assert_eq!(got[0]["suppressed"], 0);
        assert_eq!(got[4]["suppressed"], 500);
    }
}
