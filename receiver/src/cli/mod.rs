//! The receiver's commands as an operator runs them: [`args`] is the command line and its
//! `--help`, [`exit`] the one table of exit codes. Each command file calls the layer that
//! does the work (operator, maintenance, service) and prints its report; none of them
//! touches the repository except through those layers.

pub mod args;
mod certs;
mod drill;
pub mod exit;
mod maintenance;
mod operator;
mod restore;

use backup_common::config::ReceiverConfig;
use backup_common::tls::Lifetimes;

use crate::clock;
use crate::maintenance::verify;
use crate::service::server;
use args::{CertsCommand, Cli, Command};

/// Runs one command to its end.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = ReceiverConfig::load(&config)?;
            server::serve(config, clock::from_env(), shutdown_signal()).await
        }
        Command::Snapshots { repo, json } => operator::list(&repo, json),
        Command::Restore(args) => restore::restore(args).await,
        Command::Drill(args) => drill::drill(args).await,
        Command::Ack {
            snapshot,
            repo,
            note,
            operator,
        } => operator::ack(&snapshot, &repo, note.as_deref(), operator),
        Command::Reject {
            snapshot,
            repo,
            note,
            operator,
        } => operator::reject(&snapshot, &repo, note.as_deref(), operator),
        Command::Prune { target, dry_run } => maintenance::prune(target, dry_run).await,
        Command::Undelete { snapshot, repo } => maintenance::undelete(&snapshot, &repo),
        Command::Gc { target, dry_run } => maintenance::gc(target, dry_run).await,
        Command::Verify {
            repo,
            read_data,
            read_data_subset,
            json,
        } => {
            let read = match (read_data, read_data_subset) {
                (true, _) => verify::ReadData::All,
                (false, Some(subset)) => subset,
                (false, None) => verify::ReadData::None,
            };
            maintenance::verify(&repo, read, json).await
        }
        Command::Certs(CertsCommand::Init {
            out,
            server_name,
            server_ips,
            sender_identities,
            sender_days,
            server_days,
            ca_days,
        }) => certs::init(certs::InitArgs {
            out: &out,
            server_name: &server_name,
            server_ips: &server_ips,
            sender_identities: &sender_identities,
            lifetimes: Lifetimes {
                ca_days,
                server_days,
                sender_days,
            },
        }),
        Command::Certs(CertsCommand::IssueSender {
            ca_dir,
            identity,
            out,
            days,
        }) => certs::issue_sender(&ca_dir, &identity, &out, days),
        Command::Certs(CertsCommand::Fingerprint { file }) => certs::fingerprint(&file),
    }
}

/// Resolves on SIGTERM or Ctrl-C: `serve` shuts down, a drill removes its sandbox.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
