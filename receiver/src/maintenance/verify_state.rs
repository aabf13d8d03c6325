//! What `serve`'s verification schedule remembers between passes and restarts: when the
//! last pass ran, where the current cycle started, a cursor over the sorted chunk names
//! (the last one read back in this cycle), and the damaged chunks it is following (awaiting
//! a heal, or lost for good). Bounded whatever the repository holds: no list of verified
//! chunks, at most [`MAX_TRACKED`] damaged ones.
//!
//! Kept in the store's `verify-state` space as numbered objects, each created once
//! (`<pass:020>.json`): a save creates the next one, then removes the older ones, so a
//! crash leaves the old state or the new one and nothing is ever replaced in place. The
//! state is advisory: one that is not a state this receiver reads is logged and replaced
//! by a fresh cycle, never a reason not to serve; a store that cannot read it at all is an
//! error the schedule retries (its fresh save would remove what it could not read).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::maintenance::verify::{Affected, Problem};
use crate::store::records::verify_state::VerifyStateSave;
use crate::store::repository::{Maintainer, RepoError};

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

/// Saved states kept: the newest, and the one before while a save is under way.
const KEEP: usize = 1;

/// The saved states' numbers, oldest first.
fn saved(repo: &Maintainer) -> Result<Vec<u64>, RepoError> {
    Ok(repo.keys::<VerifyStateSave>()?)
}

/// The remembered state: `None` when there is none, or when the newest is not a state
/// this receiver reads (logged; the schedule starts a fresh cycle). A store that cannot
/// list or read it is an error: the caller tries again rather than forget.
pub fn load(repo: &Maintainer) -> Result<Option<VerifyState>, RepoError> {
    let Some(number) = saved(repo)?.pop() else {
        return Ok(None);
    };
    let Some(save) = repo.read::<VerifyStateSave>(&number)? else {
        return Ok(None); // removed by a newer save meanwhile
    };
    let decode = |bytes: &[u8]| -> Result<VerifyState, String> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("{} bytes, more than {MAX_FILE_BYTES}", bytes.len()));
        }
        let state: VerifyState = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if state.format != FORMAT {
            return Err(format!("format {} (expected {FORMAT})", state.format));
        }
        Ok(state)
    };
    match decode(&save.bytes) {
        Ok(state) => Ok(Some(state)),
        Err(e) => {
            tracing::error!(store = %repo.describe(), error = %e, "verify state unreadable; starting a new cycle");
            Ok(None)
        }
    }
}

/// Saves the state as the next numbered object, then removes the older ones.
pub fn save(repo: &Maintainer, state: &VerifyState) -> Result<(), RepoError> {
    let bytes = serde_json::to_vec_pretty(state).expect("verify state serializes");
    let old = saved(repo)?;
    let next = old.last().map_or(1, |k| k + 1);
    repo.create(&VerifyStateSave {
        number: next,
        bytes,
    })?;
    for number in old.iter().rev().skip(KEEP.saturating_sub(1)).rev() {
        repo.remove::<VerifyStateSave>(number)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;

    #[test]
    fn the_state_survives_a_round_trip_and_a_bad_one_means_a_fresh_start() {
        let repo = Maintainer::new(MemStore::default());
        assert_eq!(load(&repo).unwrap(), None);
        let t: DateTime<Utc> = "2026-03-01T02:00:00Z".parse().unwrap();
        let mut s = VerifyState::fresh(t);
        s.cursor = Some("ab".repeat(32));
        s.passes = 3;
        save(&repo, &s).unwrap();
        s.passes = 4;
        save(&repo, &s).unwrap();
        assert_eq!(load(&repo).unwrap(), Some(s.clone()));
        // Only the newest is kept.
        assert_eq!(repo.keys::<VerifyStateSave>().unwrap(), [2]);
        repo.create(&VerifyStateSave {
            number: 3,
            bytes: b"{not json".to_vec(),
        })
        .unwrap();
        assert_eq!(load(&repo).unwrap(), None);
        // The next save after a bad one starts over cleanly.
        save(&repo, &s).unwrap();
        assert_eq!(load(&repo).unwrap(), Some(s));
    }
}
