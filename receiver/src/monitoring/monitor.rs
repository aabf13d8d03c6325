//! The receiver's own monitoring, independent of the sender's: a lying or silent sender
//! cannot fake it. It sends a success ping (healthchecks.io protocol) after each committed
//! snapshot, and a fail ping when no snapshot was committed within `missed_window`
//! (receiver clock), when free space falls under `min_free_bytes_alert`, when a snapshot
//! is flagged suspect, and when verification finds damage. It also serves Prometheus
//! metrics (text exposition) on a local address.
//!
//! It only reads the repository. Hooks called from request handlers ([`Monitor::snapshot_committed`],
//! [`Monitor::rejected`], [`Monitor::verify_finished`]) never block or fail: pings are
//! queued to the background task that [`Monitor::run`] drives, and its owner (the server)
//! aborts it at shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::MonitoringConfig;
use anyhow::Context;
use backup_common::manifest::Manifest;
use backup_common::ping::{Pinger, Signal};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::store::repository::Repository;

mod metrics;
mod verify_hooks;

/// A scrape connection is served for at most this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct LastSnapshot {
    id: String,
    time: DateTime<Utc>,
    total_bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    last_snapshot: Option<LastSnapshot>,
    snapshot_ids: Vec<String>,
    /// Source bytes of all kept snapshots (what a restore of each would produce).
    logical_bytes: u64,
    chunks: u64,
    stored_bytes: u64,
    free_bytes: Option<u64>,
    rejected: BTreeMap<String, u64>,
    last_verify: Option<(DateTime<Utc>, bool)>,
    /// From `serve`'s verification schedule: the current cycle's share done, files in
    /// quarantine, heals confirmed (all time) and chunks lost for good.
    verify_progress: Option<f64>,
    quarantined: Option<u64>,
    healed_total: u64,
    lost_chunks: u64,
    /// Receiver clock when the background checks last ran.
    last_check: Option<DateTime<Utc>>,
    /// Conditions alerting right now, kind → message.
    active: BTreeMap<&'static str, String>,
    /// Conditions a fail ping went out for since the last success ping.
    reported: BTreeSet<&'static str>,
    /// Client certificates admitted since start: fingerprint → (identity, notAfter).
    admitted_certs: BTreeMap<String, (String, DateTime<Utc>)>,
}

/// A fail ping goes out when an admitted client certificate expires within this long.
pub const CERT_EXPIRY_WARNING: chrono::Duration = chrono::Duration::days(30);
/// Admitted certificates remembered (only CA-signed ones of allowed identities get here).
const MAX_ADMITTED_CERTS: usize = 64;

/// What the repository holds, read off disk.
/// What the monitor keeps of the manifests: sums, never the manifests themselves.
#[derive(Default)]
struct ManifestSums {
    logical_bytes: u64,
    newest: Option<LastSnapshot>,
}

struct RepoStats {
    snapshot_ids: Vec<String>,
    manifests: Option<ManifestSums>,
    /// Chunks and their stored bytes, when the walk read every one.
    chunks: Option<(u64, u64)>,
    free_bytes: Option<u64>,
}

pub struct Monitor {
    config: MonitoringConfig,
    repo: Repository,
    clock: Clock,
    pinger: Option<Pinger>,
    /// When this process started watching: the missed window of an empty repository
    /// counts from here.
    started: DateTime<Utc>,
    state: Mutex<State>,
    pings: mpsc::UnboundedSender<(Signal, String)>,
    queue: Mutex<Option<mpsc::UnboundedReceiver<(Signal, String)>>>,
}

impl Monitor {
    pub fn new(config: &MonitoringConfig, repo: Repository, clock: Clock) -> Arc<Monitor> {
        let pinger = config.healthcheck_url.as_ref().and_then(|url| {
            Pinger::new(url, config.ping_timeout, config.ping_retries.get())
                .map_err(|e| tracing::error!(error = %e, "cannot set up healthcheck pings"))
                .ok()
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let started = clock();
        Arc::new(Monitor {
            config: config.clone(),
            repo,
            clock,
            pinger,
            started,
            state: Mutex::new(State::default()),
            pings: tx,
            queue: Mutex::new(Some(rx)),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ping(&self, signal: Signal, body: String) {
        if self.pinger.is_some() {
            let _ = self.pings.send((signal, body));
        }
    }

    /// A snapshot was published: success ping, or a fail ping if it is suspect.
    pub fn snapshot_committed(&self, m: &Manifest) {
        let mut st = self.state();
        st.last_snapshot = Some(LastSnapshot {
            id: m.id.clone(),
            time: m.time,
            total_bytes: m.total_bytes(),
        });
        if !st.snapshot_ids.contains(&m.id) {
            st.snapshot_ids.push(m.id.clone());
            st.logical_bytes += m.total_bytes();
        }
        st.active.remove("missed_window");
        match &m.suspect {
            Some(reason) => {
                tracing::warn!(snapshot = %m.id, reason = %reason, "alert: suspect snapshot");
                self.ping(
                    Signal::Fail,
                    format!(
                        "receiver: snapshot {} committed but flagged SUSPECT: {reason}\n",
                        m.id
                    ),
                );
            }
            None => {
                // healthchecks.io marks the check up again: conditions still present
                // are reported afresh by the next check.
                st.reported.clear();
                self.ping(
                    Signal::Success,
                    format!(
                        "receiver: snapshot {} committed at {}: {} objects, {} dump bytes, \
                         {} bytes total, {} new bytes stored\n",
                        m.id,
                        m.time.to_rfc3339(),
                        m.stats.object_count,
                        m.stats.dump_bytes,
                        m.total_bytes(),
                        m.stats.new_bytes
                    ),
                );
            }
        }
    }

    /// A client certificate was admitted (CA-signed, not revoked, identity allowed): its
    /// expiry feeds the `backup_receiver_admitted_certificate_expiry_timestamp_seconds`
    /// metric and the `certificate_expiry` alert.
    pub fn certificate_admitted(&self, fingerprint: &str, identity: &str, not_after: i64) {
        let Some(not_after) = DateTime::from_timestamp(not_after, 0) else {
            return;
        };
        let mut st = self.state();
        if st.admitted_certs.contains_key(fingerprint) {
            return;
        }
        if st.admitted_certs.len() >= MAX_ADMITTED_CERTS {
            // Keep the ones expiring first: they are what the alert is about.
            let latest = st
                .admitted_certs
                .iter()
                .max_by_key(|(_, (_, t))| *t)
                .map(|(k, (_, t))| (k.clone(), *t));
            match latest {
                Some((k, t)) if t > not_after => {
                    st.admitted_certs.remove(&k);
                }
                _ => return,
            }
        }
        st.admitted_certs
            .insert(fingerprint.to_string(), (identity.to_string(), not_after));
    }

    /// A request was refused or rejected; `reason` labels the metric.
    pub fn rejected(&self, reason: &str) {
        *self.state().rejected.entry(reason.to_string()).or_default() += 1;
    }

    /// Verification finished; `damage` describes what was found, if anything. Damage
    /// sends a fail ping at once.
    pub fn verify_finished(&self, damage: Option<&str>) {
        let now = (self.clock)();
        self.state().last_verify = Some((now, damage.is_none()));
        if let Some(d) = damage {
            tracing::error!(damage = %d, "alert: verification found damage");
            self.ping(
                Signal::Fail,
                format!("receiver: verification found damage: {d}\n"),
            );
        }
    }

    fn read_repo(repo: &Repository, known: &[String]) -> RepoStats {
        let snapshot_ids = repo.snapshot_ids().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "monitor: cannot list snapshots");
            known.to_vec()
        });
        // Manifests are read again, one at a time, only when the set of snapshots changed;
        // only their sums are kept.
        let manifests = (snapshot_ids != known)
            .then(|| {
                let mut sums = ManifestSums::default();
                repo.for_each_manifest(|m| {
                    sums.logical_bytes += m.total_bytes();
                    if sums.newest.as_ref().is_none_or(|n| m.time >= n.time) {
                        sums.newest = Some(LastSnapshot {
                            id: m.id.clone(),
                            time: m.time,
                            total_bytes: m.total_bytes(),
                        });
                    }
                    true
                })
                .ok()
                .map(|()| sums)
            })
            .flatten();
        // A walk that failed half-way is not a count: the last whole one stays.
        let (mut chunks, mut stored_bytes) = (0, 0);
        let walked = repo.for_each_chunk(&mut |_, size| {
            chunks += 1;
            stored_bytes += size;
        });
        let chunks = match walked {
            Ok(()) => Some((chunks, stored_bytes)),
            Err(e) => {
                tracing::warn!(error = %e, "monitor: cannot list chunks");
                None
            }
        };
        let free_bytes = repo
            .free_space()
            .map_err(|e| tracing::warn!(error = %e, "monitor: statvfs failed"))
            .ok();
        RepoStats {
            snapshot_ids,
            manifests,
            chunks,
            free_bytes,
        }
    }

    /// Refreshes what the repository holds and evaluates the standing conditions (missed
    /// window, free space), sending a fail ping when one newly holds.
    pub async fn check(&self) {
        let known = self.state().snapshot_ids.clone();
        let repo = self.repo.clone();
        let Ok(stats) = tokio::task::spawn_blocking(move || Self::read_repo(&repo, &known)).await
        else {
            return;
        };
        let now = (self.clock)();
        let mut st = self.state();
        st.snapshot_ids = stats.snapshot_ids;
        if let Some(sums) = stats.manifests {
            st.logical_bytes = sums.logical_bytes;
            if let Some(newest) = sums.newest {
                st.last_snapshot = Some(newest);
            }
        }
        if let Some((chunks, stored_bytes)) = stats.chunks {
            st.chunks = chunks;
            st.stored_bytes = stored_bytes;
        }
        st.free_bytes = stats.free_bytes;

        let mut active = BTreeMap::new();
        let since = st.last_snapshot.as_ref().map_or(self.started, |s| s.time);
        let window = self.config.missed_window;
        if now
            .signed_duration_since(since)
            .to_std()
            .unwrap_or_default()
            > window
        {
            let what = match &st.last_snapshot {
                Some(s) => format!(
                    "the last snapshot ({}) was committed at {}",
                    s.id,
                    s.time.to_rfc3339()
                ),
                None => format!(
                    "no snapshot at all since the receiver started at {}",
                    self.started.to_rfc3339()
                ),
            };
            active.insert(
                "missed_window",
                format!(
                    "no snapshot committed within monitoring.missed_window ({}): {what}; receiver clock now {}",
                    humantime::format_duration(window),
                    now.to_rfc3339()
                ),
            );
        }
        if let Some((fp, (identity, expiry))) =
            st.admitted_certs.iter().min_by_key(|(_, (_, t))| *t)
        {
            if *expiry - now < CERT_EXPIRY_WARNING {
                active.insert(
                    "certificate_expiry",
                    format!(
                        "the client certificate of {identity} ({fp}) admitted by this receiver \
                         expires at {}, within 30 days (receiver clock now {}); issue a new one \
                         with `backup-receiver certs issue-sender`",
                        expiry.to_rfc3339(),
                        now.to_rfc3339()
                    ),
                );
            }
        }
        if let Some(free) = st.free_bytes {
            let min = self.config.min_free_bytes_alert;
            if free < min {
                active.insert(
                    "low_free_space",
                    format!(
                        "only {free} bytes free on the repository's file system ({}); \
                         monitoring.min_free_bytes_alert is {min}",
                        self.repo.describe()
                    ),
                );
            }
        }
        let fresh: Vec<&'static str> = active
            .keys()
            .filter(|k| !st.reported.contains(*k))
            .copied()
            .collect();
        st.reported.retain(|k| active.contains_key(k));
        if !fresh.is_empty() {
            for k in &fresh {
                tracing::error!(alert = k, message = %active[k], "alert");
            }
            st.reported.extend(fresh);
            let body: String = active
                .values()
                .map(|m| format!("receiver: {m}\n"))
                .collect();
            self.ping(Signal::Fail, body);
        }
        st.active = active;
        st.last_check = Some(now);
    }

    /// Binds the metrics address, if one is configured; fails at start-up, not later.
    pub async fn bind_metrics(&self) -> anyhow::Result<Option<TcpListener>> {
        match self.config.metrics_listen {
            None => Ok(None),
            Some(addr) => TcpListener::bind(addr)
                .await
                .map(Some)
                .with_context(|| format!("monitoring.metrics_listen: cannot bind {addr}")),
        }
    }

    /// The background work: periodic checks, queued pings, and the metrics endpoint.
    /// Runs until dropped (the server aborts it when it stops).
    pub async fn run(self: Arc<Self>, metrics: Option<TcpListener>) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        let checks = async {
            let mut tick = tokio::time::interval(self.config.check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.check().await;
            }
        };
        let pings = async {
            let (Some(mut queue), Some(pinger)) = (queue, self.pinger.clone()) else {
                return std::future::pending().await;
            };
            while let Some((signal, body)) = queue.recv().await {
                pinger.send(signal, &body).await;
            }
        };
        let scrapes = async {
            match metrics {
                Some(listener) => self.serve_metrics(listener).await,
                None => std::future::pending().await,
            }
        };
        tokio::join!(checks, pings, scrapes);
    }

    /// One connection at a time, each bounded: a scraper cannot pile up tasks.
    async fn serve_metrics(&self, listener: TcpListener) {
        use hyper::{Request, Response, StatusCode};
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                let resp = if req.uri().path() == "/metrics" {
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(self.metrics())))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                };
                async move { Ok::<_, Infallible>(resp.expect("static response")) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, conn).await;
        }
    }
}

/// Reports verification damage from a process that runs no [`Monitor`] (the CLI's
/// `verify --config`): one fail ping with `body` (bounded by the caller, see
/// `verify_schedule::damage_text`) to the configured check, if any.
pub async fn report_verify_damage(config: &MonitoringConfig, body: &str) {
    if let Some(url) = &config.healthcheck_url {
        match Pinger::new(url, config.ping_timeout, config.ping_retries.get()) {
            Ok(p) => {
                p.send(Signal::Fail, body).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot set up healthcheck pings"),
        }
    }
}

/// The label a rejected request's status code gets in the metrics.
pub fn code_label(code: tonic::Code) -> String {
    let name = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests;
