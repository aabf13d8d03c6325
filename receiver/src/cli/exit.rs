//! The receiver's exit codes: one table ([`Exit`]), one function that maps an error to it
//! ([`classify`]), and the same table in `--help` ([`table_help`]), in each command's
//! `--help` ([`command_help`], the rows it can exit with) and in docs/DEPLOYMENT.md.

use backup_common::config::ConfigError;

use crate::operator::drill::DrillError;
use crate::operator::dump::DumpError;
use crate::operator::glob::BadGlob;
use crate::operator::restore::RestoreError;
use crate::operator::select::SelectError;
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

/// Every code, in the table's order.
pub const ALL: [Exit; 10] = [
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

impl Exit {
    /// The row of the table `--help` shows (continuation lines start with five spaces).
    pub fn help_row(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::Failure => "other failure (an I/O error outside the repository, an internal error)",
            Exit::Usage => {
                "usage: wrong arguments; a snapshot name that matches none (or several);\n     \
                 restore globs that match no object; a key the snapshot lacks; a terminal as\n     \
                 dump's stdout"
            }
            Exit::Damage => "damage found: damaged or missing chunks (verify; restore and dump reading them)",
            Exit::RestoreIncomplete => {
                "restore incomplete: some objects were not restored for another reason than\n     \
                 damage (each is named; the others were restored)"
            }
            Exit::Config => "configuration: receiver.toml or a secret file missing, unreadable or invalid",
            Exit::RepositoryUnreadable => {
                "repository unreadable: not a backup repository, or its files cannot be read"
            }
            Exit::DrillFailed => "drill failed: the restore drill ran and did not pass",
            Exit::Refused => {
                "refused by policy: snapshot not good (see --allow-suspect), output target exists,\n     \
                 is not empty or is a link, ack/reject/undelete does not apply"
            }
            Exit::ClosedStdout => "stdout closed by the reader (e.g. `| head`): the command ended quietly",
        }
    }

    /// The code's name in a JSON report's `error.kind`.
    pub fn kind(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::Failure => "failure",
            Exit::Usage => "usage",
            Exit::Damage => "damage",
            Exit::RestoreIncomplete => "restore_incomplete",
            Exit::Config => "configuration",
            Exit::RepositoryUnreadable => "repository_unreadable",
            Exit::DrillFailed => "drill_failed",
            Exit::Refused => "refused",
            Exit::ClosedStdout => "closed_stdout",
        }
    }
}

/// `codes` as the rows of the table, under "Exit codes:".
pub fn rows(codes: &[Exit]) -> String {
    let mut out = String::from("Exit codes:");
    for c in codes {
        out.push_str(&format!("\n{:>3}  {}", c.code(), c.help_row()));
    }
    out
}

/// The whole table, as `backup-receiver --help` shows it.
pub fn table_help() -> String {
    rows(&ALL)
}

/// A command's `--help` epilogue: its examples, then the rows of the table it can exit
/// with (taken from the one table, so they cannot disagree with it).
pub fn command_help(examples: &[&str], codes: &[Exit]) -> String {
    let mut out = String::from("Examples:");
    for e in examples {
        out.push_str("\n  ");
        out.push_str(e);
    }
    out.push_str("\n\n");
    out.push_str(&rows(codes));
    out
}

/// Errors the command layer itself raises; the layers' own errors are classified by type.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("verification found {0} damaged chunk(s)")]
    DamageFound(usize),
    #[error("restore incomplete: {failed} of {total} object(s) were not restored{} (listed above); the others were restored and verified", damage_text(*.damaged))]
    RestoreIncomplete {
        failed: usize,
        total: usize,
        /// Of the `failed`, those whose chunks are damaged or missing (then exit 3).
        damaged: usize,
    },
    #[error("restore drill of snapshot {snapshot} FAILED: {first}")]
    DrillFailed { snapshot: String, first: String },
}

fn damage_text(damaged: usize) -> String {
    match damaged {
        0 => String::new(),
        n => format!(", {n} of them because their chunks are damaged or missing"),
    }
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Whether a restore failure is damage (a missing or corrupt chunk, bytes that do not
/// hash to the manifest's), which exits 3 rather than 4.
pub fn is_damage(e: &RestoreError) -> bool {
    restore(e) == Some(Exit::Damage)
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
            CliError::RestoreIncomplete { damaged: 0, .. } => Exit::RestoreIncomplete,
            CliError::RestoreIncomplete { .. } => Exit::Damage,
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
        return restore(e);
    }
    if let Some(e) = e.downcast_ref::<DumpError>() {
        return match e {
            DumpError::NoSuchKey { .. } | DumpError::NoDump(_) | DumpError::Terminal => {
                Some(Exit::Usage)
            }
            DumpError::Restore(r) => restore(r),
        };
    }
    if let Some(e) = e.downcast_ref::<SelectError>() {
        return Some(select(e));
    }
    if e.downcast_ref::<BadGlob>().is_some() {
        return Some(Exit::Usage);
    }
    if let Some(e) = e.downcast_ref::<DrillError>() {
        return match e {
            DrillError::Repo(r) => Some(repo(r)),
            DrillError::Select(s) => Some(select(s)),
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

fn restore(e: &RestoreError) -> Option<Exit> {
    match e {
        RestoreError::Repo(r) => Some(repo(r)),
        RestoreError::Mismatch { .. } | RestoreError::ChunkLength { .. } => Some(Exit::Damage),
        RestoreError::Exists { .. } | RestoreError::Target { .. } => Some(Exit::Refused),
        RestoreError::NoDump(_) => Some(Exit::Usage),
        _ => None,
    }
}

fn select(e: &SelectError) -> Exit {
    match e {
        SelectError::Repo(r) => repo(r),
        e if e.refused_by_policy() => Exit::Refused,
        _ => Exit::Usage,
    }
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
        assert_eq!(
            i32::from(Exit::ClosedStdout.code()),
            crate::operator::out::BROKEN_PIPE_EXIT
        );
        let listed: Vec<u8> = table_help()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(listed, ALL.map(Exit::code).to_vec());
        let codes: Vec<u8> = (0..=255u8)
            .filter(|c| ALL.iter().any(|e| e.code() == *c))
            .collect();
        assert_eq!(codes.len(), ALL.len(), "no code twice");
        let kinds: std::collections::BTreeSet<&str> = ALL.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds.len(), ALL.len(), "no kind twice");
    }

    #[test]
    fn restore_failures_are_damage_only_when_chunks_are() {
        use backup_common::chunk::ChunkId;
        let missing = RestoreError::Repo(RepoError::MissingChunk {
            id: ChunkId([1; 32]),
        });
        assert!(is_damage(&missing));
        let collision = RestoreError::Collision {
            path: "a".into(),
            reason: "is a directory".into(),
        };
        assert!(!is_damage(&collision));
        let e = anyhow::Error::from(CliError::RestoreIncomplete {
            failed: 2,
            total: 3,
            damaged: 1,
        });
        assert_eq!(classify(&e), Exit::Damage);
        let e = anyhow::Error::from(CliError::RestoreIncomplete {
            failed: 2,
            total: 3,
            damaged: 0,
        });
        assert_eq!(classify(&e), Exit::RestoreIncomplete);
        let e = anyhow::Error::from(DumpError::Restore(missing)).context("dump");
        assert_eq!(classify(&e), Exit::Damage);
        let e = anyhow::Error::from(SelectError::EmptyName);
        assert_eq!(classify(&e), Exit::Usage);
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
