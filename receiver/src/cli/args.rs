//! The receiver's command line: what an operator can type, with its `--help` text. Every
//! option has a description and every command examples and the rows of the exit-code
//! table it can end with (`exit::command_help`; a test holds both). The browsing,
//! restore and drill arguments live beside their commands (browse.rs, restore.rs,
//! drill.rs).

use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::{ReceiverConfig, RetentionConfig};
use clap::{Parser, Subcommand};

pub use super::browse::{DiffArgs, DumpArgs, FindArgs, LsArgs};
pub use super::drill::DrillArgs;
use super::exit::{command_help, table_help, CliError, Exit::*};
pub use super::restore::RestoreArgs;
use crate::maintenance::verify;
use crate::store::open;
use crate::store::repository::{Maintainer, Repository};

/// How a snapshot is named wherever one is (restore, ls, dump, diff, drill).
pub const SNAPSHOT_HELP: &str = "The snapshot: an id, or a unique prefix of one (20260105, \
20260105T0130); latest (the newest good snapshot); latest~N (N good snapshots before \
latest); or a day, 2026-01-05 (its newest good snapshot, in the retention time zone)";

/// `--as-of`, wherever a snapshot is named.
pub const AS_OF_HELP: &str = "Instead of naming a snapshot: the newest good one committed \
at or before TIME (receiver clock): RFC 3339 (2026-01-05T14:00:00Z), a wall-clock time of \
the retention time zone (\"2026-01-05 14:00\"; a day means its end) or a time before now \
(\"10 days ago\", \"36h ago\")";

#[derive(Parser)]
#[command(
    name = "backup-receiver",
    version,
    about = "Write-once backup receiver for the family archive (runs on heim-nas)",
    after_help = table_help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command's name in its JSON report, when `--json` was given.
    pub fn json_command(&self) -> Option<&'static str> {
        use Command as C;
        let (name, json) = match &self.command {
            C::Snapshots { json, .. } => ("snapshots", *json),
            C::Ls(a) => ("ls", a.json),
            C::Find(a) => ("find", a.json),
            C::Diff(a) => ("diff", a.json),
            C::Restore(a) => ("restore", a.json),
            C::Drill(a) => ("drill", a.json),
            C::Prune { json, .. } => ("prune", *json),
            C::Undelete { json, .. } => ("undelete", *json),
            C::Gc { json, .. } => ("gc", *json),
            C::Verify { json, .. } => ("verify", *json),
            C::Ack { json, .. } => ("ack", *json),
            C::Reject { json, .. } => ("reject", *json),
            C::Serve { .. } | C::Dump(_) | C::Certs(_) => return None,
        };
        json.then_some(name)
    }
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Run the gRPC service that accepts nightly snapshots (mutual TLS), with its own
    /// schedules for prune, garbage collection and verification.
    #[command(after_help = command_help(
        &["backup-receiver serve --config /etc/familienarchiv-backup/receiver.toml"],
        &[Success, Failure, Usage, Config, RepositoryUnreadable],
    ))]
    Serve {
        /// receiver.toml (see deploy/receiver.toml).
        #[arg(long, env = "BACKUP_RECEIVER_CONFIG")]
        config: PathBuf,
    },
    /// List the snapshots in a repository: id, commit time (in the retention time zone),
    /// sizes, status (good, suspect, acknowledged, rejected) and flags.
    #[command(after_help = command_help(
        &[
            "backup-receiver snapshots --repo /srv/backup/familienarchiv",
            "backup-receiver snapshots --json | jq -r '.snapshots[] | select(.status == \"good\") | .snapshot_id'",
        ],
        &[Success, Failure, Usage, Config, RepositoryUnreadable, ClosedStdout],
    ))]
    Snapshots {
        #[command(flatten)]
        target: RepoArgs,
        /// Print the JSON report (docs/json/schema.json) instead of a table.
        #[arg(long)]
        json: bool,
    },
    Ls(LsArgs),
    Find(FindArgs),
    Diff(DiffArgs),
    Dump(DumpArgs),
    Restore(RestoreArgs),
    Drill(DrillArgs),
    /// Apply the retention policy: move snapshots it does not keep to the trash, and
    /// remove trash entries whose grace period has passed. Counts days on the receiver's
    /// clock in the retention time zone.
    #[command(after_help = command_help(
        &["backup-receiver prune --dry-run", "backup-receiver prune --json"],
        &[Success, Failure, Usage, Config, RepositoryUnreadable, ClosedStdout],
    ))]
    Prune {
        #[command(flatten)]
        target: RepoArgs,
        /// Print every snapshot with the reasons it is kept, or "would prune"; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the JSON report (every decision, what was pruned and purged).
        #[arg(long)]
        json: bool,
    },
    /// Bring a pruned snapshot back from the trash (during its grace period) and hold it
    /// against later prunes (remove REPO/holds/<id>.json to release it).
    #[command(after_help = command_help(
        &["backup-receiver undelete 20260105T013000Z"],
        &[Success, Failure, Usage, Config, RepositoryUnreadable, Refused],
    ))]
    Undelete {
        /// The pruned snapshot's full id (`prune` printed it).
        snapshot: String,
        #[command(flatten)]
        target: RepoArgs,
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Remove chunks that no snapshot (kept or in the trash) references and that are older
    /// than retention.gc_grace or used by a session `serve` has open. Safe while backups
    /// run; an `undelete` waits while it marks.
    #[command(after_help = command_help(
        &["backup-receiver gc --dry-run", "backup-receiver gc --json"],
        &[Success, Failure, Usage, Config, RepositoryUnreadable, ClosedStdout],
    ))]
    Gc {
        #[command(flatten)]
        target: RepoArgs,
        /// Count what would be freed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Check that every chunk the snapshots reference exists (and with --read-data, that
    /// it decompresses and re-hashes correctly). Corrupt chunks are moved to
    /// REPO/quarantine so the next nightly run uploads them again. With --config, damage
    /// also sends a `/fail` ping to `monitoring.healthcheck_url`.
    #[command(after_help = command_help(
        &[
            "backup-receiver verify",
            "backup-receiver verify --read-data-subset 3/7 --json",
        ],
        &[Success, Failure, Usage, Damage, Config, RepositoryUnreadable, ClosedStdout],
    ))]
    Verify {
        #[command(flatten)]
        target: RepoArgs,
        /// Re-read and re-hash every chunk.
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Re-read the slice N of M (e.g. 3/7): scrubs the whole store over M runs.
        #[arg(long, value_name = "N/M", value_parser = verify::ReadData::parse_subset)]
        read_data_subset: Option<verify::ReadData>,
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Certificate set-up.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Acknowledge a snapshot the anomaly guard marked suspect (an id, or `latest`).
    /// It then counts as good: it no longer pins older snapshots against retention and
    /// becomes the baseline for the next comparison. Written once to REPO/acks/<id>.json.
    #[command(after_help = command_help(
        &["backup-receiver ack 20260105T013000Z --note \"bucket cleaned up on purpose\""],
        &[Success, Failure, Usage, Config, RepositoryUnreadable, Refused],
    ))]
    Ack {
        /// The suspect snapshot's id (or `latest`, the newest of any status).
        snapshot: String,
        #[command(flatten)]
        target: RepoArgs,
        /// Why the drop was expected (kept in the ack file and the audit log).
        #[arg(long)]
        note: Option<String>,
        /// Who acknowledges; defaults to $SUDO_USER, then $USER.
        #[arg(long)]
        operator: Option<String>,
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Reject a snapshot (by its id): it is taken out of every decision (delta base, guard
    /// baseline, `latest`, retention slots, the chunks the network may learn exist) and
    /// kept on disk for forensics until retention lets it go. For a snapshot a compromised
    /// sender committed. Written once to REPO/rejects/<id>.json.
    #[command(after_help = command_help(
        &["backup-receiver reject 20260106T030000Z --note \"not the nightly job\""],
        &[Success, Failure, Usage, Config, RepositoryUnreadable, Refused],
    ))]
    Reject {
        /// The snapshot's id.
        snapshot: String,
        #[command(flatten)]
        target: RepoArgs,
        /// Why (kept in the reject file and the audit log).
        #[arg(long)]
        note: Option<String>,
        /// Who rejects; defaults to $SUDO_USER, then $USER.
        #[arg(long)]
        operator: Option<String>,
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
    },
}

/// Which repository a command works on.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RepoArgs {
    /// The repository (default: `repo` in --config).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// receiver.toml: the repository, and the time zone and retention of [retention].
    #[arg(long, env = "BACKUP_RECEIVER_CONFIG")]
    pub config: Option<PathBuf>,
}

impl RepoArgs {
    /// The config (when one is given) and the repository path: --repo, else its `repo`.
    pub fn resolve(&self) -> anyhow::Result<(PathBuf, Option<ReceiverConfig>)> {
        let config = self
            .config
            .as_deref()
            .map(ReceiverConfig::load)
            .transpose()?;
        let repo = match (&self.repo, &config) {
            (Some(r), _) => r.clone(),
            (None, Some(c)) => c.repo.clone(),
            (None, None) => return Err(CliError::Usage(
                "no repository: give --repo DIR or --config FILE (or set BACKUP_RECEIVER_CONFIG)"
                    .into(),
            )
            .into()),
        };
        Ok((repo, config))
    }

    pub fn open(&self) -> anyhow::Result<Repository> {
        let (repo, _) = self.resolve()?;
        Ok(open::repository(&repo)?)
    }

    /// The repository and the retention time zone (of --config, else the default) that
    /// days and times on screen are read and shown in.
    pub fn open_with_zone(&self) -> anyhow::Result<(Repository, chrono_tz::Tz)> {
        let (repo, config) = self.resolve()?;
        Ok((open::repository(&repo)?, zone(config.as_ref())))
    }

    /// The repository with the maintain capability (prune, gc, verify, undelete).
    pub fn open_maintainer(&self) -> anyhow::Result<Maintainer> {
        let (repo, _) = self.resolve()?;
        Ok(open::maintainer(&repo)?)
    }

    /// The maintainer and the retention policy of the config (defaults without one).
    pub fn open_with_retention(&self) -> anyhow::Result<(Maintainer, RetentionConfig)> {
        let (repo, config) = self.resolve()?;
        Ok((
            open::maintainer(&repo)?,
            config.map(|c| c.retention).unwrap_or_default(),
        ))
    }
}

/// The retention time zone of `config`, or the default one.
pub fn zone(config: Option<&ReceiverConfig>) -> chrono_tz::Tz {
    config
        .map(|c| c.retention.time_zone)
        .unwrap_or_else(|| RetentionConfig::default().time_zone)
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a private CA, the receiver's server certificate and the sender's client certificate.
    #[command(after_help = command_help(
        &["backup-receiver certs init --out /etc/familienarchiv-backup --server-name heim-nas --server-ip 100.64.0.2 --sender-identity prod-vps"],
        &[Success, Failure, Usage],
    ))]
    Init {
        /// Directory to write the six files to (none of them is overwritten).
        #[arg(long)]
        out: PathBuf,
        /// DNS name the sender uses to reach the receiver (e.g. heim-nas).
        #[arg(long)]
        server_name: String,
        /// IP addresses of the receiver to include (e.g. its Tailscale address).
        #[arg(long = "server-ip")]
        server_ips: Vec<IpAddr>,
        /// Identity (CN and SAN) of the sender's client certificate.
        #[arg(long = "sender-identity", required = true)]
        sender_identities: Vec<String>,
        /// Days the sender's client certificate is valid.
        #[arg(long, default_value_t = backup_common::tls::DEFAULT_SENDER_DAYS)]
        sender_days: u32,
        /// Days the receiver's server certificate is valid.
        #[arg(long, default_value_t = backup_common::tls::DEFAULT_SERVER_DAYS)]
        server_days: u32,
        /// Days the CA is valid.
        #[arg(long, default_value_t = backup_common::tls::DEFAULT_CA_DAYS)]
        ca_days: u32,
    },
    /// Issue a new sender certificate (sender.pem, sender.key) from the CA in --ca-dir.
    #[command(after_help = command_help(
        &["backup-receiver certs issue-sender --ca-dir /etc/familienarchiv-backup --identity prod-vps --out /tmp/new-sender"],
        &[Success, Failure, Usage],
    ))]
    IssueSender {
        /// Directory holding ca.pem and ca.key, as `certs init` wrote them.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Identity (CN and SAN) of the new certificate.
        #[arg(long)]
        identity: String,
        /// Directory to write sender.pem and sender.key to (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = backup_common::tls::DEFAULT_SENDER_DAYS)]
        days: u32,
    },
    /// Print a certificate's fingerprint as `admission.revoked_certificates` lists it.
    #[command(after_help = command_help(
        &["backup-receiver certs fingerprint /etc/familienarchiv-backup/sender.pem"],
        &[Success, Failure, Usage],
    ))]
    Fingerprint {
        /// A PEM certificate file (the first certificate in it counts).
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests;
