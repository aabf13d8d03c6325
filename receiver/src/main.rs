//! `backup-receiver`: argument parsing and exit codes only; the commands are in the
//! library ([`backup_receiver::cli`]), and one table maps their errors to exit codes
//! ([`backup_receiver::cli::exit`], shown by `--help` and in docs/DEPLOYMENT.md).

use std::process::ExitCode;

use backup_common::term::escape_lines;
use backup_receiver::cli::{self, args::Cli, exit, report};
use clap::Parser;

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Log lines go around a progress bar, and a closed stderr never panics.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(backup_common::bar_log::StderrThroughBar);
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
    backup_receiver::operator::out::quiet_broken_pipe();
    // Usage errors exit 2 (clap's code, the table's too).
    let cli = Cli::parse();
    let json = cli.json_command();
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            backup_common::eprintln_quiet!(
                "error: {}",
                escape_lines(&backup_common::error_chain(e.as_ref()))
            );
            // With --json, a command that failed before its report still reports.
            if let Some(command) = json.filter(|_| !report::printed()) {
                report::print_failure(command, &e);
            }
            ExitCode::from(exit::classify(&e).code())
        }
    }
}
