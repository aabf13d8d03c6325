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
    #[error(transparent)]
    Select(#[from] crate::operator::select::SelectError),
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
    /// A name as operator/select.rs reads it (an id or unique prefix, `latest`,
    /// `latest~N`, a day); a snapshot that is not good only by its id and with
    /// `allow_suspect`.
    Named { name: String, allow_suspect: bool },
    /// The newest good snapshot committed at least this long ago (receiver's clock).
    OlderThan(Duration),
}

pub struct DrillOptions {
    pub repo: PathBuf,
    pub selector: Selector,
    pub config: DrillConfig,
    /// The retention time zone: days in snapshot names, times in the report's text.
    pub time_zone: chrono_tz::Tz,
    /// The receiver's clock reading at the start of the drill.
    pub now: DateTime<Utc>,
    /// Files the sandbox's OS user must not be able to read besides the repository
    /// (the receiver's config and TLS key); the drill refuses to start it otherwise.
    pub private_paths: Vec<PathBuf>,
}

mod database;
mod pg_log;
mod report;

use database::*;
pub use pg_log::{parse_pg_restore_stderr, PgRestoreLog};
pub use report::*;

/// Picks the snapshot a drill restores.
pub fn select(
    repo: &Repository,
    selector: &Selector,
    now: DateTime<Utc>,
    tz: chrono_tz::Tz,
) -> Result<Manifest, DrillError> {
    use crate::operator::select::{resolve, Context, Counting};
    match selector {
        Selector::Named {
            name,
            allow_suspect,
        } => {
            let cx = Context {
                tz,
                now,
                counting: Counting::Good,
            };
            let chosen = resolve(repo, name, &cx)?;
            if !allow_suspect {
                if let Some(why) = crate::store::verdicts::not_good_because(repo, &chosen.manifest)?
                {
                    return Err(RepoError::NotGood {
                        id: chosen.manifest.id,
                        why,
                    }
                    .into());
                }
            }
            Ok(chosen.manifest)
        }
        Selector::OlderThan(min_age) => {
            let wanted = short_duration(min_age.as_secs());
            let mut manifests = Vec::new();
            repo.try_for_each_manifest(|m| {
                if crate::store::verdicts::is_good(repo, &m)? {
                    manifests.push(m);
                }
                Ok::<_, RepoError>(true)
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
                        crate::clock::on_screen(oldest.time, tz),
                        human_age(now - oldest.time)
                    ),
                }),
            }
        }
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
        // The first copy of a quarantined chunk is `<hex>`; a store that cannot say
        // leaves the hint out rather than guess.
        if repo
            .exists::<crate::store::records::quarantine::Quarantined>(&(*id, 0))
            .unwrap_or(false)
        {
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
    // `cancel` is polled first, so its signal handlers are installed before the drill's
    // blocking steps (initdb) start: a SIGTERM then interrupts the drill instead of
    // killing the process with the sandbox left behind.
    let result = tokio::select! {
        biased;
        () = cancel => Err(DrillError::Interrupted),
        r = run(opts) => r,
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
    let repo = crate::store::open::repository(&opts.repo).map_err(RepoError::from)?;
    let manifest = select(&repo, &opts.selector, opts.now, opts.time_zone)?;
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
        time: manifest.time,
        zone: opts.time_zone,
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
    root: &Path,
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
    let mut exposed: Vec<PathBuf> = [
        root.to_path_buf(),
        root.join("repository.json"),
        root.join("snapshots"),
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

#[derive(Default)]
struct ObjectsOutcome {
    restored: u64,
    bytes: u64,
    failures: Vec<String>,
}

/// Restores every object below `dir` with restore's one writer, verifying each; every
/// object that does not restore is named.
fn restore_objects(repo: &Repository, manifest: &Manifest, dir: &Path) -> ObjectsOutcome {
    // A bar on a terminal (a drill by hand); nothing under the timer.
    let progress = crate::operator::progress::Progress::for_stderr();
    match restore::objects_to_dir(repo, manifest, dir, &progress) {
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

#[cfg(test)]
mod tests;
