//! Restore: turns a snapshot back into the exact dump file, the objects at their keys, a
//! pg_restore run, or objects in an S3 bucket. Every byte is checked twice: each chunk
//! against its id, and each whole stream against the hash and size in the manifest.
//! Runs on the NAS only; the network service has no restore call.
//!
//! Writing files named by a snapshot is writing untrusted names, so files go only into a
//! directory the restore created or found empty and owns ([`Target`]). Every directory
//! below it is entered with `O_NOFOLLOW`; every file is staged in a directory beside the
//! target, which no key can name, and published with `linkat`, which neither follows nor
//! replaces an existing name. Files are 0600 and directories 0700 whatever the umask. One
//! object that cannot be written fails alone; the others are still restored.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use backup_common::chunk::ChunkId;
use backup_common::durable;
use backup_common::keys::{self, KeyError};
use backup_common::manifest::{ChunkRef, DumpEntry, Manifest};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::operator::progress::Progress;
use crate::store::repository::{RepoError, Repository};

mod target;

pub use target::*;

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
    #[error("{path} {reason}; restore into a new or empty directory of your own")]
    Target { path: PathBuf, reason: String },
    #[error("{path} {reason}")]
    Collision { path: PathBuf, reason: String },
    #[error("a path component of {key:?} is {bytes} bytes ({component:?}…), longer than a file name may be ({NAME_MAX} bytes)")]
    NameTooLong {
        key: String,
        component: String,
        bytes: usize,
    },
    #[error("refused, its key would escape the target: {0}")]
    UnsafeKey(KeyError),
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

fn dump_of(manifest: &Manifest) -> Result<&DumpEntry, RestoreError> {
    manifest
        .dump
        .as_ref()
        .ok_or_else(|| RestoreError::NoDump(manifest.id.clone()))
}

/// Restores the exact dump file to `path`, which must not exist (not even as a link).
/// It is written as a 0600 temporary file beside `path` and published without replacing
/// anything, so a failure leaves no file at `path`.
pub fn dump_to_file(
    repo: &Repository,
    manifest: &Manifest,
    path: &Path,
) -> Result<u64, RestoreError> {
    let dump = dump_of(manifest)?;
    if fs::symlink_metadata(path).is_ok() {
        return Err(RestoreError::Exists {
            path: path.to_path_buf(),
        });
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    durable::create_private_dir_all(parent).map_err(io_at(parent))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".restore-")
        .permissions(fs::Permissions::from_mode(FILE_MODE))
        .tempfile_in(parent)
        .map_err(io_at(parent))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_at(path))?;
    {
        let mut w = io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        write_stream(
            repo,
            &dump.file_name,
            &dump.chunks,
            dump.size,
            dump.hash,
            &mut w,
        )?;
        w.flush().map_err(io_at(path))?;
    }
    tmp.as_file().sync_all().map_err(io_at(path))?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            RestoreError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            io_at(path)(e.error)
        }
    })?;
    Ok(dump.size)
}

/// pg_restore's stderr kept for an error message; the rest is read and dropped.
const MAX_STDERR_BYTES: usize = 64 * 1024;

/// Reads all of `r`, keeping the first [`MAX_STDERR_BYTES`] (lossy UTF-8).
pub fn read_bounded(mut r: impl Read) -> String {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_STDERR_BYTES.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                dropped += (n - room) as u64;
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        text.push_str(&format!("\n… ({dropped} more bytes)"));
    }
    text
}

/// Streams the verified dump into `cmd` (a pg_restore with its connection and options
/// set) on stdin, while `consume` reads its stderr on a thread of its own, so a
/// pg_restore that reports many errors cannot stall the stream. `Err` when the program
/// cannot start or the dump does not verify; pg_restore's own failures are in the
/// returned status.
pub fn stream_dump<T: Send + 'static>(
    repo: &Repository,
    manifest: &Manifest,
    mut cmd: Command,
    consume: impl FnOnce(std::process::ChildStderr) -> T + Send + 'static,
) -> Result<(ExitStatus, T), RestoreError> {
    let dump = dump_of(manifest)?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RestoreError::PgRestore(format!("cannot start {program}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || consume(stderr));
    let written = write_stream(
        repo,
        &dump.file_name,
        &dump.chunks,
        dump.size,
        dump.hash,
        &mut stdin,
    );
    drop(stdin);
    let status = child
        .wait()
        .map_err(|e| RestoreError::PgRestore(e.to_string()))?;
    let said = reader
        .join()
        .map_err(|_| RestoreError::PgRestore("reading its output panicked".into()))?;
    match written {
        // pg_restore stopped reading; its status and stderr say why.
        Err(RestoreError::Io { source, .. })
            if source.kind() == io::ErrorKind::BrokenPipe && !status.success() => {}
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    Ok((status, said))
}

/// Streams the dump into `pg_restore --exit-on-error --dbname=URL`, plus `extra_args`.
pub fn dump_to_pg_restore(
    repo: &Repository,
    manifest: &Manifest,
    pg_restore: &[String],
    url: &str,
    extra_args: &[String],
) -> Result<u64, RestoreError> {
    let (program, prefix) = pg_restore
        .split_first()
        .ok_or_else(|| RestoreError::PgRestore("empty pg_restore command".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(prefix)
        .arg("--exit-on-error")
        .arg(format!("--dbname={url}"))
        .args(extra_args)
        .stdout(Stdio::inherit());
    let (status, stderr) = stream_dump(repo, manifest, cmd, read_bounded)?;
    if !status.success() {
        return Err(RestoreError::PgRestore(format!(
            "exited with {status}: {}",
            stderr.trim()
        )));
    }
    Ok(dump_of(manifest)?.size)
}

/// Totals of an object restore.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ObjectTotals {
    pub objects: u64,
    pub bytes: u64,
}

/// What an object restore did: totals of the objects restored and verified, and every
/// object that was not, in manifest order.
#[derive(Debug, Default)]
pub struct ObjectsOutcome {
    pub restored: ObjectTotals,
    pub failures: Vec<(String, RestoreError)>,
}

/// Objects restored at the same time: reading, verifying and the per-file fsync of one
/// object overlap with the others'.
const RESTORE_PARALLEL: usize = 4;

/// Restores every object to `dir/<key>` through one [`Target`]. An object that cannot be
/// restored (a key that would escape, a name the file system cannot hold, a collision, a
/// missing or corrupt chunk) fails alone and is listed; `Err` only when the target itself
/// is refused.
pub fn objects_to_dir(
    repo: &Repository,
    manifest: &Manifest,
    dir: &Path,
    progress: &Progress,
) -> Result<ObjectsOutcome, RestoreError> {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    let target = Target::create(dir)?;
    progress.start(
        Some(manifest.objects.len() as u64),
        Some(manifest.objects.iter().map(|o| o.size).sum()),
        "objects",
    );
    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<(usize, String, RestoreError)>> = Mutex::new(Vec::new());
    let worker = || -> ObjectTotals {
        let mut totals = ObjectTotals::default();
        let mut cache = DirCache::default();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(o) = manifest.objects.get(i) else {
                break;
            };
            match target.write(&mut cache, repo, &o.key, &o.chunks, o.size, o.hash) {
                Ok(()) => {
                    totals.objects += 1;
                    totals.bytes += o.size;
                    progress.item(o.size);
                }
                Err(e) => {
                    let error = backup_common::term::escape(&e.to_string()).into_owned();
                    tracing::error!(key = ?o.key, error, "object not restored");
                    failures.lock().unwrap().push((i, o.key.clone(), e));
                }
            }
        }
        totals
    };
    let totals: Vec<ObjectTotals> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..RESTORE_PARALLEL).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("restore worker panicked"))
            .collect()
    });
    progress.finish();
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|(i, _, _)| *i);
    Ok(ObjectsOutcome {
        restored: totals
            .iter()
            .fold(ObjectTotals::default(), |a, t| ObjectTotals {
                objects: a.objects + t.objects,
                bytes: a.bytes + t.bytes,
            }),
        failures: failures.into_iter().map(|(_, k, e)| (k, e)).collect(),
    })
}

pub use crate::operator::to_s3::{objects_to_s3, S3Target};
