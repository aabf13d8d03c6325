//! A consistent database dump: a REPEATABLE READ transaction exports its snapshot
//! (`pg_export_snapshot()`), exact row counts are taken in it, and `pg_dump -Fc
//! --snapshot=…` dumps that same snapshot while the transaction is held open. The dump
//! streams at once into the local dated file and through the chunker to the receiver.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;

use crate::config::{read_secret, DatabaseConfig};
use anyhow::Context;
use backup_common::chunk::{chunk_stream, ChunkError, StreamSummary};
use backup_common::manifest::ROW_COUNT_TABLES_SQL;
use tokio::io::AsyncReadExt;
use tokio_postgres::{Client, NoTls};

use crate::upload::{ChunkSink, UploadClosed};

/// Tables and their exact row counts, `schema.table` → rows.
pub type RowCounts = BTreeMap<String, u64>;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("database: {0:#}")]
    Database(anyhow::Error),
    #[error("pg_dump: {0}")]
    PgDump(String),
    #[error("local dump file {path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Upload(#[from] UploadClosed),
}

impl From<ChunkError> for DumpError {
    fn from(e: ChunkError) -> Self {
        DumpError::PgDump(format!("reading pg_dump output: {e}"))
    }
}

/// The finished dump.
#[derive(Debug, Clone)]
pub struct Dump {
    pub database: String,
    pub summary: StreamSummary,
    pub chunks: Vec<backup_common::manifest::ChunkRef>,
    pub row_counts: RowCounts,
    pub local_path: PathBuf,
}

/// Connects with the configured URL and the password from `password_file`, if any.
pub async fn connect(cfg: &DatabaseConfig) -> Result<(Client, String), DumpError> {
    let mut pg = tokio_postgres::Config::from_str(&cfg.url).map_err(|e| {
        DumpError::Database(anyhow::anyhow!(
            "database.url is not a valid postgres URL: {e}"
        ))
    })?;
    if let Some(file) = &cfg.password_file {
        let pw = read_secret("database.password_file", file)
            .map_err(|e| DumpError::Database(e.into()))?;
        pg.password(pw);
    }
    pg.connect_timeout(std::time::Duration::from_secs(10));
    let dbname = pg.get_dbname().unwrap_or("postgres").to_string();
    let (client, conn) = pg.connect(NoTls).await.map_err(|e| {
        DumpError::Database(
            anyhow::Error::new(e).context(format!("cannot connect to database {dbname:?}")),
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok((client, dbname))
}

async fn row_counts(tx: &tokio_postgres::Transaction<'_>) -> anyhow::Result<RowCounts> {
    let tables = tx
        .query(ROW_COUNT_TABLES_SQL, &[])
        .await
        .context("listing tables")?;
    let mut counts = RowCounts::new();
    for t in tables {
        let quoted: String = t.get(0);
        let name: String = t.get(1);
        let row = tx
            .query_one(&format!("SELECT count(*) FROM {quoted}"), &[])
            .await
            .with_context(|| format!("counting rows of {name}"))?;
        counts.insert(name, row.get::<_, i64>(0) as u64);
    }
    Ok(counts)
}

/// Writes everything read through it to the local dump file as well.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Dumps the database into `partial_path` and through `sink`. The caller publishes the
/// local file under its dated name once this returns Ok.
pub async fn dump(
    cfg: &DatabaseConfig,
    partial_path: &Path,
    sink: ChunkSink,
) -> Result<Dump, DumpError> {
    let (mut client, database) = connect(cfg).await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| {
            DumpError::Database(anyhow::Error::new(e).context("starting the snapshot transaction"))
        })?;
    let snapshot: String = tx
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| DumpError::Database(anyhow::Error::new(e).context("pg_export_snapshot()")))?
        .get(0);
    let row_counts = row_counts(&tx).await.map_err(DumpError::Database)?;
    tracing::info!(snapshot = %snapshot, tables = row_counts.len(), "exported database snapshot");

    let (program, prefix) = cfg.pg_dump.split_first().expect("validated non-empty");
    let dump_url = cfg.dump_url.as_deref().unwrap_or(&cfg.url);
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(prefix)
        .arg("--format=custom")
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--dbname={dump_url}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(file) = &cfg.password_file {
        let pw = read_secret("database.password_file", file)
            .map_err(|e| DumpError::Database(e.into()))?;
        cmd.env("PGPASSWORD", pw);
    }
    let mut child = cmd.spawn().map_err(|e| {
        DumpError::PgDump(format!("cannot start {program:?} (database.pg_dump): {e}"))
    })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    let partial = partial_path.to_path_buf();
    let chunker = tokio::task::spawn_blocking(move || -> Result<_, DumpError> {
        let local_err = |source| DumpError::Local {
            path: partial.clone(),
            source,
        };
        let file = std::fs::File::create(&partial).map_err(local_err)?;
        let mut tee = Tee {
            inner: tokio_util::io::SyncIoBridge::new(stdout),
            copy: std::io::BufWriter::with_capacity(1 << 20, file),
        };
        let mut chunks = Vec::new();
        let summary = chunk_stream::<_, DumpError>(&mut tee, |c| {
            chunks.push(backup_common::manifest::ChunkRef {
                id: c.id,
                len: c.data.len() as u32,
            });
            sink.send_blocking(c)?;
            Ok(())
        })?;
        let file = tee
            .copy
            .into_inner()
            .map_err(|e| local_err(e.into_error()))?;
        file.sync_all().map_err(local_err)?;
        Ok((summary, chunks))
    });
    let chunked = chunker
        .await
        .map_err(|e| DumpError::PgDump(format!("chunker task: {e}")));
    let status = child
        .wait()
        .await
        .map_err(|e| DumpError::PgDump(e.to_string()))?;
    let stderr = stderr_task.await.unwrap_or_default();
    if !status.success() {
        return Err(DumpError::PgDump(format!(
            "exited with {status}: {}",
            stderr.trim()
        )));
    }
    let (summary, chunks) = chunked??;
    // The snapshot only has to live until pg_dump has finished with it.
    tx.commit().await.map_err(|e| {
        DumpError::Database(anyhow::Error::new(e).context("closing the snapshot transaction"))
    })?;
    tracing::info!(
        bytes = summary.size,
        chunks = chunks.len(),
        "database dumped"
    );
    Ok(Dump {
        database,
        summary,
        chunks,
        row_counts,
        local_path: partial_path.to_path_buf(),
    })
}
