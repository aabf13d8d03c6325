//! `backup-receiver`: argument parsing and exit codes only; the commands are in the
//! library ([`backup_receiver::cli`]), and one table maps their errors to exit codes
//! ([`backup_receiver::cli::exit`], shown by `--help` and in docs/DEPLOYMENT.md).

use std::process::ExitCode;

use backup_common::term::escape_lines;
use backup_receiver::cli::{self, args::Cli, exit};
use clap::Parser;

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
    backup_receiver::operator::out::quiet_broken_pipe();
    // Usage errors exit 2 (clap's code, the table's too).
    let cli = Cli::parse();
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            backup_common::eprintln_quiet!(
                "error: {}",
                escape_lines(&backup_common::error_chain(e.as_ref()))
            );
            ExitCode::from(exit::classify(&e).code())
        }
    }
}
