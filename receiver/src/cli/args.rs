//! The receiver's command line: what an operator can type, with its `--help` text.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::{ReceiverConfig, RetentionConfig};
use clap::{Args, Parser, Subcommand};

use super::browse::{DiffArgs, DumpArgs, FindArgs, LsArgs};
use super::exit::{CliError, EXIT_CODES_HELP};
use crate::maintenance::verify;
use crate::store::open;
use crate::store::repository::{Maintainer, Repository};

#[derive(Parser)]
#[command(
    name = "backup-receiver",
    version,
    about = "Write-once backup receiver for the family archive (runs on heim-nas)",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Run the gRPC service that accepts nightly snapshots (mutual TLS).
    Serve {
        #[arg(long, env = "BACKUP_RECEIVER_CONFIG")]
        config: PathBuf,
    },
    /// List the snapshots in a repository.
    Snapshots {
        #[command(flatten)]
        target: RepoArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    Ls(LsArgs),
    Find(FindArgs),
    Diff(DiffArgs),
    Dump(DumpArgs),
    /// Restore a snapshot (an id, or `latest`). Every byte is checked against the manifest.
    /// Files are written 0600, directories 0700, only into a new or empty directory and
    /// never through a link. Exit code 4 when some objects could not be restored (each
    /// is named; the others are restored).
    Restore(RestoreArgs),
    /// Restore drill: restore a snapshot into a sandbox and check it (row counts, sanity
    /// queries, every object's hash). The dump is restored as a role that is not a
    /// superuser; as root, the sandbox runs as [drill] sandbox_user with no network.
    /// Exit 0 only when everything matched; 7 when the drill ran and did not pass.
    Drill(DrillArgs),
    /// Apply the retention policy: move snapshots it does not keep to the trash, and
    /// remove trash entries whose grace period has passed. Uses the receiver's clock.
    Prune {
        #[command(flatten)]
        target: RepoArgs,
        /// Print every snapshot with the reasons it is kept, or "would prune"; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring a pruned snapshot back from the trash (during its grace period) and hold it
    /// against later prunes (remove REPO/holds/<id>.json to release it).
    Undelete {
        snapshot: String,
        #[command(flatten)]
        target: RepoArgs,
    },
    /// Remove chunks that no snapshot (kept or in the trash) references and that are older
    /// than retention.gc_grace or used by a session `serve` has open. Safe while backups
    /// run; an `undelete` waits while it marks.
    Gc {
        #[command(flatten)]
        target: RepoArgs,
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that every chunk the snapshots reference exists (and with --read-data, that
    /// it decompresses and re-hashes correctly). Corrupt chunks are moved to
    /// REPO/quarantine so the next nightly run uploads them again.
    /// Exit code 3 when damage was found.
    /// With --config, damage also sends a `/fail` ping to `monitoring.healthcheck_url`.
    Verify {
        #[command(flatten)]
        target: RepoArgs,
        /// Re-read and re-hash every chunk.
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Re-read the slice N of M (e.g. 3/7): scrubs the whole store over M runs.
        #[arg(long, value_name = "N/M", value_parser = verify::ReadData::parse_subset)]
        read_data_subset: Option<verify::ReadData>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Certificate set-up.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Acknowledge a snapshot the anomaly guard marked suspect (an id, or `latest`).
    /// It then counts as good: it no longer pins older snapshots against retention and
    /// becomes the baseline for the next comparison. Written once to REPO/acks/<id>.json.
    Ack {
        snapshot: String,
        #[command(flatten)]
        target: RepoArgs,
        /// Why the drop was expected (kept in the ack file and the audit log).
        #[arg(long)]
        note: Option<String>,
        /// Who acknowledges; defaults to $SUDO_USER, then $USER.
        #[arg(long)]
        operator: Option<String>,
    },
    /// Reject a snapshot (by its id): it is taken out of every decision (delta base, guard
    /// baseline, `latest`, retention slots, the chunks the network may learn exist) and
    /// kept on disk for forensics until retention lets it go. For a snapshot a compromised
    /// sender committed. Written once to REPO/rejects/<id>.json.
    Reject {
        snapshot: String,
        #[command(flatten)]
        target: RepoArgs,
        /// Why (kept in the reject file and the audit log).
        #[arg(long)]
        note: Option<String>,
        /// Who rejects; defaults to $SUDO_USER, then $USER.
        #[arg(long)]
        operator: Option<String>,
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

#[derive(Args)]
pub struct RestoreArgs {
    /// Snapshot id, or `latest` (the newest good snapshot).
    pub snapshot: String,
    #[command(flatten)]
    pub target: RepoArgs,
    /// Restore only the objects whose key matches one of these globs (repeatable; `*`
    /// stays within a path component, `**` crosses `/`: `briefe/1923/**`).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out the objects whose key matches one of these globs (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// With --objects-to-s3: replace an object the bucket holds with other content
    /// (without it such objects are left alone and listed; exit code 4).
    #[arg(long, requires = "objects_to_s3")]
    pub overwrite: bool,
    /// Let `latest` mean the newest snapshot whatever its status. (A snapshot named by
    /// its id is restored whatever its status, with a warning when it is not good.)
    #[arg(long)]
    pub allow_suspect: bool,
    /// Write the exact database dump file here (must not exist, not even as a link).
    #[arg(long)]
    pub dump_out: Option<PathBuf>,
    /// Write every object below this directory, at its key. The directory must be new
    /// or empty (and yours); anything in the way is refused, never followed or replaced.
    #[arg(long)]
    pub objects_out: Option<PathBuf>,
    /// Stream the dump into pg_restore against this database URL.
    #[arg(long)]
    pub pg_restore: Option<String>,
    /// pg_restore program (or command prefix, space separated).
    #[arg(long, default_value = "pg_restore")]
    pub pg_restore_bin: String,
    /// Extra pg_restore arguments, e.g. "--clean --if-exists --no-owner" (space separated).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub pg_restore_args: String,
    /// Upload every object to an S3 bucket (needs the --s3-* options).
    #[arg(long)]
    pub objects_to_s3: bool,
    #[arg(long, requires = "objects_to_s3")]
    pub s3_endpoint: Option<String>,
    #[arg(long, requires = "objects_to_s3")]
    pub s3_bucket: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(long, requires = "objects_to_s3")]
    pub s3_access_key_file: Option<PathBuf>,
    #[arg(long, requires = "objects_to_s3")]
    pub s3_secret_key_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct DrillArgs {
    /// Snapshot id, or `latest` (the default: the newest good snapshot).
    #[arg(conflicts_with = "older_than")]
    pub snapshot: Option<String>,
    /// Allow drilling a snapshot that is suspect or rejected (named by its id).
    #[arg(long, requires = "snapshot")]
    pub allow_suspect: bool,
    /// The repository; default: `repo` from --config.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// receiver.toml, for its [drill] section (and `repo`).
    #[arg(long, env = "BACKUP_RECEIVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Drill the newest snapshot at least this old (receiver's clock), e.g. `30d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a private CA, the receiver's server certificate and the sender's client certificate.
    Init {
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
    Fingerprint {
        /// A PEM certificate file (the first certificate in it counts).
        file: PathBuf,
    },
}
