//! `drill`: the restore drill run through the operator layer; a drill that passed is
//! recorded (retention keeps the newest drilled snapshot), and the report printed.

use std::path::PathBuf;

use crate::config::ReceiverConfig;

use super::args::DrillArgs;
use super::exit::CliError;
use crate::clock;
use crate::operator::drill;
use crate::store::verdicts;

pub async fn drill(args: DrillArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Some(ReceiverConfig::load(path)?),
        None => None,
    };
    let repo = match (args.repo, &config) {
        (Some(repo), _) => repo,
        (None, Some(c)) => c.repo.clone(),
        (None, None) => return Err(CliError::Usage("give --repo or --config".into()).into()),
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
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if !report.passed {
        return Err(CliError::DrillFailed {
            snapshot: report.snapshot.clone(),
            first: report
                .failures
                .first()
                .cloned()
                .unwrap_or_else(|| "see the report".into()),
        }
        .into());
    }
    Ok(())
}
