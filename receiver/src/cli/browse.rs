//! The browsing commands (`ls`, `find`, `diff`, `dump`) and the repository choice every
//! repository command shares (`--repo`, `--config`, `BACKUP_RECEIVER_CONFIG`). All of
//! them only read. Text output escapes every peer-supplied name; `--json` prints it raw
//! (serde escapes control characters).

use std::io::IsTerminal;

use anyhow::Context;
use backup_common::manifest::Manifest;
use backup_common::term::escape;

use super::args::RepoArgs;
use crate::operator::browse;
use crate::operator::dump::{self, DumpError, Dumped};
use crate::operator::glob::KeyFilter;
use crate::operator::out;
use crate::operator::progress::Progress;
use crate::store::repository::Repository;

/// A snapshot for browsing: an id (any status) or `latest` (the newest good one).
fn snapshot(repo: &Repository, name: &str) -> anyhow::Result<Manifest> {
    Ok(repo.resolve(name, true)?)
}

/// List the objects of a snapshot: size, content hash, and new/changed/unchanged
/// against the snapshot committed before it (named in the output).
#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Snapshot id, or `latest` (the newest good snapshot).
    pub snapshot: String,
    /// Only keys starting with this (plain text, not a glob).
    pub prefix: Option<String>,
    #[command(flatten)]
    pub target: RepoArgs,
    /// Add the ETag the sender reported and the chunk count.
    #[arg(long)]
    pub long: bool,
    #[arg(long)]
    pub json: bool,
}

impl LsArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let repo = self.target.open()?;
        let m = snapshot(&repo, &self.snapshot)?;
        let l = browse::ls(&repo, &m, self.prefix.as_deref(), self.long)?;
        if self.json {
            out::print_json(&l)
        } else {
            Ok(out::print(&l.text())?)
        }
    }
}

/// Find every snapshot holding a key that matches GLOB: each distinct version (size,
/// hash) with the first and last snapshot holding it. `*` stays within one path
/// component, `**` crosses `/` (e.g. `**/grete.pdf`, `briefe/1923/**`).
#[derive(clap::Args, Debug)]
pub struct FindArgs {
    pub glob: String,
    #[command(flatten)]
    pub target: RepoArgs,
    #[arg(long)]
    pub json: bool,
}

impl FindArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let repo = self.target.open()?;
        let filter = KeyFilter::new(std::slice::from_ref(&self.glob), &[])?;
        let progress = Progress::for_stderr();
        let found = browse::find(&repo, &self.glob, &filter, &progress)?;
        if self.json {
            out::print_json(&found)
        } else {
            Ok(out::print(&found.text())?)
        }
    }
}

/// Show what changed between two snapshots: objects added, removed and changed, bytes,
/// and each table's row-count change (the receiver's own count where it has one).
#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    pub old: String,
    pub new: String,
    #[command(flatten)]
    pub target: RepoArgs,
    #[arg(long)]
    pub json: bool,
}

impl DiffArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let repo = self.target.open()?;
        let d = browse::diff(&snapshot(&repo, &self.old)?, &snapshot(&repo, &self.new)?);
        if self.json {
            out::print_json(&d)
        } else {
            Ok(out::print(&d.text())?)
        }
    }
}

/// Write one object (or, with --database, the database dump) of a snapshot to stdout,
/// every chunk checked before it is written and the whole object's size and blake3
/// after (exit 1 on a mismatch). Refuses a terminal as stdout unless --to-terminal.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id, or `latest` (the newest good snapshot).
    pub snapshot: String,
    /// The object's key, exactly.
    #[arg(required_unless_present = "database", conflicts_with = "database")]
    pub key: Option<String>,
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
    pub fn run(self) -> anyhow::Result<()> {
        if std::io::stdout().is_terminal() && !self.to_terminal {
            return Err(DumpError::Terminal.into());
        }
        let repo = self.target.open()?;
        let m = snapshot(&repo, &self.snapshot)?;
        let what = match &self.key {
            Some(k) => Dumped::Object(k),
            None => Dumped::Database,
        };
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out::Stdout::lock());
        let bytes = dump::dump(&repo, &m, what, &mut w)
            .with_context(|| format!("dump from snapshot {}", escape(&m.id)))?;
        tracing::debug!(bytes, "dumped");
        Ok(())
    }
}
