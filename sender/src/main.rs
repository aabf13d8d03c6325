//! `backup-sender`: argument parsing and exit codes only; the work is in the library.
//!
//! Exit codes: 0 success, 2 configuration, 3 source (database or bucket), 4 receiver,
//! 5 local backup directory, 6 timeout.

use std::path::PathBuf;
use std::process::ExitCode;

use backup_common::config::SenderConfig;
use backup_sender::run::{self, RunError};
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
    /// Run one nightly backup.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        builder.init();
    } else {
        builder.json().init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    backup_common::limit_malloc_arenas();
    backup_common::tls::install_crypto_provider();
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, json } => {
            let result = match SenderConfig::load(&config) {
                Ok(cfg) => run::run(&cfg).await,
                Err(e) => Err(RunError::Config(e.into())),
            };
            match result {
                Ok(summary) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&summary).expect("summary serializes")
                        );
                    } else {
                        println!("{summary}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("backup failed ({}): {e}", e.kind());
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
