//! The receiver's configuration file (`receiver.toml`, see deploy/receiver.toml). Each
//! section is one struct; a section whose keys are all optional has one `Default` and
//! `#[serde(default, deny_unknown_fields)]`, so adding a section is adding one struct and
//! one field of [`ReceiverConfig`]. Values are checked by their types while they are
//! deserialised, and errors name the file and the dotted key
//! (`backup_common::config::load`); only rules across keys are checked after loading.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_common::checked_string;
use backup_common::config::{load, non_blank, non_empty, ConfigError, PING_RETRIES, PING_TIMEOUT};
use backup_common::retention::Policy;
use ipnet::IpNet;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

pub use backup_common::config::{read_secret, PingUrl, PostgresUrl};

#[cfg(test)]
mod tests;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Port 0 lets the system choose; `serve` logs the bound address.
    pub listen: SocketAddr,
    pub repo: PathBuf,
    pub tls: ServerTls,
    pub admission: Admission,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub guard: Guard,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub drill: DrillConfig,
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
}

/// `[verify]`: `serve`'s own verification schedule (receiver clock); every key optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// How often a pass runs; `"0s"` turns the schedule off.
    #[serde(with = "backup_common::config::duration")]
    pub interval: Duration,
    /// Each pass re-reads every chunk stored since the last pass.
    pub read_new: bool,
    /// Every stored chunk is re-read at least once per cycle (a slice each pass).
    #[serde(with = "backup_common::config::non_zero_duration")]
    pub cycle: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            interval: Duration::from_secs(24 * 3600),
            read_new: true,
            cycle: Duration::from_secs(30 * 86400),
        }
    }
}

impl ReceiverConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: ReceiverConfig = load(path)?;
        let r = &cfg.retention;
        if r.keep_daily + r.keep_weekly + r.keep_monthly + r.keep_last == 0 {
            return Err(ConfigError::invalid(
                path,
                "retention",
                "keeps nothing; set keep_daily or another keep_ rule",
            ));
        }
        let v = &cfg.verify;
        if !v.interval.is_zero() && v.cycle < v.interval {
            return Err(ConfigError::invalid(
                path,
                "verify.cycle",
                "must be at least verify.interval (a cycle is one or more passes)",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, q) in cfg.drill.sanity_queries.iter().enumerate() {
            if !seen.insert(q.name.as_str()) {
                return Err(ConfigError::invalid(
                    path,
                    &format!("drill.sanity_queries[{i}].name"),
                    format!("the name {:?} is used twice", q.name),
                ));
            }
        }
        Ok(cfg)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// Client certificate identities (subject CN or DNS SAN) allowed in; at least one.
    #[serde(deserialize_with = "non_empty")]
    pub allowed_identities: Vec<String>,
    /// Source networks allowed in, e.g. `100.64.0.0/10` (Tailscale) or the VPS's `/32`;
    /// at least one.
    #[serde(deserialize_with = "non_empty")]
    pub allowed_networks: Vec<IpNet>,
    /// Optional: ask the local tailscaled who the peer is and require a node tag.
    #[serde(default)]
    pub tailscale: Option<TailscaleCheck>,
    /// Client certificates refused at the handshake although the CA signed them.
    #[serde(default)]
    pub revoked_certificates: Vec<CertFingerprint>,
}

checked_string!(
    /// `"sha256:<hex of the DER certificate>"`, as `backup-receiver certs fingerprint` prints.
    CertFingerprint,
    |fp| {
        let hex = fp.strip_prefix("sha256:").unwrap_or("");
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(format!("{fp:?} must be \"sha256:\" and 64 hex digits, as `backup-receiver certs fingerprint FILE` prints"))
        }
    }
);

checked_string!(
    /// A Tailscale node tag, like `tag:prod-vps`.
    NodeTag,
    |t| {
        if t.len() > "tag:".len() && t.starts_with("tag:") {
            Ok(())
        } else {
            Err(format!("{t:?} is not a node tag like \"tag:prod-vps\""))
        }
    }
);

/// `[admission.tailscale]`: the peer's Tailscale node, as the local tailscaled's LocalAPI
/// (`/localapi/v0/whois`) reports it, must carry one of `required_tags`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailscaleCheck {
    /// tailscaled's LocalAPI unix socket.
    #[serde(default = "TailscaleCheck::default_socket")]
    pub socket: PathBuf,
    /// Node tags of which the peer must carry at least one, e.g. `["tag:prod-vps"]`.
    #[serde(deserialize_with = "non_empty")]
    pub required_tags: Vec<NodeTag>,
    /// How long a whois answer is reused for the same peer address and port.
    #[serde(
        default = "TailscaleCheck::default_cache_ttl",
        with = "backup_common::config::duration"
    )]
    pub cache_ttl: Duration,
}

impl TailscaleCheck {
    fn default_socket() -> PathBuf {
        PathBuf::from("/var/run/tailscale/tailscaled.sock")
    }
    fn default_cache_ttl() -> Duration {
        Duration::from_secs(60)
    }
}

/// Smallest allowed `limits.max_message_bytes`: one incompressible chunk plus framing.
pub const MIN_MESSAGE_BYTES: usize = 5 * 1024 * 1024;
/// Largest allowed `limits.max_message_bytes`.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 256 * 1024 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// `[limits]`: every key optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Upload sessions open at once.
    pub max_sessions: NonZeroUsize,
    /// A session with no request for this long (receiver clock) is dropped.
    #[serde(with = "backup_common::config::non_zero_duration")]
    pub idle_timeout: Duration,
    /// Snapshots accepted per calendar day of `retention.time_zone` (receiver's clock).
    /// The nightly job commits once a day; a failed night's retries commit nothing, so
    /// they are not capped by this.
    pub max_snapshots_per_day: NonZeroU32,
    /// Stored (possibly compressed) chunk bytes one upload session may add.
    pub max_session_bytes: NonZeroU64,
    /// Stored chunk bytes all sessions together may add per calendar day of
    /// `retention.time_zone` (receiver's clock).
    pub max_daily_bytes: NonZeroU64,
    /// Free space the repository's filesystem keeps in reserve: a chunk that would eat
    /// into it is refused with RESOURCE_EXHAUSTED.
    pub min_free_bytes: u64,
    /// Largest gRPC message accepted (a chunk upload must fit: at least 5 MiB).
    #[serde(deserialize_with = "max_message_bytes")]
    pub max_message_bytes: usize,
    /// Longest a commit may take from its first message to its last object batch.
    #[serde(with = "backup_common::config::non_zero_duration")]
    pub commit_deadline: Duration,
    /// Longest a commit may wait for the peer's next message.
    #[serde(with = "backup_common::config::non_zero_duration")]
    pub commit_idle_timeout: Duration,
    /// Longest an upload session may stay open (it holds back garbage collection's cut-off).
    #[serde(with = "backup_common::config::non_zero_duration")]
    pub max_session_age: Duration,
    /// PutChunks streams one connection may have open at once.
    pub max_put_streams_per_connection: NonZeroUsize,
    /// PutChunks streams one certificate identity may have open at once.
    pub max_put_streams_per_identity: NonZeroUsize,
    /// Size at which `audit.log` is rotated (at least 64 KiB).
    #[serde(deserialize_with = "audit_log_max_bytes")]
    pub audit_log_max_bytes: u64,
    /// Rotated (zstd-compressed) audit logs kept besides the current one.
    pub audit_log_generations: NonZeroU32,
}

impl Default for Limits {
    fn default() -> Self {
        let n = |v: usize| NonZeroUsize::new(v).unwrap();
        Limits {
            max_sessions: n(2),
            idle_timeout: Duration::from_secs(600),
            max_snapshots_per_day: NonZeroU32::MIN,
            max_session_bytes: NonZeroU64::new(64 * GIB).unwrap(),
            max_daily_bytes: NonZeroU64::new(128 * GIB).unwrap(),
            min_free_bytes: 2 * GIB,
            max_message_bytes: backup_common::MAX_MESSAGE_BYTES,
            commit_deadline: Duration::from_secs(30 * 60),
            commit_idle_timeout: Duration::from_secs(60),
            max_session_age: Duration::from_secs(24 * 3600),
            max_put_streams_per_connection: n(4),
            max_put_streams_per_identity: n(8),
            audit_log_max_bytes: 16 * 1024 * 1024,
            audit_log_generations: NonZeroU32::new(8).unwrap(),
        }
    }
}

fn max_message_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = usize::deserialize(d)?;
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES_LIMIT).contains(&v) {
        return Err(D::Error::custom(format!(
            "must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES_LIMIT} (one 4 MiB chunk must fit)"
        )));
    }
    Ok(v)
}

fn audit_log_max_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v < 64 * 1024 {
        return Err(D::Error::custom("must be at least 65536 (64 KiB)"));
    }
    Ok(v)
}

/// A share between 0.0 and 1.0 (0.1 = 10 %).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Fraction(f64);

impl Fraction {
    pub fn new(v: f64) -> Option<Fraction> {
        (0.0..=1.0).contains(&v).then_some(Fraction(v))
    }
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Fraction::new(v).ok_or_else(|| {
            D::Error::custom(format!(
                "{v} must be a fraction between 0.0 and 1.0 (0.1 = a drop of 10 %)"
            ))
        })
    }
}

impl std::fmt::Display for Fraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A growth share: finite and above 0 (1.0 = more than doubled).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Growth(f64);

impl Growth {
    pub fn new(v: f64) -> Option<Growth> {
        (v.is_finite() && v > 0.0).then_some(Growth(v))
    }
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Growth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Growth::new(v).ok_or_else(|| {
            D::Error::custom(format!(
                "{v} must be a positive fraction (1.0 = suspect when a value more than doubles)"
            ))
        })
    }
}

impl std::fmt::Display for Growth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `[guard]`: how far a snapshot may fall against the previous good one before the anomaly
/// guard marks it suspect. Each value is a fraction of the previous value (0.1 = 10 %).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Guard {
    pub max_object_count_drop: Fraction,
    pub max_object_bytes_drop: Fraction,
    pub max_dump_shrink: Fraction,
    pub max_table_rows_drop: Fraction,
    /// Growth, as a fraction of the previous value, beyond which a snapshot is suspect
    /// (1.0: more than doubled): an inflated snapshot must not become the baseline.
    pub max_growth: Growth,
    /// Growth is judged only once the previous value reached these floors.
    pub growth_min_objects: u64,
    pub growth_min_bytes: u64,
    pub growth_min_rows: u64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            max_object_count_drop: Fraction(0.10),
            max_object_bytes_drop: Fraction(0.10),
            max_dump_shrink: Fraction(0.5),
            max_table_rows_drop: Fraction(0.5),
            max_growth: Growth(1.0),
            growth_min_objects: 100,
            growth_min_bytes: 64 * 1024 * 1024,
            growth_min_rows: 1000,
        }
    }
}

/// `[retention]` on the receiver: the keep-rules plus the schedule and grace periods of
/// prune, trash and garbage collection. All times are the receiver's own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    /// Months kept (default 6), so a quarterly drill always finds a snapshot older than
    /// its previous one.
    pub keep_monthly: u32,
    /// Calendar days and weeks are counted in this zone.
    pub time_zone: chrono_tz::Tz,
    /// How often `serve` runs prune and garbage collection; `"0s"` turns the schedule off.
    #[serde(with = "backup_common::config::duration")]
    pub interval: Duration,
    /// How long a pruned manifest stays in `trash/` (and can be undeleted).
    #[serde(with = "backup_common::config::duration")]
    pub trash_grace: Duration,
    /// Unreferenced chunks younger than this are left alone (open or abandoned uploads).
    #[serde(with = "backup_common::config::duration")]
    pub gc_grace: Duration,
}

impl RetentionConfig {
    pub fn policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
        }
    }
}

impl Default for RetentionConfig {
    /// The sender's local rotation ([`Policy::default`]) plus 6 monthly.
    fn default() -> Self {
        let p = Policy::default();
        RetentionConfig {
            keep_last: p.keep_last,
            keep_daily: p.keep_daily,
            keep_weekly: p.keep_weekly,
            keep_monthly: 6,
            time_zone: chrono_tz::Europe::Berlin,
            interval: Duration::from_secs(3600),
            trash_grace: Duration::from_secs(7 * 86400),
            gc_grace: Duration::from_secs(48 * 3600),
        }
    }
}

/// `[drill]`: how `backup-receiver drill` proves a snapshot restores. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillConfig {
    /// A database URL on an existing PostgreSQL server to restore into instead of a
    /// throwaway cluster. Its role needs CREATEDB: the drill creates a fresh database on
    /// that server for each run and drops it afterwards.
    pub sandbox_database_url: Option<PostgresUrl>,
    /// Directory of `initdb`, `postgres` and `pg_restore`; default `pg_config --bindir`,
    /// else /usr/lib/postgresql/15/bin.
    pub pg_bin_dir: Option<PathBuf>,
    /// Queries run on the restored database; each must return exactly one boolean `true`.
    /// Names are unique (checked at load).
    pub sanity_queries: Vec<SanityQuery>,
    /// healthchecks.io-style URL: `<url>/start` when a drill begins, `<url>` on success,
    /// `<url>/fail` on failure (with the report as the request body).
    pub healthcheck_url: Option<PingUrl>,
    /// Where the throwaway cluster and the restored objects go; default `$TMPDIR`.
    pub scratch_dir: Option<PathBuf>,
    /// OS account the throwaway PostgreSQL and `pg_restore` run as when the drill runs as
    /// root (default `postgres`). It must not be able to read the repository, this
    /// config or the receiver's key; the drill checks and refuses otherwise.
    pub sandbox_user: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SanityQuery {
    #[serde(deserialize_with = "non_blank")]
    pub name: String,
    #[serde(deserialize_with = "non_blank")]
    pub sql: String,
}

/// `[monitoring]`: the receiver's own monitoring, independent of the sender's check.
/// Every key optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// healthchecks.io-style check URL; success after each commit, `/fail` on alerts.
    pub healthcheck_url: Option<PingUrl>,
    /// Alert when no snapshot was committed for this long (receiver clock).
    #[serde(with = "backup_common::config::duration")]
    pub missed_window: Duration,
    /// Alert when the repository's file system has fewer free bytes than this.
    pub min_free_bytes_alert: u64,
    /// How often the background checks run.
    #[serde(with = "backup_common::config::non_zero_duration")]
    pub check_interval: Duration,
    /// Per-attempt timeout and attempts of one ping.
    #[serde(with = "backup_common::config::non_zero_duration")]
    pub ping_timeout: Duration,
    pub ping_retries: NonZeroU32,
    /// Local address of the Prometheus text-format endpoint (`/metrics`); off when absent.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            healthcheck_url: None,
            missed_window: Duration::from_secs(26 * 3600),
            min_free_bytes_alert: 5 * GIB,
            check_interval: Duration::from_secs(300),
            ping_timeout: PING_TIMEOUT,
            ping_retries: PING_RETRIES,
            metrics_listen: None,
        }
    }
}
