//! Pre-flight checks, run before any work and by `backup-sender check`: the database is
//! reachable and accepts our credentials, the bucket can be listed, the receiver is
//! reachable and admits our certificate, and the local dump directory is writable with
//! room for tonight's dump. They only read (and write one probe file in the dump
//! directory); they open no upload session, so a check leaves no trace on the receiver.

use std::time::Duration;

use crate::config::SenderConfig;
use backup_common::proto;

use crate::client::{self, retry};
use crate::database;
use crate::objects;
use crate::run::RunError;

/// One check's outcome; `Ok` carries a short description of what was found.
pub struct Check {
    pub name: &'static str,
    pub result: Result<String, RunError>,
}

/// Upper bound for any one check; the run's deadline still applies on top.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Session id no session can have: MissingChunks with it proves TLS and admission without
/// touching any state (the receiver answers FAILED_PRECONDITION).
const PROBE_SESSION: &str = "pre-flight-probe";

async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, RunError>>,
    on_timeout: impl FnOnce(anyhow::Error) -> RunError,
) -> Result<T, RunError> {
    tokio::time::timeout(CHECK_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(on_timeout(anyhow::anyhow!(
                "{what}: no answer within {CHECK_TIMEOUT:?}"
            )))
        })
}

/// Connects and returns the database's size in bytes.
async fn database(cfg: &SenderConfig) -> Result<(String, u64), RunError> {
    let (client, name) = database::connect(&cfg.database).await?;
    let row = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(|e| RunError::Source(anyhow::Error::new(e).context("pg_database_size()")))?;
    Ok((name, row.get::<_, i64>(0).max(0) as u64))
}

async fn bucket(cfg: &SenderConfig) -> Result<String, RunError> {
    let s3 = objects::client(&cfg.objects)?;
    objects::check_bucket(&s3, &cfg.objects.bucket).await?;
    Ok(format!(
        "bucket {:?} at {} is listable",
        cfg.objects.bucket, cfg.objects.endpoint
    ))
}

async fn receiver(cfg: &SenderConfig) -> Result<String, RunError> {
    let client = client::connect(&cfg.receiver).map_err(RunError::Config)?;
    let answer = retry("MissingChunks (pre-flight)", cfg.run.retries.get(), || {
        let mut c = client.clone();
        let req = proto::MissingChunksRequest {
            session_id: PROBE_SESSION.into(),
            ids: Vec::new(),
        };
        async move { c.missing_chunks(req).await.map(|_| ()) }
    })
    .await;
    match answer {
        Ok(()) => {}
        // The probe session is unknown: the receiver admitted us and answered.
        Err(s) if crate::session::is_lost_session(&s) => {}
        Err(s) if client::is_transient(&s) => {
            return Err(RunError::Receiver(anyhow::anyhow!(
                "cannot reach {}: {} ({:?})",
                cfg.receiver.url,
                s.message(),
                s.code()
            )))
        }
        Err(s) => {
            return Err(RunError::Receiver(anyhow::anyhow!(
                "{} refused us: {} ({:?})",
                cfg.receiver.url,
                s.message(),
                s.code()
            )))
        }
    }
    Ok(format!(
        "{} is reachable and accepts our certificate",
        cfg.receiver.url
    ))
}

/// The dump directory exists (created if not), takes a file, and has at least `expected`
/// bytes free.
fn local_dir(cfg: &SenderConfig, expected: Option<u64>) -> Result<String, RunError> {
    let dir = &cfg.database.local_dir;
    let local = |what: &str, e: std::io::Error| {
        RunError::Local(anyhow::anyhow!("{}: {what}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| local("cannot create", e))?;
    let probe = dir.join(".pre-flight-probe");
    std::fs::write(&probe, b"probe")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| local("not writable", e))?;
    let free = backup_common::disk::free_bytes(dir).map_err(|e| local("statvfs", e))?;
    match expected {
        Some(need) if free < need => Err(RunError::Local(anyhow::anyhow!(
            "{}: only {free} bytes free, the dump is expected to need up to {need} bytes \
             (the database's size)",
            dir.display()
        ))),
        Some(need) => Ok(format!(
            "{} is writable, {free} bytes free (dump expected to need up to {need})",
            dir.display()
        )),
        None => Ok(format!(
            "{} is writable, {free} bytes free (dump size unknown: database check failed)",
            dir.display()
        )),
    }
}

/// Runs every check (the network ones concurrently) and reports each.
pub async fn checks(cfg: &SenderConfig) -> Vec<Check> {
    let (db, bucket, receiver) = tokio::join!(
        bounded("database", database(cfg), RunError::Source),
        bounded("bucket", bucket(cfg), RunError::Source),
        bounded("receiver", receiver(cfg), RunError::Receiver),
    );
    // pg_database_size is an upper bound for a compressed custom-format dump.
    let expected = db.as_ref().ok().map(|(_, size)| *size);
    let local = local_dir(cfg, expected);
    vec![
        Check {
            name: "database",
            result: db.map(|(name, size)| {
                format!("connected to {name:?} and authenticated; database size {size} bytes")
            }),
        },
        Check {
            name: "bucket",
            result: bucket,
        },
        Check {
            name: "receiver",
            result: receiver,
        },
        Check {
            name: "local dump directory",
            result: local,
        },
    ]
}

/// The failure a run reports: a configuration error (a missing secret or certificate file)
/// first, since it explains the rest; otherwise the first in the order above.
pub fn decisive(failures: Vec<RunError>) -> Option<RunError> {
    let config = failures
        .iter()
        .position(|e| matches!(e, RunError::Config(_)));
    let mut failures = failures;
    match config {
        Some(i) => Some(failures.swap_remove(i)),
        None => failures.into_iter().next(),
    }
}

/// Runs the checks, logs each, and fails with the [`decisive`] failure.
pub async fn require(cfg: &SenderConfig) -> Result<(), RunError> {
    let mut failures = Vec::new();
    for check in checks(cfg).await {
        match check.result {
            Ok(found) => tracing::info!(check = check.name, found = %found, "pre-flight ok"),
            Err(e) => {
                tracing::error!(check = check.name, error = %e, "pre-flight failed");
                failures.push(e);
            }
        }
    }
    decisive(failures).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_error_outranks_the_failures_it_causes() {
        let e = decisive(vec![
            RunError::Source(anyhow::anyhow!("db down")),
            RunError::Config(anyhow::anyhow!("objects.access_key_file")),
            RunError::Receiver(anyhow::anyhow!("unreachable")),
        ])
        .unwrap();
        assert_eq!(e.exit_code(), 2);
        let e = decisive(vec![
            RunError::Source(anyhow::anyhow!("db down")),
            RunError::Local(anyhow::anyhow!("full")),
        ])
        .unwrap();
        assert_eq!(e.exit_code(), 3);
        assert!(decisive(Vec::new()).is_none());
    }
}
