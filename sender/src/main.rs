//! `backup-sender`: argument parsing and exit codes only; the work is in the library.
//!
//! Exit codes (documented in `docs/MONITORING.md`; one place maps them, [`RunError`]):
//! 0 success (the receiver confirmed the commit), 2 configuration, 3 source (database or
//! bucket), 4 receiver, 5 local backup directory, 6 timeout (`run.deadline`), 7 suspect
//! (committed, but the receiver flagged the snapshot suspect; the summary is still printed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backup_sender::config::SenderConfig;
use backup_sender::healthcheck;
use backup_sender::log_tail::{self, LogTail};
use backup_sender::preflight;
use backup_sender::run::RunError;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "backup-sender",
    version,
    about = "Nightly backup of the family archive (database dump + bucket) to the receiver"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one nightly backup: pre-flight checks, then dump, sync and commit, pinging the
    /// configured healthcheck at start and on success or failure.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Only run the pre-flight checks (database, bucket, receiver, local dump directory)
    /// and print each with ok or FAIL. Sends no healthcheck ping and changes nothing.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logging(tail: &LogTail) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if tty { fmt.boxed() } else { fmt.json().boxed() };
    // The fail ping's log tail: our own events at info whatever RUST_LOG says.
    let tail_filter = Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target("backup_sender", LevelFilter::INFO)
        .with_target("backup_common", LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(tail.clone().with_filter(tail_filter))
        .init();
}

async fn run_cmd(config: PathBuf, json: bool, tail: &LogTail) -> ExitCode {
    // Without a readable config there is no healthcheck URL to report to: the exit code
    // (and the missing success ping) must do.
    let result = match SenderConfig::load(&config) {
        Ok(cfg) => healthcheck::reported_run(&cfg, tail).await,
        Err(e) => Err(RunError::Config(e.into())),
    };
    let print = |summary: &backup_sender::run::Summary| {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(summary).expect("summary serializes")
            );
        } else {
            println!("{summary}");
        }
    };
    match result {
        Ok(summary) => {
            print(&summary);
            ExitCode::SUCCESS
        }
        Err(e) => {
            if let RunError::Suspect(summary) = &e {
                print(summary);
            }
            backup_common::eprintln_quiet!("backup failed ({}): {e}", e.kind());
            ExitCode::from(e.exit_code())
        }
    }
}

async fn check_cmd(config: PathBuf) -> ExitCode {
    let cfg = match SenderConfig::load(&config) {
        Ok(cfg) => cfg,
        Err(e) => {
            // The line names the check once ("FAIL configuration: …"), not the wrapper too.
            println!("FAIL configuration: {}", backup_common::error_chain(&e));
            return ExitCode::from(RunError::Config(e.into()).exit_code());
        }
    };
    println!("ok   configuration: {}", config.display());
    let mut failures = Vec::new();
    for check in preflight::checks(&cfg).await {
        match check.result {
            Ok(found) => println!("ok   {}: {found}", check.name),
            Err(e) => {
                println!("FAIL {}: {e}", check.name);
                failures.push(e);
            }
        }
    }
    preflight::decisive(failures).map_or(ExitCode::SUCCESS, |e| ExitCode::from(e.exit_code()))
}

fn main() -> ExitCode {
    backup_common::limit_malloc_arenas();
    backup_common::tls::install_crypto_provider();
    let tail = LogTail::new(log_tail::DEFAULT_LINES);
    init_logging(&tail);
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = rt.block_on(async {
        match cli.command {
            Command::Run { config, json } => run_cmd(config, json, &tail).await,
            Command::Check { config } => check_cmd(config).await,
        }
    });
    // An abandoned run may leave a blocking reader on a pipe that a grandchild of pg_dump
    // still holds open; do not wait for it.
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}
