//! Checks the maintenance tests share: running receiver commands with a test
//! environment (fake clock, pause points), verifying, restoring a snapshot into memory,
//! comparing chunk files with what the manifests reference, and a fake clock file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use backup_common::manifest::Manifest;
use chrono::{DateTime, Utc};

use crate::stack::{bin, Stack};

/// Runs `backup-receiver` with `args` and extra environment.
pub fn receiver_cmd(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(bin("backup-receiver"))
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run backup-receiver")
}

/// Starts `backup-receiver` in the background (to be killed at a pause point).
pub fn receiver_spawn(args: &[&str], envs: &[(&str, &str)]) -> Child {
    Command::new(bin("backup-receiver"))
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn backup-receiver")
}

/// Starts `backup-sender run --json` in the background.
pub fn sender_spawn(stack: &Stack) -> Child {
    Command::new(bin("backup-sender"))
        .args(["run", "--json", "--config"])
        .arg(&stack.sender_config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backup-sender")
}

/// `verify --read-data` must pass.
pub fn assert_verified(repo: &Path) {
    let out = receiver_cmd(
        &["verify", "--read-data", "--repo", repo.to_str().unwrap()],
        &[],
    );
    assert!(
        out.status.success(),
        "verify --read-data failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file below `root`, path → bytes.
pub fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.insert(key, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// What a snapshot restores to: the dump's bytes and the objects, key → bytes.
pub struct Restored {
    pub dump: Vec<u8>,
    pub objects: BTreeMap<String, Vec<u8>>,
}

pub fn restore(repo: &Path, snapshot: &str, scratch: &Path) -> Restored {
    let dir = scratch.join(format!("restore-{snapshot}-{}", rand_suffix()));
    let dump = dir.join("dump");
    let objects = dir.join("objects");
    let out = receiver_cmd(
        &[
            "restore",
            snapshot,
            "--repo",
            repo.to_str().unwrap(),
            "--dump-out",
            dump.to_str().unwrap(),
            "--objects-out",
            objects.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "restore {snapshot}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = Restored {
        dump: std::fs::read(&dump).unwrap(),
        objects: read_tree(&objects),
    };
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Ids of the snapshots in `snapshots/`, oldest first.
pub fn snapshot_ids(repo: &Path) -> Vec<String> {
    open(repo).snapshot_ids().unwrap()
}

/// The snapshots in the trash (pruned, not yet purged, not undeleted), as the receiver
/// reads the trash's tombstone records.
pub fn trash_ids(repo: &Path) -> Vec<String> {
    open(repo).trashed().unwrap().into_keys().collect()
}

fn open(repo: &Path) -> backup_receiver::store::repository::Repository {
    backup_receiver::store::open::repository(repo).unwrap()
}

/// Chunk ids (hex) referenced by the snapshots' manifests (and by those in the trash if
/// asked).
pub fn referenced_chunks(repo: &Path, with_trash: bool) -> BTreeSet<String> {
    let r = open(repo);
    let ids = if with_trash {
        r.stored_snapshot_ids().unwrap()
    } else {
        r.snapshot_ids().unwrap()
    };
    ids.iter()
        .map(|id| r.load_stored_manifest(id).unwrap())
        .flat_map(|m: Manifest| m.chunk_refs().map(|c| c.id.to_hex()).collect::<Vec<_>>())
        .collect()
}

/// Chunk ids (hex) of the chunk files in the repository.
pub fn chunk_files(repo: &Path) -> BTreeSet<String> {
    read_dir_names(&repo.join("chunks"))
        .into_iter()
        .flat_map(|d| read_dir_names(&repo.join("chunks").join(d)))
        .collect()
}

pub fn read_dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Waits until `cond` holds, or panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fake receiver clock (`BACKUP_RECEIVER_FAKE_CLOCK_FILE`), written atomically.
pub struct FakeClock {
    pub path: PathBuf,
}

impl FakeClock {
    pub fn new(dir: &Path, t: DateTime<Utc>) -> FakeClock {
        let c = FakeClock {
            path: dir.join("receiver-clock"),
        };
        c.set(t);
        c
    }

    pub fn set(&self, t: DateTime<Utc>) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, t.to_rfc3339()).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    pub fn env(&self) -> (&'static str, &str) {
        (
            "BACKUP_RECEIVER_FAKE_CLOCK_FILE",
            self.path.to_str().unwrap(),
        )
    }
}
