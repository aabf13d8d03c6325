//! What `serve`'s verification schedule remembers between passes and restarts,
//! `REPO/verify-state.json`: when the last pass ran, where the current cycle started, a
//! cursor over the sorted chunk names (the last one read back in this cycle), and the
//! damaged chunks it is following (awaiting a heal, or lost for good). Bounded whatever the
//! repository holds: no list of verified chunks, at most [`MAX_TRACKED`] damaged ones.
//!
//! Written whole under a temporary name, fsynced, renamed over the old one and the
//! directory fsynced: a crash leaves the old state or the new one. The state is advisory:
//! an unreadable one is logged and replaced by a fresh cycle, never a reason not to serve.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use backup_common::durable;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::maintenance::verify::{Affected, Problem};
use crate::store::repository::{RepoError, Repository};

const FILE: &str = "verify-state.json";
const FORMAT: u32 = 1;
/// Damaged chunks followed by name; more are only counted.
pub const MAX_TRACKED: usize = 256;
/// Places (snapshot and item) kept per damaged chunk; the total is counted.
pub const MAX_AFFECTED: usize = 8;
/// A state file larger than this is not read.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A damaged chunk the schedule follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracked {
    pub chunk: String,
    pub problem: Problem,
    /// When a pass first found it (receiver clock).
    pub found: DateTime<Utc>,
    /// The first [`MAX_AFFECTED`] snapshots and items it affects.
    pub affected: Vec<Affected>,
    pub affected_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyState {
    pub format: u32,
    /// The last pass (receiver clock) and whether it found the repository without damage.
    pub last_pass: Option<DateTime<Utc>>,
    pub last_pass_ok: bool,
    pub passes: u64,
    /// Start of the current cycle (receiver clock); before the first pass, when the
    /// schedule started.
    pub cycle_start: Option<DateTime<Utc>>,
    /// The last chunk (hex name) read back in the current cycle's sweep.
    pub cursor: Option<String>,
    /// Chunks read back in the current cycle, and the share of the sweep done (0..=1).
    pub cycle_read: u64,
    pub cycle_progress: f64,
    pub cycles_completed: u64,
    pub last_cycle_completed: Option<DateTime<Utc>>,
    /// Chunks read back by the last pass.
    pub last_read: u64,
    /// Quarantined chunks confirmed healed (uploaded again and read back), all time.
    pub healed_total: u64,
    /// Damaged chunks awaiting a heal.
    pub pending: Vec<Tracked>,
    /// Damaged chunks no source will send again.
    pub lost: Vec<Tracked>,
    /// Damaged chunks beyond [`MAX_TRACKED`], only counted.
    pub untracked: u64,
}

impl VerifyState {
    /// The state of a schedule that starts at `now` with nothing remembered.
    pub fn fresh(now: DateTime<Utc>) -> VerifyState {
        VerifyState {
            format: FORMAT,
            last_pass: None,
            last_pass_ok: true,
            passes: 0,
            cycle_start: Some(now),
            cursor: None,
            cycle_read: 0,
            cycle_progress: 0.0,
            cycles_completed: 0,
            last_cycle_completed: None,
            last_read: 0,
            healed_total: 0,
            pending: Vec::new(),
            lost: Vec::new(),
            untracked: 0,
        }
    }
}

pub fn path(repo: &Repository) -> PathBuf {
    repo.root().join(FILE)
}

/// The remembered state, if there is a readable one.
pub fn load(repo: &Repository) -> Option<VerifyState> {
    let path = path(repo);
    let read = || -> Result<VerifyState, String> {
        let len = fs::metadata(&path).map_err(|e| e.to_string())?.len();
        if len > MAX_FILE_BYTES {
            return Err(format!("{len} bytes, more than {MAX_FILE_BYTES}"));
        }
        let bytes = fs::read(&path).map_err(|e| e.to_string())?;
        let state: VerifyState = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if state.format != FORMAT {
            return Err(format!("format {} (expected {FORMAT})", state.format));
        }
        Ok(state)
    };
    match read() {
        Ok(state) => Some(state),
        Err(_) if !path.exists() => None,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "verify state unreadable; starting a new cycle");
            None
        }
    }
}

/// Replaces the state file atomically and durably.
pub fn save(repo: &Repository, state: &VerifyState) -> Result<(), RepoError> {
    let path = path(repo);
    let io = |source: io::Error| RepoError::Io {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(state).expect("verify state serializes");
    let tmp = repo.tmp_dir().join(format!(
        "{FILE}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.set_permissions(fs::Permissions::from_mode(durable::FILE_MODE))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        durable::sync_dir(repo.root())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_round_trip_and_a_bad_file_means_a_fresh_start() {
        let d = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_init(d.path()).unwrap();
        assert_eq!(load(&repo), None);
        let t: DateTime<Utc> = "2026-03-01T02:00:00Z".parse().unwrap();
        let mut s = VerifyState::fresh(t);
        s.cursor = Some("ab".repeat(32));
        s.passes = 3;
        save(&repo, &s).unwrap();
        s.passes = 4;
        save(&repo, &s).unwrap();
        assert_eq!(load(&repo), Some(s));
        assert_eq!(
            fs::metadata(path(&repo)).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(fs::read_dir(repo.tmp_dir()).unwrap().count(), 0);
        fs::remove_file(path(&repo)).unwrap();
        fs::write(path(&repo), b"{not json").unwrap();
        assert_eq!(load(&repo), None);
    }
}
