//! `drill`: the restore drill run through the operator layer; a drill that passed is
//! recorded (retention keeps the newest drilled snapshot), and the report printed.

use std::path::PathBuf;

use clap::Args;

use crate::config::ReceiverConfig;

use super::args::{zone, SNAPSHOT_HELP};
use super::exit::{command_help, CliError, Exit::*};
use super::report::Reporter;
use crate::clock;
use crate::operator::drill;
use crate::store::verdicts;

/// Restore drill: restore a snapshot into a sandbox and check it (row counts, sanity
/// queries, every object's hash). The dump is restored as a role that is not a
/// superuser; as root, the sandbox runs as [drill] sandbox_user with no network.
/// Exit code 0 only when everything matched; 7 when the drill ran and did not pass.
#[derive(Args)]
#[command(after_help = command_help(
    &[
        "backup-receiver drill --config /etc/familienarchiv-backup/receiver.toml --older-than 30d",
        "backup-receiver drill latest~1 --json",
        "backup-receiver drill 20260105T013000Z --allow-suspect",
    ],
    &[Success, Failure, Usage, Config, RepositoryUnreadable, DrillFailed, Refused],
))]
pub struct DrillArgs {
    #[arg(conflicts_with = "older_than", help = format!("{SNAPSHOT_HELP} (default: latest)"))]
    pub snapshot: Option<String>,
    /// Allow drilling a snapshot that is suspect or rejected (named by its id).
    #[arg(long, requires = "snapshot")]
    pub allow_suspect: bool,
    /// The repository; default: `repo` from --config.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// receiver.toml, for its [drill] section (and `repo`, and the retention time zone).
    #[arg(long, env = "BACKUP_RECEIVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Drill the newest snapshot at least this old (receiver's clock), e.g. `30d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Print the JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn drill(args: DrillArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Some(ReceiverConfig::load(path)?),
        None => None,
    };
    let repo =
        match (args.repo, &config) {
            (Some(repo), _) => repo,
            (None, Some(c)) => c.repo.clone(),
            (None, None) => return Err(CliError::Usage(
                "no repository: give --repo DIR or --config FILE (or set BACKUP_RECEIVER_CONFIG)"
                    .into(),
            )
            .into()),
        };
    let selector = match (args.snapshot, args.older_than) {
        (_, Some(age)) => drill::Selector::OlderThan(age),
        (name, None) => drill::Selector::Named {
            name: name.unwrap_or_else(|| "latest".into()),
            allow_suspect: args.allow_suspect,
        },
    };
    // What the sandbox's OS user must not read, besides the repository.
    let mut private_paths: Vec<PathBuf> = args.config.iter().cloned().collect();
    private_paths.extend(config.as_ref().map(|c| c.tls.server_key.clone()));
    let repo_path = repo.clone();
    let opts = drill::DrillOptions {
        repo,
        selector,
        time_zone: zone(config.as_ref()),
        config: config.map(|c| c.drill).unwrap_or_default(),
        now: clock::from_env()(),
        private_paths,
    };
    let now = opts.now;
    let report = drill::run_and_ping(&opts, super::shutdown_signal()).await?;
    if report.passed {
        // Retention keeps the newest snapshot that passed a drill ("drilled").
        let repo = crate::store::open::maintainer(&repo_path)?;
        verdicts::record_drill_passed(&repo, &report.snapshot, "restore drill passed", now)?;
    }
    let failed = (!report.passed).then(|| {
        anyhow::Error::from(CliError::DrillFailed {
            snapshot: report.snapshot.clone(),
            first: report
                .failures
                .first()
                .cloned()
                .unwrap_or_else(|| "see the report".into()),
        })
    });
    Reporter::new("drill", args.json).finish(
        Some(&report.snapshot),
        &report,
        || report.text(),
        failed,
    )
}
