//! The restore drill: proves that a snapshot restores, the way an operator would check it,
//! in a sandbox that touches nothing else. It restores the dump into a throwaway PostgreSQL
//! cluster (or a fresh database on a configured sandbox server), compares every table's
//! row count with the counts recorded at backup time, runs the configured sanity queries,
//! restores every object into a scratch directory checking each against its hash, and
//! reports what it found and how long each step took. Then it removes the sandbox.
//!
//! It only reads the repository; it never writes, moves or deletes anything in it. A drill
//! passes only when everything matched exactly.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backup_common::config::{DrillConfig, SanityQuery};
use backup_common::error_chain;
use backup_common::keys;
use backup_common::manifest::Manifest;
use backup_common::manifest::ROW_COUNT_TABLES_SQL;
use backup_common::ping::{Pinger, Signal};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::repository::{RepoError, Repository};
use crate::restore::{self, RestoreError};
use crate::sandbox_pg::{self, SandboxPg};
use crate::snapshots::human_bytes;

/// Failures listed one by one in a report; the rest are counted.
const MAX_LISTED_FAILURES: usize = 50;

/// Problems that stop a drill before it can restore anything.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("no snapshot is at least {wanted} old: {detail}")]
    NoneOldEnough { wanted: String, detail: String },
    #[error("the drill was interrupted (SIGTERM or Ctrl-C, e.g. its time limit) before it finished; the sandbox was removed")]
    Interrupted,
    #[error("scratch directory {path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which snapshot to drill.
#[derive(Debug, Clone)]
pub enum Selector {
    /// An id, or `latest` (the newest good snapshot); a snapshot that is not good only
    /// by its id and with `allow_suspect`.
    Named { name: String, allow_suspect: bool },
    /// The newest good snapshot committed at least this long ago (receiver's clock).
    OlderThan(Duration),
}

pub struct DrillOptions {
    pub repo: PathBuf,
    pub selector: Selector,
    pub config: DrillConfig,
    /// The receiver's clock reading at the start of the drill.
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableCount {
    pub table: String,
    /// Rows recorded at backup time; `None` for a table the manifest does not list.
    pub expected: Option<u64>,
    /// Rows in the restored database; `None` for a table that was not restored.
    pub actual: Option<u64>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SanityResult {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ObjectsResult {
    /// Objects and bytes the manifest lists.
    pub expected: u64,
    pub expected_bytes: u64,
    /// Objects and bytes restored and verified.
    pub restored: u64,
    pub bytes: u64,
    pub failed: u64,
}

/// What a drill found. `passed` is true only when `failures` is empty.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub snapshot: String,
    pub snapshot_time: String,
    pub age_seconds: i64,
    pub age: String,
    pub passed: bool,
    /// Why the receiver's anomaly guard distrusts this snapshot, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    /// Where the dump was restored (throwaway cluster, or a database on the sandbox server).
    pub sandbox: String,
    pub dump_bytes: u64,
    pub tables: Vec<TableCount>,
    pub sanity_queries: Vec<SanityResult>,
    pub objects: ObjectsResult,
    pub steps: Vec<Step>,
    pub failures: Vec<String>,
    pub seconds: f64,
}

impl Report {
    /// The report as an operator reads it (also the body of the healthcheck ping).
    pub fn text(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        out.push_str(&format!(
            "restore drill {verdict}: snapshot {} ({}, {} old)\n",
            self.snapshot, self.snapshot_time, self.age
        ));
        if let Some(why) = &self.suspect {
            out.push_str(&format!(
                "snapshot flagged SUSPECT by the receiver: {why}\n"
            ));
        }
        out.push_str(&format!(
            "sandbox: {}\ndump: {}\n",
            self.sandbox,
            human_bytes(self.dump_bytes)
        ));
        if !self.tables.is_empty() {
            out.push_str(&format!(
                "\n{:<40} {:>12} {:>12}\n",
                "TABLE", "EXPECTED", "RESTORED"
            ));
            let show = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            for t in &self.tables {
                out.push_str(&format!(
                    "{:<40} {:>12} {:>12}{}\n",
                    t.table,
                    show(t.expected),
                    show(t.actual),
                    if t.ok { "" } else { "  MISMATCH" }
                ));
            }
        }
        if !self.sanity_queries.is_empty() {
            out.push('\n');
            for q in &self.sanity_queries {
                out.push_str(&format!(
                    "sanity query {:?}: {}\n",
                    q.name,
                    match (&q.ok, &q.error) {
                        (true, _) => "true".to_string(),
                        (false, Some(e)) => format!("FAILED: {e}"),
                        (false, None) => "FAILED".to_string(),
                    }
                ));
            }
        }
        let o = &self.objects;
        out.push_str(&format!(
            "\nobjects: {} of {} restored and verified ({} of {}){}\n",
            o.restored,
            o.expected,
            human_bytes(o.bytes),
            human_bytes(o.expected_bytes),
            if o.failed > 0 {
                format!(", {} FAILED", o.failed)
            } else {
                String::new()
            }
        ));
        out.push_str("\nsteps:\n");
        for s in &self.steps {
            out.push_str(&format!(
                "  {:<14} {:>9.1}s  {}\n",
                s.name,
                s.seconds,
                if s.ok { "ok" } else { "FAILED" }
            ));
        }
        out.push_str(&format!("  {:<14} {:>9.1}s\n", "total", self.seconds));
        if !self.failures.is_empty() {
            out.push_str(&format!("\nfailures ({}):\n", self.failures.len()));
            for f in &self.failures {
                out.push_str(&format!("  - {f}\n"));
            }
        }
        out
    }
}

/// Picks the snapshot a drill restores.
pub fn select(
    repo: &Repository,
    selector: &Selector,
    now: DateTime<Utc>,
) -> Result<Manifest, DrillError> {
    match selector {
        Selector::Named {
            name,
            allow_suspect,
        } => Ok(repo.resolve(name, *allow_suspect)?),
        Selector::OlderThan(min_age) => {
            let wanted = short_duration(min_age.as_secs());
            let mut manifests = Vec::new();
            repo.for_each_manifest(|m| {
                if crate::verdicts::is_good(repo, &m) {
                    manifests.push(m);
                }
                true
            })?;
            let cutoff =
                now - chrono::Duration::from_std(*min_age).unwrap_or(chrono::Duration::MAX);
            let chosen = manifests
                .iter()
                .filter(|m| m.time <= cutoff)
                .max_by_key(|m| m.time);
            match (chosen, manifests.iter().min_by_key(|m| m.time)) {
                (Some(m), _) => Ok(m.clone()),
                (None, None) => Err(DrillError::NoneOldEnough {
                    wanted,
                    detail: "the repository has no snapshots yet".into(),
                }),
                (None, Some(oldest)) => Err(DrillError::NoneOldEnough {
                    wanted,
                    detail: format!(
                        "the oldest, {}, was taken {} ({} old)",
                        oldest.id,
                        oldest.time.to_rfc3339(),
                        human_age(now - oldest.time)
                    ),
                }),
            }
        }
    }
}

fn human_age(age: chrono::Duration) -> String {
    let secs = age.num_seconds().max(0) as u64;
    // Minutes are precise enough for an age; seconds only for very young snapshots.
    short_duration(if secs >= 3600 { secs - secs % 60 } else { secs })
}

/// `45d 1h 30m`: days, hours, minutes and seconds, zero parts left out (humantime's
/// months of 30.44 days would read oddly in a drill report).
fn short_duration(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".into()
    } else {
        text.join(" ")
    }
}

/// Records one step's duration and outcome.
struct Steps {
    steps: Vec<Step>,
    failures: Vec<String>,
}

impl Steps {
    /// Records a step; its error is also a failure of the drill.
    fn record(&mut self, name: &'static str, started: Instant, error: Option<String>) {
        if let Some(e) = &error {
            self.failures.push(format!("{name}: {e}"));
        }
        self.summarize(name, started, error);
    }

    /// Records a step whose individual failures were listed already; `error` sums them up.
    fn summarize(&mut self, name: &'static str, started: Instant, error: Option<String>) {
        self.steps.push(Step {
            name,
            ok: error.is_none(),
            seconds: round_secs(started.elapsed()),
            error,
        });
    }
}

fn round_secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// A restore error, with a hint when the missing chunk was moved aside by verification.
fn explain(repo: &Repository, e: &RestoreError) -> String {
    let mut text = error_chain(e);
    if let RestoreError::Repo(RepoError::MissingChunk { id }) = e {
        if repo.root().join("quarantine").join(id.to_hex()).exists() {
            text.push_str(
                " (it is in quarantine/: verification found it corrupt; the next nightly \
                 backup uploads it again if the source still has the data)",
            );
        }
    }
    text
}

/// A drill runs quarterly and unattended: a couple of patient attempts per ping.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const PING_ATTEMPTS: u32 = 3;

/// Runs a drill, pinging the configured healthcheck (`/start`, then success or `/fail`).
/// A failed ping is logged and changes nothing. When `cancel` completes first (a signal),
/// the drill is dropped, which stops the sandbox PostgreSQL and removes the scratch
/// directory, and the outcome is [`DrillError::Interrupted`].
pub async fn run_and_ping(
    opts: &DrillOptions,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Report, DrillError> {
    let pinger = opts.config.healthcheck_url.as_deref().and_then(|url| {
        Pinger::new(url, PING_TIMEOUT, PING_ATTEMPTS)
            .map_err(|e| tracing::warn!(url, error = %e, "cannot set up the healthcheck ping"))
            .ok()
    });
    if let Some(p) = &pinger {
        p.send(Signal::Start, "").await;
    }
    let result = tokio::select! {
        r = run(opts) => r,
        () = cancel => Err(DrillError::Interrupted),
    };
    // A failed ping is logged by the pinger and changes nothing about the drill's result.
    if let Some(p) = &pinger {
        match &result {
            Ok(r) if r.passed => p.send(Signal::Success, &r.text()).await,
            Ok(r) => p.send(Signal::Fail, &r.text()).await,
            Err(e) => {
                let body = format!("restore drill could not run: {}", error_chain(e));
                p.send(Signal::Fail, &body).await
            }
        };
    }
    result
}

/// Runs a drill. `Err` only when it cannot start (no such snapshot, unusable scratch
/// directory); everything found while restoring goes into the report.
pub async fn run(opts: &DrillOptions) -> Result<Report, DrillError> {
    let started = Instant::now();
    let repo = Repository::open(&opts.repo)?;
    let manifest = select(&repo, &opts.selector, opts.now)?;
    tracing::info!(snapshot = %manifest.id, "restore drill starting");
    let scratch_parent = opts
        .config
        .scratch_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let scratch_err = |source| DrillError::Scratch {
        path: scratch_parent.clone(),
        source,
    };
    fs::create_dir_all(&scratch_parent).map_err(scratch_err)?;
    let scratch = tempfile::Builder::new()
        .prefix("drill-")
        .tempdir_in(&scratch_parent)
        .map_err(scratch_err)?;

    let mut steps = Steps {
        steps: Vec::new(),
        failures: Vec::new(),
    };
    let mut report = Report {
        snapshot: manifest.id.clone(),
        snapshot_time: manifest
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        age_seconds: (opts.now - manifest.time).num_seconds(),
        age: human_age(opts.now - manifest.time),
        passed: false,
        suspect: manifest.suspect.clone(),
        sandbox: "none started".into(),
        dump_bytes: manifest.dump.as_ref().map(|d| d.size).unwrap_or(0),
        tables: Vec::new(),
        sanity_queries: Vec::new(),
        objects: ObjectsResult::default(),
        steps: Vec::new(),
        failures: Vec::new(),
        seconds: 0.0,
    };

    if manifest.dump.is_some() {
        database_steps(
            &repo,
            &manifest,
            &opts.config,
            scratch.path(),
            &mut steps,
            &mut report,
        )
        .await;
    } else {
        steps
            .failures
            .push(format!("snapshot {} has no database dump", manifest.id));
    }

    let t = Instant::now();
    let (repo2, m2, dir) = (
        repo.clone(),
        manifest.clone(),
        scratch.path().join("objects"),
    );
    let objects = tokio::task::spawn_blocking(move || restore_objects(&repo2, &m2, &dir))
        .await
        .unwrap_or_else(|e| ObjectsOutcome {
            failures: vec![format!("object restore panicked: {e}")],
            ..Default::default()
        });
    report.objects = ObjectsResult {
        expected: manifest.objects.len() as u64,
        expected_bytes: manifest.objects.iter().map(|o| o.size).sum(),
        restored: objects.restored,
        bytes: objects.bytes,
        failed: objects.failures.len() as u64,
    };
    let objects_error = (!objects.failures.is_empty())
        .then(|| format!("{} object(s) did not restore", objects.failures.len()));
    steps.failures.extend(objects.failures);
    steps.summarize("objects", t, objects_error);

    let t = Instant::now();
    let cleanup = fs::remove_dir_all(scratch.path())
        .err()
        .map(|e| format!("removing {}: {e}", scratch.path().display()));
    drop(scratch);
    steps.record("cleanup", t, cleanup);

    let total = steps.failures.len();
    if total > MAX_LISTED_FAILURES {
        steps.failures.truncate(MAX_LISTED_FAILURES);
        steps.failures.push(format!(
            "… and {} more failure(s)",
            total - MAX_LISTED_FAILURES
        ));
    }
    report.passed = total == 0;
    report.steps = steps.steps;
    report.failures = steps.failures;
    report.seconds = round_secs(started.elapsed());
    tracing::info!(
        snapshot = %report.snapshot,
        passed = report.passed,
        failures = total,
        seconds = report.seconds,
        "restore drill finished"
    );
    Ok(report)
}

/// Where the dump is restored, and how to remove it afterwards.
enum Sandbox {
    Throwaway(SandboxPg),
    Server { admin_url: String, database: String },
}

async fn database_steps(
    repo: &Repository,
    manifest: &Manifest,
    config: &DrillConfig,
    scratch: &Path,
    steps: &mut Steps,
    report: &mut Report,
) {
    let dump = manifest.dump.as_ref().expect("caller checked");
    let bin_dir = sandbox_pg::bin_dir(config.pg_bin_dir.as_deref());

    // 1. The sandbox.
    let t = Instant::now();
    let sandbox = match &config.sandbox_database_url {
        None => start_throwaway(&bin_dir, scratch, &dump.database).await,
        Some(url) => create_on_server(url, &manifest.id).await,
    };
    let (sandbox, url) = match sandbox {
        Ok(s) => s,
        Err(e) => {
            steps.record("sandbox", t, Some(e));
            return;
        }
    };
    report.sandbox = match &sandbox {
        Sandbox::Throwaway(pg) => format!(
            "throwaway PostgreSQL cluster in {} (unix socket only)",
            pg.socket_dir().display()
        ),
        Sandbox::Server { database, .. } => {
            format!("database {database} on the configured sandbox server")
        }
    };
    steps.record("sandbox", t, None);

    // 2. pg_restore, streaming the verified dump.
    let t = Instant::now();
    let pg_restore = vec![bin_dir.join("pg_restore").display().to_string()];
    let extra = vec!["--no-owner".to_string(), "--no-privileges".to_string()];
    let (repo2, m2, url2) = (repo.clone(), manifest.clone(), url.clone());
    let restored = tokio::task::spawn_blocking(move || {
        restore::dump_to_pg_restore(&repo2, &m2, &pg_restore, &url2, &extra)
            .map_err(|e| explain(&repo2, &e))
    })
    .await
    .unwrap_or_else(|e| Err(format!("pg_restore task panicked: {e}")));
    let restored_ok = restored.is_ok();
    steps.record("pg_restore", t, restored.err());

    // 3. Row counts and sanity queries on what was restored.
    if restored_ok {
        let t = Instant::now();
        match connect(&url).await {
            Err(e) => steps.record("row_counts", t, Some(e)),
            Ok(client) => {
                match table_counts(&client).await {
                    Ok(actual) => {
                        report.tables = compare_counts(&dump.row_counts, &actual);
                        let bad: Vec<&TableCount> =
                            report.tables.iter().filter(|c| !c.ok).collect();
                        for c in &bad {
                            steps.failures.push(describe_mismatch(c));
                        }
                        let err = (!bad.is_empty())
                            .then(|| format!("{} table(s) do not match the manifest", bad.len()));
                        steps.summarize("row_counts", t, err);
                    }
                    Err(e) => steps.record("row_counts", t, Some(e)),
                }
                if !config.sanity_queries.is_empty() {
                    let t = Instant::now();
                    for q in &config.sanity_queries {
                        let r = sanity(&client, q).await;
                        if let Err(e) = &r {
                            steps
                                .failures
                                .push(format!("sanity query {:?}: {e}", q.name));
                        }
                        report.sanity_queries.push(SanityResult {
                            name: q.name.clone(),
                            ok: r.is_ok(),
                            error: r.err(),
                        });
                    }
                    let failed = report.sanity_queries.iter().filter(|q| !q.ok).count();
                    let err = (failed > 0).then(|| format!("{failed} sanity query(ies) failed"));
                    steps.summarize("sanity_queries", t, err);
                }
            }
        }
    }

    // 4. Remove the sandbox.
    let t = Instant::now();
    let err = match sandbox {
        Sandbox::Throwaway(mut pg) => {
            pg.stop();
            None
        }
        Sandbox::Server {
            admin_url,
            database,
        } => drop_database(&admin_url, &database).await.err(),
    };
    steps.record("remove_sandbox", t, err);
}

async fn start_throwaway(
    bin_dir: &Path,
    scratch: &Path,
    database: &str,
) -> Result<(Sandbox, String), String> {
    let pg = SandboxPg::start(bin_dir, scratch)
        .await
        .map_err(|e| error_chain(&e))?;
    let client = connect(&pg.url("postgres")).await?;
    client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(database)))
        .await
        .map_err(|e| format!("creating database {database:?}: {}", error_chain(&e)))?;
    let url = pg.url(database);
    Ok((Sandbox::Throwaway(pg), url))
}

async fn create_on_server(admin_url: &str, snapshot: &str) -> Result<(Sandbox, String), String> {
    let mut name: String = format!("drill_{snapshot}_{}", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(63);
    let client = connect(admin_url).await?;
    client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await
        .map_err(|e| {
            format!(
                "creating database {name} on the sandbox server (the role needs CREATEDB): {}",
                error_chain(&e)
            )
        })?;
    let url = with_database(admin_url, &name);
    Ok((
        Sandbox::Server {
            admin_url: admin_url.to_string(),
            database: name,
        },
        url,
    ))
}

async fn drop_database(admin_url: &str, database: &str) -> Result<(), String> {
    let client = connect(admin_url).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(database)
        ))
        .await
        .map_err(|e| format!("dropping database {database}: {}", error_chain(&e)))
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to the sandbox database: {}", error_chain(&e)))?;
    // Ends when the client is dropped or the server goes away.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Row count of every ordinary table, named `schema.table`, as the sender records them.
async fn table_counts(client: &tokio_postgres::Client) -> Result<BTreeMap<String, u64>, String> {
    let tables = client
        .query(ROW_COUNT_TABLES_SQL, &[])
        .await
        .map_err(|e| format!("listing tables: {}", error_chain(&e)))?;
    let mut counts = BTreeMap::new();
    for t in tables {
        let quoted: String = t.get(0);
        let name: String = t.get(1);
        let row = client
            .query_one(&format!("SELECT count(*) FROM {quoted}"), &[])
            .await
            .map_err(|e| format!("counting rows of {name}: {}", error_chain(&e)))?;
        counts.insert(name, row.get::<_, i64>(0) as u64);
    }
    Ok(counts)
}

/// Every table of either side, with whether the counts agree exactly.
pub fn compare_counts(
    expected: &BTreeMap<String, u64>,
    actual: &BTreeMap<String, u64>,
) -> Vec<TableCount> {
    let names: std::collections::BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let (e, a) = (expected.get(name).copied(), actual.get(name).copied());
            TableCount {
                table: name.clone(),
                expected: e,
                actual: a,
                ok: e.is_some() && e == a,
            }
        })
        .collect()
}

fn describe_mismatch(c: &TableCount) -> String {
    match (c.expected, c.actual) {
        (Some(e), Some(a)) => format!(
            "table {}: {a} rows restored, the manifest recorded {e}",
            c.table
        ),
        (Some(e), None) => format!(
            "table {}: not in the restored database (the manifest recorded {e} rows)",
            c.table
        ),
        (None, Some(a)) => format!(
            "table {}: restored with {a} rows but the manifest records no count for it",
            c.table
        ),
        (None, None) => format!("table {}: neither recorded nor restored", c.table),
    }
}

async fn sanity(client: &tokio_postgres::Client, q: &SanityQuery) -> Result<(), String> {
    let rows = client
        .query(q.sql.as_str(), &[])
        .await
        .map_err(|e| error_chain(&e))?;
    let [row] = rows.as_slice() else {
        return Err(format!("returned {} rows, expected one", rows.len()));
    };
    if row.len() != 1 {
        return Err(format!("returned {} columns, expected one", row.len()));
    }
    match row.try_get::<_, Option<bool>>(0) {
        Ok(Some(true)) => Ok(()),
        Ok(Some(false)) => Err("returned false".into()),
        Ok(None) => Err("returned NULL".into()),
        Err(_) => Err(format!(
            "returned a {} instead of a boolean",
            row.columns()[0].type_()
        )),
    }
}

#[derive(Default)]
struct ObjectsOutcome {
    restored: u64,
    bytes: u64,
    failures: Vec<String>,
}

/// Restores every object below `dir`, verifying each; unlike `restore::objects_to_dir` it
/// carries on after a failure so the report names every object that does not restore.
fn restore_objects(repo: &Repository, manifest: &Manifest, dir: &Path) -> ObjectsOutcome {
    let mut out = ObjectsOutcome::default();
    for o in &manifest.objects {
        let result = (|| -> Result<(), String> {
            let path = keys::safe_join(dir, &o.key).map_err(|e| e.to_string())?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            let file =
                File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            restore::write_stream(repo, &o.key, &o.chunks, o.size, o.hash, &mut w)
                .map_err(|e| explain(repo, &e))?;
            w.flush()
                .map_err(|e| format!("writing {}: {e}", path.display()))
        })();
        match result {
            Ok(()) => {
                out.restored += 1;
                out.bytes += o.size;
            }
            Err(e) => out.failures.push(format!("object {:?}: {e}", o.key)),
        }
    }
    out
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `url` (a postgres:// URL) with its database replaced by `db`, query parameters kept.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..authority_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5433/postgres?sslmode=disable", "d"),
            "postgres://u:p@h:5433/d?sslmode=disable"
        );
        assert_eq!(with_database("postgresql://h", "d"), "postgresql://h/d");
    }

    #[test]
    fn durations_read_plainly() {
        assert_eq!(short_duration(90 * 86_400), "90d");
        assert_eq!(short_duration(45 * 86_400 + 3600 + 5), "45d 1h 5s");
        assert_eq!(short_duration(0), "0s");
    }

    #[test]
    fn counts_compare_exactly_both_ways() {
        let e: BTreeMap<String, u64> = [("public.a".into(), 3), ("public.b".into(), 1)].into();
        let a: BTreeMap<String, u64> = [("public.a".into(), 3), ("public.c".into(), 0)].into();
        let c = compare_counts(&e, &a);
        let ok: Vec<(&str, bool)> = c.iter().map(|t| (t.table.as_str(), t.ok)).collect();
        assert_eq!(
            ok,
            [("public.a", true), ("public.b", false), ("public.c", false)]
        );
        assert!(describe_mismatch(&c[1]).contains("public.b"));
    }
}
