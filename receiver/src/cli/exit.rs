//! The receiver's exit codes: one table ([`Exit`]), one function that maps an error to it
//! ([`classify`]), and the same table in `--help` ([`EXIT_CODES_HELP`]) and in
//! docs/DEPLOYMENT.md. Codes 3 and 4 keep the meaning they always had.

use backup_common::config::ConfigError;

use crate::operator::drill::DrillError;
use crate::operator::restore::RestoreError;
use crate::store::error::StoreError;
use crate::store::repository::RepoError;
use crate::store::trash::UndeleteError;
use crate::store::verdicts::AckError;

/// What a receiver command's exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the command did what it was asked.
    Success = 0,
    /// 1: anything not listed below (an I/O error outside the repository, an internal error).
    Failure = 1,
    /// 2: the command line is wrong (also what clap exits with), or names a snapshot that
    /// does not exist.
    Usage = 2,
    /// 3: verification (or a restore) found damaged or missing chunks.
    Damage = 3,
    /// 4: a restore wrote some objects but not all (each failure is named).
    RestoreIncomplete = 4,
    /// 5: receiver.toml, or a secret file a command names, is missing, unreadable or invalid.
    Config = 5,
    /// 6: the repository cannot be read: not a repository, or its files are unreadable.
    RepositoryUnreadable = 6,
    /// 7: the restore drill ran and did not pass (a check failed, or the sandbox was not safe).
    DrillFailed = 7,
    /// 8: refused by policy: a snapshot that is not good without --allow-suspect, an output
    /// target that exists, is not empty or is a link, a verdict or undelete that does not apply.
    Refused = 8,
    /// 141: stdout was closed by the reader (`snapshots --json | head -1`): the command ends
    /// quietly, as `cat` would (128 + SIGPIPE; see `operator::out`).
    ClosedStdout = 141,
}

/// The table as `--help` shows it (kept equal to [`Exit`] by a unit test).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other failure (an I/O error outside the repository, an internal error)
  2  usage: wrong arguments, a snapshot named that does not exist, or
     --include/--exclude globs that match no object
  3  damage found: damaged or missing chunks (verify; a restore reading them)
  4  restore incomplete: some objects were not restored (each is named)
  5  configuration: receiver.toml or a secret file missing, unreadable or invalid
  6  repository unreadable: not a backup repository, or its files cannot be read
  7  drill failed: the restore drill ran and did not pass
  8  refused by policy: snapshot not good (see --allow-suspect), output target exists,
     is not empty or is a link, ack/reject/undelete does not apply
141  stdout closed by the reader (e.g. `| head`): the command ended quietly";

/// Errors the command layer itself raises; the layers' own errors are classified by type.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("verification found {0} damaged chunk(s)")]
    DamageFound(usize),
    #[error("restore incomplete: {failed} of {total} object(s) were not restored (listed above); the others were restored and verified")]
    RestoreIncomplete { failed: usize, total: usize },
    #[error("restore drill of snapshot {snapshot} FAILED: {first}")]
    DrillFailed { snapshot: String, first: String },
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The exit code of a command that failed with `e`: the first error in its chain whose type
/// says what happened decides.
pub fn classify(e: &anyhow::Error) -> Exit {
    e.chain().find_map(classify_one).unwrap_or(Exit::Failure)
}

fn classify_one(e: &(dyn std::error::Error + 'static)) -> Option<Exit> {
    if let Some(e) = e.downcast_ref::<CliError>() {
        return Some(match e {
            CliError::Usage(_) => Exit::Usage,
            CliError::DamageFound(_) => Exit::Damage,
            CliError::RestoreIncomplete { .. } => Exit::RestoreIncomplete,
            CliError::DrillFailed { .. } => Exit::DrillFailed,
        });
    }
    if e.downcast_ref::<ConfigError>().is_some() {
        return Some(Exit::Config);
    }
    if let Some(e) = e.downcast_ref::<RepoError>() {
        return Some(repo(e));
    }
    if e.downcast_ref::<StoreError>().is_some() {
        return Some(Exit::RepositoryUnreadable);
    }
    if let Some(e) = e.downcast_ref::<RestoreError>() {
        return match e {
            RestoreError::Repo(r) => Some(repo(r)),
            RestoreError::Mismatch { .. } | RestoreError::ChunkLength { .. } => Some(Exit::Damage),
            RestoreError::Exists { .. } | RestoreError::Target { .. } => Some(Exit::Refused),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<DrillError>() {
        return match e {
            DrillError::Repo(r) => Some(repo(r)),
            DrillError::NoneOldEnough { .. } => Some(Exit::Usage),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<AckError>() {
        return match e {
            AckError::Repo(r) => Some(repo(r)),
            _ => Some(Exit::Refused),
        };
    }
    if let Some(e) = e.downcast_ref::<UndeleteError>() {
        return Some(match e {
            UndeleteError::Repo(r) => repo(r),
            _ => Exit::Refused,
        });
    }
    None
}

fn repo(e: &RepoError) -> Exit {
    match e {
        // Whatever its kind (not there, permission, unreadable, unavailable): the
        // repository could not be read as asked. The message says which.
        RepoError::Store(_) => Exit::RepositoryUnreadable,
        RepoError::MissingChunk { .. } | RepoError::Chunk(_) => Exit::Damage,
        RepoError::NoSuchSnapshot(_) | RepoError::Empty => Exit::Usage,
        RepoError::NoGoodSnapshot | RepoError::NotGood { .. } => Exit::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_table_lists_every_code_once_in_order() {
        let all = [
            Exit::Success,
            Exit::Failure,
            Exit::Usage,
            Exit::Damage,
            Exit::RestoreIncomplete,
            Exit::Config,
            Exit::RepositoryUnreadable,
            Exit::DrillFailed,
            Exit::Refused,
            Exit::ClosedStdout,
        ];
        assert_eq!(
            i32::from(Exit::ClosedStdout.code()),
            crate::operator::out::BROKEN_PIPE_EXIT
        );
        let listed: Vec<u8> = EXIT_CODES_HELP
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(listed, all.map(Exit::code).to_vec());
    }

    #[test]
    fn a_wrapped_layer_error_keeps_its_code() {
        use anyhow::Context;
        let e = Err::<(), _>(RestoreError::Repo(RepoError::NotGood {
            id: "x".into(),
            why: "suspect".into(),
        }))
        .context("restore")
        .unwrap_err();
        assert_eq!(classify(&e), Exit::Refused);
        let e = anyhow::Error::from(RepoError::Empty).context("snapshots");
        assert_eq!(classify(&e), Exit::Usage);
        let e = anyhow::anyhow!("something else");
        assert_eq!(classify(&e), Exit::Failure);
    }
}
