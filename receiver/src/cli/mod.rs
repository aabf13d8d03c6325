//! The receiver's commands as an operator runs them: [`args`] is the command line and its
//! `--help`, [`exit`] the one table of exit codes, [`report`] the one way a command
//! prints its report (text, or the JSON envelope). Each command file calls the layer that
//! does the work (operator, maintenance, service) and prints its report; none of them
//! touches the repository except through those layers.

pub mod args;
mod browse;
mod certs;
mod drill;
pub mod exit;
mod maintenance;
mod operator;
mod pick;
pub mod report;
mod restore;

use crate::config::ReceiverConfig;
use backup_common::tls::Lifetimes;

use crate::clock;
use crate::maintenance::verify;
use crate::serve;
use args::{CertsCommand, Cli, Command};

/// Runs one command to its end.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = ReceiverConfig::load(&config)?;
            serve::serve(config, clock::from_env(), shutdown_signal()).await
        }
        Command::Snapshots { target, json } => operator::list(&target, json),
        Command::Ls(args) => args.run(),
        Command::Find(args) => args.run(),
        Command::Diff(args) => args.run(),
        Command::Dump(args) => args.run(),
        Command::Restore(args) => restore::restore(args).await,
        Command::Drill(args) => drill::drill(args).await,
        Command::Ack {
            snapshot,
            target,
            note,
            operator,
            json,
        } => operator::ack(&snapshot, &target, note.as_deref(), operator, json),
        Command::Reject {
            snapshot,
            target,
            note,
            operator,
            json,
        } => operator::reject(&snapshot, &target, note.as_deref(), operator, json),
        Command::Prune {
            target,
            dry_run,
            json,
        } => maintenance::prune(target, dry_run, json).await,
        Command::Undelete {
            snapshot,
            target,
            json,
        } => maintenance::undelete(&snapshot, &target, json),
        Command::Gc {
            target,
            dry_run,
            json,
        } => maintenance::gc(target, dry_run, json).await,
        Command::Verify {
            target,
            read_data,
            read_data_subset,
            json,
        } => {
            let read = match (read_data, read_data_subset) {
                (true, _) => verify::ReadData::All,
                (false, Some(subset)) => subset,
                (false, None) => verify::ReadData::None,
            };
            maintenance::verify(&target, read, json).await
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
