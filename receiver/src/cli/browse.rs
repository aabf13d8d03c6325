//! The browsing commands (`ls`, `find`, `diff`, `dump`). All of them only read. Text
//! output escapes every peer-supplied name and shows times in the retention time zone;
//! `--json` prints the report envelope (cli/report.rs) with names raw (serde escapes
//! control characters) and times in UTC.

use std::io::IsTerminal;

use anyhow::Context;
use backup_common::term::escape;

use super::args::{RepoArgs, AS_OF_HELP, SNAPSHOT_HELP};
use super::exit::{command_help, CliError, Exit::*};
use super::pick::{context, pick};
use super::report::Reporter;
use crate::operator::browse;
use crate::operator::dump::{self, DumpError, Dumped};
use crate::operator::glob::{find_pattern, Hints, KeyFilter};
use crate::operator::out;
use crate::operator::progress::Progress;
use crate::operator::select::Counting;

/// How globs are matched, for the help of `find` and `restore`.
pub const GLOB_RULES: &str = "Globs match whole keys: `*`, `?` and `[...]` stay within one \
path component, `**` crosses `/` (`briefe/1923/**`, `**/*.pdf`), `{a,b}` is either. A \
backslash makes the next character literal: a key `fotos/[1951] hochzeit.jpg` is matched by \
'fotos/\\[1951\\] hochzeit.jpg' (quote globs for the shell). `ls` takes a plain prefix \
instead, no glob.";

/// List the objects of a snapshot: size, content hash, and new/changed/unchanged
/// against the snapshot committed before it (named in the output).
#[derive(clap::Args, Debug)]
#[command(after_help = command_help(
    &[
        "backup-receiver ls latest briefe/1923/",
        "backup-receiver ls 2026-01-05 --long",
        "backup-receiver ls --as-of \"10 days ago\" scans/",
    ],
    &[Success, Failure, Usage, Config, RepositoryUnreadable, Refused, ClosedStdout],
))]
pub struct LsArgs {
    #[arg(help = SNAPSHOT_HELP, required_unless_present = "as_of")]
    pub snapshot: Option<String>,
    /// Only keys starting with this: plain text, not a glob (`briefe/19` lists briefe/1923/…
    /// and briefe/1924/…). With --as-of it is the only argument.
    pub prefix: Option<String>,
    #[arg(long, value_name = "TIME", help = AS_OF_HELP)]
    pub as_of: Option<String>,
    #[command(flatten)]
    pub target: RepoArgs,
    /// Add the ETag the sender reported and the chunk count.
    #[arg(long)]
    pub long: bool,
    /// Print the JSON report.
    #[arg(long)]
    pub json: bool,
}

impl LsArgs {
    pub fn run(mut self) -> anyhow::Result<()> {
        if self.as_of.is_some() {
            if self.prefix.is_some() {
                return Err(CliError::Usage(
                    "with --as-of, ls takes only PREFIX (the snapshot is the one --as-of picks)"
                        .into(),
                )
                .into());
            }
            self.prefix = self.snapshot.take();
        }
        let (repo, tz) = self.target.open_with_zone()?;
        let cx = context(tz, Counting::Good);
        let m = pick(&repo, &cx, self.snapshot.as_deref(), self.as_of.as_deref())?.manifest;
        let l = browse::ls(&repo, &m, self.prefix.as_deref(), self.long)?;
        Reporter::new("ls", self.json).ok(Some(&m.id), &l, || l.text(tz))
    }
}

/// Find every snapshot holding a key that matches GLOB: each distinct version (size,
/// hash) with the first and last snapshot holding it. A GLOB without `/` matches the last
/// component of a key (`grete.pdf` finds briefe/1923/grete.pdf), one ending in `/` the
/// folder's contents. When nothing matches, it says which other form would.
#[derive(clap::Args, Debug)]
#[command(after_help = format!("{GLOB_RULES}\n\n{}", command_help(
    &[
        "backup-receiver find grete.pdf",
        "backup-receiver find 'briefe/1923/*'",
        "backup-receiver find scans/1923/ --json",
    ],
    &[Success, Failure, Usage, Config, RepositoryUnreadable, ClosedStdout],
)))]
pub struct FindArgs {
    /// What to look for: a name (any depth), a folder ending in `/`, or a glob over whole
    /// keys (see --help for the rules and escaping).
    pub glob: String,
    #[command(flatten)]
    pub target: RepoArgs,
    /// Print the JSON report.
    #[arg(long)]
    pub json: bool,
}

impl FindArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let (repo, tz) = self.target.open_with_zone()?;
        let pattern = find_pattern(&self.glob);
        let filter = KeyFilter::exactly(&pattern)?;
        let mut hints = Hints::new(&self.glob);
        let progress = Progress::for_stderr();
        let found = browse::find(
            &repo,
            (&self.glob, &pattern),
            &filter,
            &mut hints,
            &progress,
        )?;
        Reporter::new("find", self.json).ok(None, &found, || found.text(tz))
    }
}

/// Show what changed between two snapshots: objects added, removed and changed, bytes,
/// and each table's row-count change (the receiver's own count where it has one). NEW
/// is `latest` when left out, so `diff latest~1` is what changed last night.
#[derive(clap::Args, Debug)]
#[command(after_help = command_help(
    &[
        "backup-receiver diff latest~1",
        "backup-receiver diff 2026-01-03 2026-01-05",
        "backup-receiver diff --as-of \"10 days ago\"",
    ],
    &[Success, Failure, Usage, Config, RepositoryUnreadable, Refused, ClosedStdout],
))]
pub struct DiffArgs {
    /// The older snapshot (named as for restore; with --as-of it is the one --as-of picks).
    #[arg(required_unless_present = "as_of")]
    pub old: Option<String>,
    /// The newer snapshot (default: latest).
    pub new: Option<String>,
    #[arg(long, value_name = "TIME", help = AS_OF_HELP)]
    pub as_of: Option<String>,
    #[command(flatten)]
    pub target: RepoArgs,
    /// Print the JSON report.
    #[arg(long)]
    pub json: bool,
}

impl DiffArgs {
    pub fn run(mut self) -> anyhow::Result<()> {
        if self.as_of.is_some() {
            if self.new.is_some() {
                return Err(CliError::Usage(
                    "with --as-of, diff takes only NEW (OLD is the one --as-of picks)".into(),
                )
                .into());
            }
            self.new = self.old.take();
        }
        let (repo, tz) = self.target.open_with_zone()?;
        let cx = context(tz, Counting::Good);
        let old = pick(&repo, &cx, self.old.as_deref(), self.as_of.as_deref())?.manifest;
        let new = pick(
            &repo,
            &cx,
            Some(self.new.as_deref().unwrap_or("latest")),
            None,
        )?
        .manifest;
        let d = browse::diff(&old, &new);
        Reporter::new("diff", self.json).ok(Some(&new.id), &d, || d.text())
    }
}

/// Write one object (or, with --database, the database dump) of a snapshot to stdout,
/// every chunk checked before it is written and the whole object's size and blake3
/// after (exit code 3 on a mismatch, after the bytes up to it). Refuses a terminal as
/// stdout unless --to-terminal.
#[derive(clap::Args, Debug)]
#[command(after_help = command_help(
    &[
        "backup-receiver dump latest briefe/1923/grete.pdf > grete.pdf",
        "backup-receiver dump --as-of \"10 days ago\" briefe/1923/grete.pdf > grete.pdf",
        "backup-receiver dump 2026-01-05 --database | pg_restore -l",
    ],
    &[Success, Failure, Usage, Damage, Config, RepositoryUnreadable, Refused, ClosedStdout],
))]
pub struct DumpArgs {
    #[arg(help = SNAPSHOT_HELP, required_unless_present = "as_of")]
    pub snapshot: Option<String>,
    /// The object's key, exactly (no glob). With --as-of it is the only argument.
    pub key: Option<String>,
    #[arg(long, value_name = "TIME", help = AS_OF_HELP)]
    pub as_of: Option<String>,
    /// The pg_dump file instead of an object.
    #[arg(long)]
    pub database: bool,
    /// Write even when stdout is a terminal.
    #[arg(long)]
    pub to_terminal: bool,
    #[command(flatten)]
    pub target: RepoArgs,
}

impl DumpArgs {
    pub fn run(mut self) -> anyhow::Result<()> {
        if self.as_of.is_some() {
            if self.key.is_some() {
                return Err(CliError::Usage(
                    "with --as-of, dump takes only KEY (the snapshot is the one --as-of picks)"
                        .into(),
                )
                .into());
            }
            self.key = self.snapshot.take();
        }
        let what = match (&self.key, self.database) {
            (Some(k), false) => Dumped::Object(k),
            (None, true) => Dumped::Database,
            (Some(_), true) => {
                return Err(CliError::Usage("give a KEY or --database, not both".into()).into())
            }
            (None, false) => {
                return Err(CliError::Usage("give the object's KEY, or --database".into()).into())
            }
        };
        if std::io::stdout().is_terminal() && !self.to_terminal {
            return Err(DumpError::Terminal.into());
        }
        let (repo, tz) = self.target.open_with_zone()?;
        let cx = context(tz, Counting::Good);
        let m = pick(&repo, &cx, self.snapshot.as_deref(), self.as_of.as_deref())?.manifest;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out::Stdout::lock());
        let bytes = dump::dump(&repo, &m, what, &mut w)
            .with_context(|| format!("dump from snapshot {}", escape(&m.id)))?;
        tracing::debug!(bytes, "dumped");
        Ok(())
    }
}
