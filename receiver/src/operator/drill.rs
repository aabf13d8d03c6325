//! The restore drill: proves that a snapshot restores, the way an operator would check it,
//! in a sandbox that touches nothing else. It restores the dump into a throwaway PostgreSQL
//! cluster (or a fresh database on a configured sandbox server), compares every table's
//! row count with the counts recorded at backup time, runs the configured sanity queries,
//! restores every object into a scratch directory checking each against its hash, and
//! reports what it found and how long each step took. Then it removes the sandbox.
//!
//! It only reads the repository; it never writes, moves or deletes anything in it. A drill
//! passes only when everything matched exactly.
//!
//! The dump is untrusted: whoever holds the production server can put functions into it
//! that run when an index is built, a materialized view is refreshed or a row is counted.
//! So the dump is restored, and every query of the drill runs, as a role that is not a
//! superuser and holds none of `pg_execute_server_program`, `pg_read_server_files`,
//! `pg_write_server_files` (it owns only the drill's database); the server and
//! `pg_restore` run in the sandbox of [`sandbox_pg::Runner`]. What that role cannot
//! restore is named, object by object, in the report and fails the drill; the drill never
//! falls back to a superuser. Restored objects are only hashed, never opened by a program.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::config::{DrillConfig, SanityQuery};
use backup_common::error_chain;
use backup_common::manifest::Manifest;
use backup_common::manifest::ROW_COUNT_TABLES_SQL;
use backup_common::ping::{Pinger, Signal};
use backup_common::term::escape;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::operator::restore::{self, RestoreError};
use crate::operator::sandbox_pg::{self, Runner, SandboxPg};
use crate::operator::snapshots::human_bytes;
use crate::store::repository::{RepoError, Repository};

/// Failures listed one by one in a report; the rest are counted.
const MAX_LISTED_FAILURES: usize = 50;
/// Objects pg_restore could not restore, listed one by one; the rest are counted.
const MAX_NOT_RESTORED: usize = 200;
/// Longest pg_restore line (and error message) kept; the dump chooses their content.
const MAX_LINE_BYTES: usize = 2048;
const MAX_ERROR_CHARS: usize = 300;
/// The role the throwaway cluster restores the dump as, and runs every drill query as.
pub const RESTORE_ROLE: &str = "drill_restore";
/// Predefined roles that would let SQL leave PostgreSQL; the restore role holds none.
const ESCAPE_ROLES: [&str; 3] = [
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

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
    /// Files the sandbox's OS user must not be able to read besides the repository
    /// (the receiver's config and TLS key); the drill refuses to start it otherwise.
    pub private_paths: Vec<PathBuf>,
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

/// How the sandbox was walled in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Isolation {
    /// The role pg_restore and every query of the drill ran as.
    pub role: String,
    /// The OS account the sandbox's server and pg_restore ran as.
    pub os_user: String,
    /// The network they had.
    pub network: String,
    /// Where the isolation is weaker than it should be (reported; not a failure).
    pub warnings: Vec<String>,
}

/// One object of the dump that pg_restore could not restore.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NotRestored {
    /// As pg_restore names it: type and name, e.g. `INDEX t_evil`, `EXTENSION adminpack`.
    pub object: String,
    /// The first line of PostgreSQL's error.
    pub error: String,
}

/// What a drill found. `passed` is true only when `failures` is empty.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub snapshot: String,
    /// The host the snapshot came from, as its sender named itself.
    pub source_host: String,
    pub snapshot_time: String,
    pub age_seconds: i64,
    pub age: String,
    pub passed: bool,
    /// Why the receiver's anomaly guard distrusts this snapshot, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    /// Where the dump was restored (throwaway cluster, or a database on the sandbox server).
    pub sandbox: String,
    pub isolation: Isolation,
    pub dump_bytes: u64,
    /// Objects of the dump the restore role could not restore (each is also a failure).
    pub not_restored: Vec<NotRestored>,
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
            "restore drill {verdict}: snapshot {} ({}, {} old) from {}\n",
            escape(&self.snapshot),
            self.snapshot_time,
            self.age,
            escape(&self.source_host)
        ));
        if let Some(why) = &self.suspect {
            out.push_str(&format!(
                "snapshot flagged SUSPECT by the receiver: {}\n",
                escape(why)
            ));
        }
        let iso = &self.isolation;
        out.push_str(&format!(
            "sandbox: {}\nrestored as: role {}, OS user {}, network: {}\n",
            escape(&self.sandbox),
            escape(&iso.role),
            escape(&iso.os_user),
            escape(&iso.network)
        ));
        for w in &iso.warnings {
            out.push_str(&format!("isolation WARNING: {}\n", escape(w)));
        }
        out.push_str(&format!("dump: {}\n", human_bytes(self.dump_bytes)));
        if !self.tables.is_empty() {
            out.push_str(&format!(
                "\n{:<40} {:>12} {:>12}\n",
                "TABLE", "EXPECTED", "RESTORED"
            ));
            let show = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            for t in &self.tables {
                out.push_str(&format!(
                    "{:<40} {:>12} {:>12}{}\n",
                    escape(&t.table),
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
                    "sanity query \"{}\": {}\n",
                    escape(&q.name),
                    match (&q.ok, &q.error) {
                        (true, _) => "true".to_string(),
                        (false, Some(e)) => format!("FAILED: {}", escape(e)),
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
                out.push_str(&format!("  - {}\n", escape(f)));
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
                if crate::store::verdicts::is_good(repo, &m) {
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
        source_host: manifest.source_host.clone(),
        passed: false,
        suspect: manifest.suspect.clone(),
        sandbox: "none started".into(),
        isolation: Isolation::default(),
        dump_bytes: manifest.dump.as_ref().map(|d| d.size).unwrap_or(0),
        not_restored: Vec::new(),
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
            opts,
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
    Server {
        admin_url: String,
        database: String,
        role: String,
        /// The role's password, handed to pg_restore in its environment (a command line
        /// is readable by every local user).
        password: String,
    },
}

/// Checks what the sandbox's OS user could reach: `Err` (the drill refuses to start the
/// sandbox) when it is a separate user that can read the repository or a private file;
/// warnings when the drill cannot separate it at all.
fn check_isolation(
    runner: &Runner,
    repo: &Repository,
    private: &[PathBuf],
    iso: &mut Isolation,
) -> Result<(), String> {
    iso.os_user = runner.user_name().to_string();
    iso.network = runner.describe_network();
    if runner.network_refused().is_some() {
        iso.warnings.push(format!(
            "the sandbox has the host's network: {}",
            iso.network
        ));
    }
    if !runner.separate_user() {
        iso.warnings.push(format!(
            "the sandbox runs as the drill's own OS user ({}), which can read the repository; \
             run the drill as root (deploy/systemd/backup-drill.service) so the sandbox runs \
             as [drill] sandbox_user",
            runner.user_name()
        ));
        return Ok(());
    }
    let root = repo.root();
    let mut exposed: Vec<PathBuf> = [
        root.to_path_buf(),
        root.join("repository.json"),
        repo.snapshots_dir(),
    ]
    .into_iter()
    .chain(private.iter().cloned())
    .filter(|p| runner.can_read(p))
    .collect();
    exposed.dedup();
    if exposed.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = exposed.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "the sandbox user {} can read {}: make them private to the receiver \
         (e.g. `chmod -R go-rwx {}`) or set [drill] sandbox_user to a dedicated account",
        runner.user_name(),
        list.join(", "),
        list[0]
    ))
}

async fn database_steps(
    repo: &Repository,
    manifest: &Manifest,
    opts: &DrillOptions,
    scratch: &Path,
    steps: &mut Steps,
    report: &mut Report,
) {
    let config = &opts.config;
    let dump = manifest.dump.as_ref().expect("caller checked");
    let bin_dir = sandbox_pg::bin_dir(config.pg_bin_dir.as_deref());

    // 1. The sandbox: who runs it, then the server, the database and its role.
    let t = Instant::now();
    let user = config
        .sandbox_user
        .as_deref()
        .unwrap_or(sandbox_pg::DEFAULT_OS_USER);
    let runner = match Runner::new(&bin_dir, user, config.sandbox_database_url.is_none()) {
        Ok(r) => r,
        Err(e) => {
            steps.record("sandbox", t, Some(error_chain(&e)));
            return;
        }
    };
    if let Err(e) = check_isolation(&runner, repo, &opts.private_paths, &mut report.isolation) {
        steps.record("sandbox", t, Some(e));
        return;
    }
    {
        // A separate sandbox user may pass through the drill's directory to its own
        // cluster directory, but not list it or enter the restored objects (0700, ours).
        let mode = if runner.separate_user() { 0o711 } else { 0o700 };
        if let Err(e) = fs::set_permissions(scratch, fs::Permissions::from_mode(mode)) {
            steps.record(
                "sandbox",
                t,
                Some(format!("chmod {}: {e}", scratch.display())),
            );
            return;
        }
    }
    let sandbox = match &config.sandbox_database_url {
        None => start_throwaway(&bin_dir, scratch, &runner, &dump.database).await,
        Some(url) => create_on_server(url, &manifest.id).await,
    };
    let (sandbox, url) = match sandbox {
        Ok(s) => s,
        Err(e) => {
            steps.record("sandbox", t, Some(e));
            return;
        }
    };
    let role = match &sandbox {
        Sandbox::Throwaway(_) => RESTORE_ROLE.to_string(),
        Sandbox::Server { role, .. } => role.clone(),
    };
    report.isolation.role = format!(
        "{role} (not a superuser; none of {}; owns only the drill's database)",
        ESCAPE_ROLES.join(", ")
    );
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

    // 2. pg_restore as the restore role, streaming the verified dump. It goes on past
    //    errors so that every object it cannot restore is named.
    let t = Instant::now();
    let mut cmd = match &sandbox {
        Sandbox::Throwaway(pg) => pg.command("pg_restore"),
        Sandbox::Server { password, .. } => {
            let mut cmd = runner.command(&bin_dir.join("pg_restore"), Path::new("/"));
            cmd.env("PGPASSWORD", password);
            cmd
        }
    };
    let dbname = match &sandbox {
        Sandbox::Throwaway(_) => url.clone(),
        Sandbox::Server {
            admin_url,
            database,
            role,
            ..
        } => with_login(admin_url, role, None, database),
    };
    cmd.args(["--verbose", "--no-owner", "--no-privileges"])
        .arg(format!("--dbname={dbname}"))
        .stdout(Stdio::null());
    let (repo2, m2) = (repo.clone(), manifest.clone());
    let restored = tokio::task::spawn_blocking(move || {
        restore::stream_dump(&repo2, &m2, cmd, parse_pg_restore_stderr)
            .map_err(|e| explain(&repo2, &e))
    })
    .await
    .unwrap_or_else(|e| Err(format!("pg_restore task panicked: {e}")));
    let restored_ok = restored.is_ok();
    match restored {
        Err(e) => steps.record("pg_restore", t, Some(e)),
        Ok((status, log)) => {
            for n in &log.not_restored {
                steps.failures.push(format!(
                    "pg_restore: {} not restored: {}",
                    n.object, n.error
                ));
            }
            if log.more > 0 {
                steps.failures.push(format!(
                    "pg_restore: … and {} more object(s) not restored",
                    log.more
                ));
            }
            for e in &log.other_errors {
                steps.failures.push(format!("pg_restore: {e}"));
            }
            let named = log.not_restored.len() as u64 + log.more + log.other_errors.len() as u64;
            if let Some(n) = log.ignored.filter(|&n| n > named) {
                steps.failures.push(format!(
                    "pg_restore: reported {n} error(s), of which {named} could be named"
                ));
            }
            let count = log.not_restored.len() as u64 + log.more;
            let err = if count > 0 {
                Some(format!(
                    "{count} object(s) of the dump did not restore as role {role}"
                ))
            } else if !log.other_errors.is_empty() {
                Some(format!("{} error(s)", log.other_errors.len()))
            } else if !status.success() {
                let e = format!("exited with {status}");
                steps.failures.push(format!("pg_restore: {e}"));
                Some(e)
            } else {
                None
            };
            report.not_restored = log.not_restored;
            steps.summarize("pg_restore", t, err);
        }
    }

    // 3. Row counts and sanity queries on what was restored, as the restore role.
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
            role,
            ..
        } => drop_database(&admin_url, &database, &role).await.err(),
    };
    steps.record("remove_sandbox", t, err);
}

/// What pg_restore reported on stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PgRestoreLog {
    pub not_restored: Vec<NotRestored>,
    /// Objects not restored beyond [`MAX_NOT_RESTORED`].
    pub more: u64,
    /// Errors not tied to an object (connection, archive format), at most a few.
    pub other_errors: Vec<String>,
    /// The count pg_restore gives at the end (`errors ignored on restore: N`).
    pub ignored: Option<u64>,
}

/// Reads pg_restore's `--verbose` stderr line by line (each cut to [`MAX_LINE_BYTES`])
/// and keeps only its errors, each with the object it was processing: a line
/// `pg_restore: from TOC entry 3335; 1259 16883 INDEX t_evil postgres` names the object,
/// the next `pg_restore: error: …` says why it was not restored.
pub fn parse_pg_restore_stderr(stderr: impl Read) -> PgRestoreLog {
    let mut log = PgRestoreLog::default();
    let mut current: Option<String> = None;
    for_each_line(stderr, |line| {
        if let Some(rest) = line.strip_prefix("pg_restore: from TOC entry ") {
            // `<id>; <tableoid> <oid> <type…> <name> <owner>`: drop the ids and the owner.
            let fields: Vec<&str> = rest.split_whitespace().skip(3).collect();
            let object = match fields.split_last() {
                Some((_, init)) if !init.is_empty() => init.join(" "),
                _ => fields.join(" "),
            };
            current = Some(object);
        } else if let Some(n) =
            line.strip_prefix("pg_restore: warning: errors ignored on restore: ")
        {
            log.ignored = n.trim().parse().ok();
        } else if let Some(e) = line.strip_prefix("pg_restore: error: ") {
            let e = e
                .trim_start_matches("could not execute query: ")
                .trim_start_matches("ERROR:")
                .trim();
            let error: String = e.chars().take(MAX_ERROR_CHARS).collect();
            match current.take() {
                Some(object) if log.not_restored.len() < MAX_NOT_RESTORED => {
                    log.not_restored.push(NotRestored { object, error })
                }
                Some(_) => log.more += 1,
                None if log.other_errors.len() < 5 => log.other_errors.push(error),
                None => {}
            }
        }
    });
    log
}

/// Calls `f` with every line of `r` (lossy UTF-8, cut to [`MAX_LINE_BYTES`]).
fn for_each_line(mut r: impl Read, mut f: impl FnMut(&str)) {
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                f(&String::from_utf8_lossy(&line));
                line.clear();
            } else if line.len() < MAX_LINE_BYTES {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        f(&String::from_utf8_lossy(&line));
    }
}

async fn start_throwaway(
    bin_dir: &Path,
    scratch: &Path,
    runner: &Runner,
    database: &str,
) -> Result<(Sandbox, String), String> {
    let pg = SandboxPg::start(bin_dir, scratch, runner)
        .await
        .map_err(|e| error_chain(&e))?;
    let client = connect(&pg.url("postgres")).await?;
    // Two statements: CREATE DATABASE cannot run inside the implicit transaction of one.
    client
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
            quote_ident(RESTORE_ROLE)
        ))
        .await
        .map_err(|e| format!("creating role {RESTORE_ROLE}: {}", error_chain(&e)))?;
    client
        .batch_execute(&format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(database),
            quote_ident(RESTORE_ROLE)
        ))
        .await
        .map_err(|e| format!("creating database {database:?}: {}", error_chain(&e)))?;
    check_role(&client, RESTORE_ROLE).await?;
    let url = pg.url_as(RESTORE_ROLE, database);
    Ok((Sandbox::Throwaway(pg), url))
}

/// `Err` unless `role` is an ordinary role that cannot leave PostgreSQL.
async fn check_role(client: &tokio_postgres::Client, role: &str) -> Result<(), String> {
    let row = client
        .query_one(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, \
                    r.rolbypassrls, \
                    ARRAY(SELECT b.rolname::text FROM pg_roles b \
                          WHERE b.rolname = ANY($2) AND pg_has_role(r.oid, b.oid, 'MEMBER')) \
               FROM pg_roles r WHERE r.rolname = $1",
            &[&role, &ESCAPE_ROLES.to_vec()],
        )
        .await
        .map_err(|e| format!("checking role {role}: {}", error_chain(&e)))?;
    let mut bad: Vec<String> = [
        "SUPERUSER",
        "CREATEROLE",
        "CREATEDB",
        "REPLICATION",
        "BYPASSRLS",
    ]
    .iter()
    .enumerate()
    .filter(|(i, _)| row.get::<_, bool>(*i))
    .map(|(_, a)| a.to_string())
    .collect();
    bad.extend(row.get::<_, Vec<String>>(5));
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "refusing to restore as role {role}: it has {}",
            bad.join(", ")
        ))
    }
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
    let password = hex::encode(rand::random::<[u8; 24]>());
    let client = connect(admin_url).await?;
    client
        .batch_execute(&format!(
            "CREATE ROLE {n} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             NOBYPASSRLS PASSWORD '{password}'; GRANT {n} TO CURRENT_USER",
            n = quote_ident(&name)
        ))
        .await
        .map_err(|e| {
            format!(
                "creating role {name} on the sandbox server (the role needs CREATEROLE): {}",
                error_chain(&e)
            )
        })?;
    let created = async {
        client
            .batch_execute(&format!(
                "CREATE DATABASE {n} OWNER {n}",
                n = quote_ident(&name)
            ))
            .await
            .map_err(|e| {
                format!(
                    "creating database {name} on the sandbox server (the role needs CREATEDB): {}",
                    error_chain(&e)
                )
            })?;
        check_role(&client, &name).await
    }
    .await;
    let sandbox = Sandbox::Server {
        admin_url: admin_url.to_string(),
        database: name.clone(),
        role: name.clone(),
        password: password.clone(),
    };
    if let Err(e) = created {
        let _ = drop_database(admin_url, &name, &name).await;
        return Err(e);
    }
    let url = with_login(admin_url, &name, Some(&password), &name);
    Ok((sandbox, url))
}

async fn drop_database(admin_url: &str, database: &str, role: &str) -> Result<(), String> {
    let client = connect(admin_url).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(database)
        ))
        .await
        .map_err(|e| format!("dropping database {database}: {}", error_chain(&e)))?;
    client
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(role)))
        .await
        .map_err(|e| format!("dropping role {role}: {}", error_chain(&e)))
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

/// Restores every object below `dir` with restore's one writer, verifying each; every
/// object that does not restore is named.
fn restore_objects(repo: &Repository, manifest: &Manifest, dir: &Path) -> ObjectsOutcome {
    match restore::objects_to_dir(repo, manifest, dir) {
        Ok(o) => ObjectsOutcome {
            restored: o.restored.objects,
            bytes: o.restored.bytes,
            failures: o
                .failures
                .iter()
                .map(|(key, e)| format!("object {key:?}: {}", explain(repo, e)))
                .collect(),
        },
        Err(e) => ObjectsOutcome {
            failures: vec![format!("objects: {}", explain(repo, &e))],
            ..Default::default()
        },
    }
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

/// `url` (a postgres:// URL) logging in as `user` (with `password`) to database `db`.
fn with_login(url: &str, user: &str, password: Option<&str>, db: &str) -> String {
    let url = with_database(url, db);
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = url[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(url.len());
    let host = match url[after_scheme..authority_end].rsplit_once('@') {
        Some((_, host)) => host,
        None => &url[after_scheme..authority_end],
    };
    let password = password
        .map(|p| format!(":{}", percent_encode(p)))
        .unwrap_or_default();
    format!(
        "{}{}{password}@{host}{}",
        &url[..after_scheme],
        percent_encode(user),
        &url[authority_end..]
    )
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_is_replaced_in_urls() {
        assert_eq!(
            with_login(
                "postgres://admin:pw@h:5433/postgres?sslmode=disable",
                "r",
                Some("p w"),
                "d"
            ),
            "postgres://r:p%20w@h:5433/d?sslmode=disable"
        );
        assert_eq!(
            with_login("postgres://h", "r", None, "d"),
            "postgres://r@h/d"
        );
    }

    #[test]
    fn pg_restore_errors_are_named_by_object() {
        let stderr = "pg_restore: connecting to database for restore
pg_restore: creating INDEX \"public.t_evil\"
pg_restore: while PROCESSING TOC:
pg_restore: from TOC entry 3335; 1259 16883 INDEX t_evil postgres
pg_restore: error: could not execute query: ERROR:  must be superuser or have privileges of the pg_execute_server_program role to COPY to or from an external program
HINT:  Anyone can COPY to stdout or from stdin.
Command was: CREATE INDEX t_evil ON public.t USING btree (((public.evil_i('index'::text) + id)));
pg_restore: from TOC entry 3484; 0 16884 MATERIALIZED VIEW DATA mv postgres
pg_restore: error: could not execute query: ERROR:  permission denied
pg_restore: error: could not open input file: x
pg_restore: warning: errors ignored on restore: 2
";
        let log = parse_pg_restore_stderr(stderr.as_bytes());
        assert_eq!(
            log.not_restored,
            [
                NotRestored {
                    object: "INDEX t_evil".into(),
                    error: "must be superuser or have privileges of the pg_execute_server_program role to COPY to or from an external program".into()
                },
                NotRestored {
                    object: "MATERIALIZED VIEW DATA mv".into(),
                    error: "permission denied".into()
                }
            ]
        );
        assert_eq!(log.other_errors, ["could not open input file: x"]);
        assert_eq!(log.ignored, Some(2));
        let long = format!("pg_restore: error: {}\n", "x".repeat(100_000));
        let log = parse_pg_restore_stderr(long.as_bytes());
        assert!(log.other_errors[0].len() <= MAX_ERROR_CHARS);
    }

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
