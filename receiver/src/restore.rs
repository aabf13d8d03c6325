//! Restore: turns a snapshot back into the exact dump file, the objects at their keys, a
//! pg_restore run, or objects in an S3 bucket. Every byte is checked twice: each chunk
//! against its id, and each whole stream against the hash and size in the manifest.
//! Runs on the NAS only; the network service has no restore call.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use backup_common::chunk::ChunkId;
use backup_common::keys::{self, KeyError};
use backup_common::manifest::{ChunkRef, DumpEntry, Manifest, ObjectEntry};

use crate::repository::{RepoError, Repository};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{what}: restored {actual_size} bytes hashing to {actual}, manifest says {expected_size} bytes hashing to {expected}")]
    Mismatch {
        what: String,
        expected: ChunkId,
        actual: ChunkId,
        expected_size: u64,
        actual_size: u64,
    },
    #[error("{what}: chunk {id} holds {actual} bytes, manifest says {expected}")]
    ChunkLength {
        what: String,
        id: ChunkId,
        expected: u32,
        actual: usize,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists already; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("snapshot {0} has no database dump")]
    NoDump(String),
    #[error("refused to restore {count} object(s) whose keys would escape the target: {first}")]
    UnsafeKeys { count: usize, first: KeyError },
    #[error("pg_restore: {0}")]
    PgRestore(String),
    #[error("S3 upload of {key:?}: {message}")]
    S3 { key: String, message: String },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Streams the chunks of one stream into `out`, verifying chunk lengths and the whole hash.
pub fn write_stream(
    repo: &Repository,
    what: &str,
    chunks: &[ChunkRef],
    size: u64,
    hash: ChunkId,
    out: &mut dyn Write,
) -> Result<(), RestoreError> {
    let mut hasher = blake3::Hasher::new();
    let mut written = 0u64;
    for r in chunks {
        let data = repo.read_chunk(&r.id)?;
        if data.len() != r.len as usize {
            return Err(RestoreError::ChunkLength {
                what: what.to_string(),
                id: r.id,
                expected: r.len,
                actual: data.len(),
            });
        }
        hasher.update(&data);
        written += data.len() as u64;
        out.write_all(&data).map_err(|source| RestoreError::Io {
            path: PathBuf::from(what),
            source,
        })?;
    }
    let actual = ChunkId(*hasher.finalize().as_bytes());
    if actual != hash || written != size {
        return Err(RestoreError::Mismatch {
            what: what.to_string(),
            expected: hash,
            actual,
            expected_size: size,
            actual_size: written,
        });
    }
    Ok(())
}

/// Writes a stream to `path` via a `.partial` file that is renamed into place only once
/// every byte checked out; a failure leaves no file at `path`.
fn write_file(
    repo: &Repository,
    what: &str,
    chunks: &[ChunkRef],
    size: u64,
    hash: ChunkId,
    path: &Path,
) -> Result<(), RestoreError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let mut f = File::create(&partial).map_err(io_at(&partial))?;
        let mut buffered = io::BufWriter::with_capacity(1 << 20, &mut f);
        write_stream(repo, what, chunks, size, hash, &mut buffered)?;
        buffered.flush().map_err(io_at(&partial))?;
        drop(buffered);
        f.sync_all().map_err(io_at(&partial))?;
        fs::rename(&partial, path).map_err(io_at(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn dump_of(manifest: &Manifest) -> Result<&DumpEntry, RestoreError> {
    manifest
        .dump
        .as_ref()
        .ok_or_else(|| RestoreError::NoDump(manifest.id.clone()))
}

/// Restores the exact dump file to `path`, which must not exist.
pub fn dump_to_file(
    repo: &Repository,
    manifest: &Manifest,
    path: &Path,
) -> Result<u64, RestoreError> {
    let dump = dump_of(manifest)?;
    if path.exists() {
        return Err(RestoreError::Exists {
            path: path.to_path_buf(),
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    write_file(
        repo,
        &dump.file_name,
        &dump.chunks,
        dump.size,
        dump.hash,
        path,
    )?;
    Ok(dump.size)
}

/// Streams the dump into `pg_restore --dbname=URL`, plus `extra_args`.
pub fn dump_to_pg_restore(
    repo: &Repository,
    manifest: &Manifest,
    pg_restore: &[String],
    url: &str,
    extra_args: &[String],
) -> Result<u64, RestoreError> {
    let dump = dump_of(manifest)?;
    let (program, prefix) = pg_restore
        .split_first()
        .ok_or_else(|| RestoreError::PgRestore("empty pg_restore command".into()))?;
    let mut child = Command::new(program)
        .args(prefix)
        .arg("--exit-on-error")
        .arg(format!("--dbname={url}"))
        .args(extra_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RestoreError::PgRestore(format!("cannot start {program}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = write_stream(
        repo,
        &dump.file_name,
        &dump.chunks,
        dump.size,
        dump.hash,
        &mut stdin,
    );
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| RestoreError::PgRestore(e.to_string()))?;
    written?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(RestoreError::PgRestore(format!(
            "exited with {}: {}",
            output.status,
            stderr.trim()
        )));
    }
    Ok(dump.size)
}

/// Totals of an object restore.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ObjectTotals {
    pub objects: u64,
    pub bytes: u64,
}

/// Objects restored at the same time: reading, verifying and the per-file fsync of one
/// object overlap with the others'.
const RESTORE_PARALLEL: usize = 4;

/// Restores every object to `dir/<key>`. Keys that would escape `dir` are refused (the
/// others are still restored, and the call then fails naming the refused keys).
pub fn objects_to_dir(
    repo: &Repository,
    manifest: &Manifest,
    dir: &Path,
) -> Result<ObjectTotals, RestoreError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let refused: Mutex<Vec<KeyError>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    // Each worker takes the next object until all are done or one failed.
    let worker = || -> Result<ObjectTotals, RestoreError> {
        let mut totals = ObjectTotals::default();
        while !failed.load(Ordering::Relaxed) {
            let Some(o) = manifest.objects.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let path = match keys::safe_join(dir, &o.key) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(key = ?o.key, error = %e, "refusing unsafe object key");
                    refused.lock().unwrap().push(e);
                    continue;
                }
            };
            let result = (|| {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                write_file(repo, &o.key, &o.chunks, o.size, o.hash, &path)
            })();
            if let Err(e) = result {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
            totals.objects += 1;
            totals.bytes += o.size;
        }
        Ok(totals)
    };
    let results: Vec<Result<ObjectTotals, RestoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..RESTORE_PARALLEL).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("restore worker panicked"))
            .collect()
    });
    let mut totals = ObjectTotals::default();
    for r in results {
        let t = r?;
        totals.objects += t.objects;
        totals.bytes += t.bytes;
    }
    match refused.into_inner().unwrap().into_iter().next() {
        None => Ok(totals),
        Some(first) => Err(RestoreError::UnsafeKeys {
            count: manifest
                .objects
                .iter()
                .filter(|o| keys::validate(&o.key).is_err())
                .count(),
            first,
        }),
    }
}

/// Where `--objects-to-s3` uploads.
pub struct S3Target {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
}

/// Parts of at least this size go into a multipart upload (S3's minimum is 5 MiB).
const PART_BYTES: usize = 16 * 1024 * 1024;

/// Uploads every object to the S3 bucket, verifying each stream on the way. Memory stays
/// at about one part per object: large objects go up as multipart uploads.
pub async fn objects_to_s3(
    repo: &Repository,
    manifest: &Manifest,
    target: &S3Target,
) -> Result<ObjectTotals, RestoreError> {
    let mut totals = ObjectTotals::default();
    for o in &manifest.objects {
        keys::validate(&o.key).map_err(|first| RestoreError::UnsafeKeys { count: 1, first })?;
        upload_object(repo, o, target).await?;
        totals.objects += 1;
        totals.bytes += o.size;
    }
    Ok(totals)
}

async fn upload_object(
    repo: &Repository,
    o: &ObjectEntry,
    target: &S3Target,
) -> Result<(), RestoreError> {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let s3err = |e: &dyn std::fmt::Display| RestoreError::S3 {
        key: o.key.clone(),
        message: e.to_string(),
    };
    // Parts are assembled on a blocking thread and handed over one at a time.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let repo2 = repo.clone();
    let entry = o.clone();
    let producer = tokio::task::spawn_blocking(move || -> Result<(), RestoreError> {
        struct PartWriter {
            buf: Vec<u8>,
            tx: tokio::sync::mpsc::Sender<Vec<u8>>,
        }
        impl Write for PartWriter {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                self.buf.extend_from_slice(data);
                if self.buf.len() >= PART_BYTES {
                    let part = std::mem::take(&mut self.buf);
                    self.tx
                        .blocking_send(part)
                        .map_err(|_| io::Error::other("upload stopped"))?;
                }
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = PartWriter {
            buf: Vec::new(),
            tx,
        };
        write_stream(
            &repo2,
            &entry.key,
            &entry.chunks,
            entry.size,
            entry.hash,
            &mut w,
        )?;
        if !w.buf.is_empty() || entry.size == 0 {
            let _ = w.tx.blocking_send(std::mem::take(&mut w.buf));
        }
        Ok(())
    });
    let first = rx.recv().await.unwrap_or_default();
    let second = rx.recv().await;
    match second {
        None => {
            // Single part: wait for verification before the object becomes visible.
            producer.await.map_err(|e| s3err(&e))??;
            target
                .client
                .put_object()
                .bucket(&target.bucket)
                .key(&o.key)
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(|e| s3err(&aws_sdk_s3::error::DisplayErrorContext(e)))?;
        }
        Some(second) => {
            let upload = target
                .client
                .create_multipart_upload()
                .bucket(&target.bucket)
                .key(&o.key)
                .send()
                .await
                .map_err(|e| s3err(&aws_sdk_s3::error::DisplayErrorContext(e)))?;
            let upload_id = upload.upload_id().unwrap_or_default().to_string();
            let mut parts = Vec::new();
            let mut next = Some(first);
            let mut pending = Some(second);
            let mut number = 1;
            let result: Result<(), RestoreError> = async {
                while let Some(body) = next.take() {
                    let out = target
                        .client
                        .upload_part()
                        .bucket(&target.bucket)
                        .key(&o.key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(|e| s3err(&aws_sdk_s3::error::DisplayErrorContext(e)))?;
                    parts.push(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .build(),
                    );
                    number += 1;
                    next = match pending.take() {
                        Some(p) => Some(p),
                        None => rx.recv().await,
                    };
                }
                producer.await.map_err(|e| s3err(&e))??;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = target
                    .client
                    .abort_multipart_upload()
                    .bucket(&target.bucket)
                    .key(&o.key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                return Err(e);
            }
            target
                .client
                .complete_multipart_upload()
                .bucket(&target.bucket)
                .key(&o.key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| s3err(&aws_sdk_s3::error::DisplayErrorContext(e)))?;
        }
    }
    Ok(())
}
