//! `backup-sender`: argument parsing and exit codes only; the work is in the library.
//!
//! Exit codes (documented in `docs/MONITORING.md` and `--help`; one place maps them,
//! [`RunError`]): 0 success (the receiver confirmed the commit), 2 configuration, 3 source
//! (database or bucket), 4 receiver, 5 local backup directory, 6 timeout
//! (`run.deadline`), 7 suspect (committed, but the receiver flagged the snapshot suspect;
//! the summary is still printed). `run --json` prints one report envelope
//! (backup_common::report, docs/json/schema.json) whatever the outcome.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backup_common::report::{self, Envelope, ErrorBody};
use backup_sender::config::SenderConfig;
use backup_sender::healthcheck;
use backup_sender::log_tail::{self, LogTail};
use backup_sender::preflight;
use backup_sender::run::RunError;
use clap::{Parser, Subcommand};

/// The exit codes, as `--help` shows them (`RunError::exit_code` maps them).
const EXIT_CODES: &str = "\
Exit codes:
  0  success: the receiver confirmed the commit (check: every check passed)
  1  internal error
  2  configuration: sender.toml or a file it names is missing or invalid
  3  source: the database or the bucket failed
  4  receiver: unreachable, refused us, or failed the commit
  5  local backup directory: cannot write or rotate the local dump
  6  timeout: the run did not finish within run.deadline
  7  suspect: committed, but the receiver flagged the snapshot suspect";

#[derive(Parser)]
#[command(
    name = "backup-sender",
    version,
    about = "Nightly backup of the family archive (database dump + bucket) to the receiver",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one nightly backup: pre-flight checks, then dump, sync and commit, pinging the
    /// configured healthcheck at start and on success or failure.
    #[command(after_help = format!(
        "Examples:\n  backup-sender run --config /etc/familienarchiv-backup/sender.toml\n  \
         backup-sender run --config sender.toml --json | jq .snapshot_id\n\n{EXIT_CODES}"
    ))]
    Run {
        /// sender.toml (see deploy/sender.toml).
        #[arg(long)]
        config: PathBuf,
        /// Print the JSON report on stdout (docs/json/schema.json), also when the run fails.
        #[arg(long)]
        json: bool,
    },
    /// Only run the pre-flight checks (database, bucket, receiver, local dump directory)
    /// and print each with ok or FAIL. Sends no healthcheck ping and changes nothing.
    #[command(after_help = format!(
        "Examples:\n  backup-sender check --config /etc/familienarchiv-backup/sender.toml\n\n{EXIT_CODES}"
    ))]
    Check {
        /// sender.toml (see deploy/sender.toml).
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
    // Log lines go around the progress bar (backup_common::bar_log), never onto it.
    let fmt =
        tracing_subscriber::fmt::layer().with_writer(backup_common::bar_log::StderrThroughBar);
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
    // A run that ended early (deadline, error) leaves no bar for the lines below to go around.
    backup_common::bar_log::hide_all();
    let error_body = |e: &RunError| ErrorBody {
        kind: e.kind().into(),
        exit_code: e.exit_code(),
        message: e.to_string(),
    };
    let print = |summary: &backup_sender::run::Summary, error: Option<ErrorBody>| {
        let text = if json {
            report::to_text(&Envelope {
                command: "run",
                ok: error.is_none(),
                snapshot_id: Some(&summary.snapshot_id),
                error,
                body: summary,
            })
        } else {
            format!("{summary}\n")
        };
        print_stdout(&text);
    };
    match result {
        Ok(summary) => {
            print(&summary, None);
            ExitCode::SUCCESS
        }
        Err(e) => {
            match &e {
                RunError::Suspect(summary) => print(summary, Some(error_body(&e))),
                _ if json => {
                    print_stdout(&report::to_text(&report::failure("run", error_body(&e))))
                }
                _ => {}
            }
            backup_common::eprintln_quiet!("backup failed ({}): {e}", e.kind());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes to stdout; a reader that went away is not the run's failure (the exit code
/// and the healthcheck still say how the run went).
fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
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
