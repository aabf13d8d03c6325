//! Configuration files (TOML) of both programs. Parsed once into plain structs with
//! `deny_unknown_fields`, then validated; every error names the file and the key.
//! Secrets (passwords, S3 keys, TLS keys) are read from files named here, never taken
//! from the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::retention::Policy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("cannot read the secret named by `{key}` from {path}: {source}")]
    Secret {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret file named by `{key}` ({path}) is empty")]
    EmptySecret { key: &'static str, path: PathBuf },
}

/// A duration written like `30m`, `26h`, `7d` or `90s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!("{s:?} is not a duration like \"30m\": {e}"))
            })
    }
}

// ---------------------------------------------------------------- sender

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    /// Name this host reports to the receiver (information only); defaults to the hostname.
    #[serde(default)]
    pub source_host: Option<String>,
    pub receiver: ReceiverEndpoint,
    pub database: DatabaseConfig,
    pub objects: ObjectsConfig,
    #[serde(default)]
    pub run: RunConfig,
    /// Dead-man's-switch pings (healthchecks.io protocol); none when absent.
    #[serde(default)]
    pub healthcheck: Option<HealthcheckConfig>,
}

/// A healthchecks.io-style check: `<url>/start`, `<url>` (success), `<url>/fail`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcheckConfig {
    pub url: String,
    /// Per-attempt timeout of one ping.
    #[serde(default = "default_ping_timeout")]
    pub timeout: HumanDuration,
    /// Attempts per ping; a ping that still fails is logged, never fatal.
    #[serde(default = "default_ping_retries")]
    pub retries: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverEndpoint {
    pub url: String,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Name to expect in the receiver's certificate, when it differs from the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Command prefix that runs pg_dump, e.g. `["docker", "compose", "exec", "-T", "db", "pg_dump"]`.
    #[serde(default = "default_pg_dump")]
    pub pg_dump: Vec<String>,
    /// URL pg_dump connects with, when it differs from `url` (e.g. inside the container).
    #[serde(default)]
    pub dump_url: Option<String>,
    pub local_dir: PathBuf,
    /// strftime pattern of the local dump file name; must contain %Y, %m and %d.
    #[serde(default = "default_dump_name")]
    pub dump_name: String,
    #[serde(default = "default_keep_daily")]
    pub keep_daily: u32,
    #[serde(default = "default_keep_weekly")]
    pub keep_weekly: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    pub access_key_file: PathBuf,
    pub secret_key_file: PathBuf,
    /// Objects downloaded and chunked at the same time.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Attempts per network step before the run fails (with exponential backoff).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Past this the run is abandoned (pg_dump killed, nothing committed), exit code 6.
    #[serde(default = "default_deadline")]
    pub deadline: HumanDuration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            retries: default_retries(),
            deadline: default_deadline(),
        }
    }
}

fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 60))
}
fn default_ping_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_ping_retries() -> u32 {
    3
}

/// Checks a ping URL: http(s), no query string or fragment (paths are appended to it).
fn check_ping_url(url: &str) -> Result<(), &'static str> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err("must be an http:// or https:// URL");
    }
    if url.contains(['?', '#']) {
        return Err("must not contain a query or fragment (/start and /fail are appended)");
    }
    Ok(())
}

fn default_pg_dump() -> Vec<String> {
    vec!["pg_dump".into()]
}
fn default_dump_name() -> String {
    "archiv-%Y%m%d.dump".into()
}
fn default_keep_daily() -> u32 {
    14
}
fn default_keep_weekly() -> u32 {
    8
}
fn default_region() -> String {
    "us-east-1".into()
}
/// 4 keeps both cores busy: with the S3 reads and the chunker fixed, night 1 at 1 GiB took
/// 3.76 s with 4, 3.99 s with 8 (sender peak 165 / 198 MiB; docs/PERFORMANCE.md, section 8).
fn default_concurrency() -> usize {
    4
}
fn default_retries() -> u32 {
    5
}

impl SenderConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: SenderConfig = parse(path)?;
        let invalid = |key, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message: message.to_string(),
        };
        if !cfg.receiver.url.starts_with("https://") {
            return Err(invalid(
                "receiver.url",
                "must be an https:// URL (the receiver only speaks TLS)",
            ));
        }
        if !(cfg.database.url.starts_with("postgres://")
            || cfg.database.url.starts_with("postgresql://"))
        {
            return Err(invalid("database.url", "must be a postgres:// URL"));
        }
        if cfg.database.pg_dump.is_empty() {
            return Err(invalid(
                "database.pg_dump",
                "must name at least the pg_dump program",
            ));
        }
        let n = &cfg.database.dump_name;
        if !(n.contains("%Y") && n.contains("%m") && n.contains("%d")) || n.contains('/') {
            return Err(invalid(
                "database.dump_name",
                "must be a file name containing %Y, %m and %d, like \"archiv-%Y%m%d.dump\"",
            ));
        }
        if cfg.database.keep_daily == 0 {
            return Err(invalid("database.keep_daily", "must be at least 1"));
        }
        if !(cfg.objects.endpoint.starts_with("http://")
            || cfg.objects.endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "objects.endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        if cfg.objects.bucket.is_empty() {
            return Err(invalid("objects.bucket", "must not be empty"));
        }
        if cfg.objects.concurrency == 0 || cfg.objects.concurrency > 64 {
            return Err(invalid("objects.concurrency", "must be between 1 and 64"));
        }
        if cfg.run.retries == 0 {
            return Err(invalid("run.retries", "must be at least 1"));
        }
        if cfg.run.deadline.0.is_zero() {
            return Err(invalid("run.deadline", "must be longer than zero"));
        }
        if let Some(hc) = &cfg.healthcheck {
            check_ping_url(&hc.url).map_err(|m| invalid("healthcheck.url", m))?;
            if hc.retries == 0 {
                return Err(invalid("healthcheck.retries", "must be at least 1"));
            }
            if hc.timeout.0.is_zero() {
                return Err(invalid("healthcheck.timeout", "must be longer than zero"));
            }
        }
        Ok(cfg)
    }
}

// ---------------------------------------------------------------- receiver

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
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

/// `[verify]` on the receiver: `serve`'s own verification schedule (receiver clock).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// How often a pass runs; `"0s"` turns the schedule off.
    pub interval: HumanDuration,
    /// Each pass re-reads every chunk stored since the last pass.
    pub read_new: bool,
    /// Every stored chunk is re-read at least once per cycle (a slice each pass).
    pub cycle: HumanDuration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            interval: HumanDuration(Duration::from_secs(24 * 3600)),
            read_new: true,
            cycle: HumanDuration(Duration::from_secs(30 * 86400)),
        }
    }
}

impl VerifyConfig {
    /// The key at fault and why, if the section is unusable.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !self.interval.0.is_zero() && self.cycle.0 < self.interval.0 {
            return Err((
                "verify.cycle",
                "must be at least verify.interval (a cycle is one or more passes)",
            ));
        }
        Ok(())
    }
}

/// The receiver's own monitoring, independent of the sender's check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringConfig {
    /// healthchecks.io-style check URL; success after each commit, `/fail` on alerts.
    #[serde(default)]
    pub healthcheck_url: Option<String>,
    /// Alert when no snapshot was committed for this long (receiver clock).
    #[serde(default = "default_missed_window")]
    pub missed_window: HumanDuration,
    /// Alert when the repository's file system has fewer free bytes than this.
    #[serde(default = "default_min_free_alert")]
    pub min_free_bytes_alert: u64,
    /// How often the background checks run.
    #[serde(default = "default_check_interval")]
    pub check_interval: HumanDuration,
    /// Per-attempt timeout and attempts of one ping.
    #[serde(default = "default_ping_timeout")]
    pub ping_timeout: HumanDuration,
    #[serde(default = "default_ping_retries")]
    pub ping_retries: u32,
    /// Local address of the Prometheus text-format endpoint (`/metrics`); off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

fn default_missed_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(26 * 3600))
}
fn default_min_free_alert() -> u64 {
    5 * 1024 * 1024 * 1024
}
fn default_check_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            healthcheck_url: None,
            missed_window: default_missed_window(),
            min_free_bytes_alert: default_min_free_alert(),
            check_interval: default_check_interval(),
            ping_timeout: default_ping_timeout(),
            ping_retries: default_ping_retries(),
            metrics_listen: None,
        }
    }
}

/// `[retention]` on the receiver: the keep-rules plus the schedule and grace periods of
/// prune, trash and garbage collection. All times are the receiver's own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default = "default_keep_daily")]
    pub keep_daily: u32,
    #[serde(default = "default_keep_weekly")]
    pub keep_weekly: u32,
    /// Months kept (default 6), so a quarterly drill always finds a snapshot older than
    /// its previous one.
    #[serde(default = "default_receiver_keep_monthly")]
    pub keep_monthly: u32,
    /// Calendar days and weeks are counted in this zone.
    #[serde(default = "default_time_zone")]
    pub time_zone: chrono_tz::Tz,
    /// How often `serve` runs prune and garbage collection; `"0s"` turns the schedule off.
    #[serde(default = "default_retention_interval")]
    pub interval: HumanDuration,
    /// How long a pruned manifest stays in `trash/` (and can be undeleted).
    #[serde(default = "default_trash_grace")]
    pub trash_grace: HumanDuration,
    /// Unreferenced chunks younger than this are left alone (open or abandoned uploads).
    #[serde(default = "default_gc_grace")]
    pub gc_grace: HumanDuration,
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
    fn default() -> Self {
        let p = Policy::default();
        RetentionConfig {
            keep_last: p.keep_last,
            keep_daily: p.keep_daily,
            keep_weekly: p.keep_weekly,
            keep_monthly: default_receiver_keep_monthly(),
            time_zone: default_time_zone(),
            interval: default_retention_interval(),
            trash_grace: default_trash_grace(),
            gc_grace: default_gc_grace(),
        }
    }
}

fn default_receiver_keep_monthly() -> u32 {
    6
}
fn default_time_zone() -> chrono_tz::Tz {
    chrono_tz::Europe::Berlin
}
fn default_retention_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_trash_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 86400))
}
fn default_gc_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(48 * 3600))
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
    /// Client certificate identities (subject CN or DNS SAN) allowed in.
    pub allowed_identities: Vec<String>,
    /// Source networks allowed in, e.g. `100.64.0.0/10` (Tailscale) or the VPS's `/32`.
    pub allowed_networks: Vec<IpNet>,
    /// Optional: ask the local tailscaled who the peer is and require a node tag.
    #[serde(default)]
    pub tailscale: Option<TailscaleCheck>,
    /// Client certificates refused at the handshake although the CA signed them:
    /// `"sha256:<hex of the DER certificate>"`, as `backup-receiver certs fingerprint` prints.
    #[serde(default)]
    pub revoked_certificates: Vec<String>,
}

/// `[admission.tailscale]`: the peer's Tailscale node, as the local tailscaled's LocalAPI
/// (`/localapi/v0/whois`) reports it, must carry one of `required_tags`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailscaleCheck {
    /// tailscaled's LocalAPI unix socket.
    #[serde(default = "default_tailscale_socket")]
    pub socket: PathBuf,
    /// Node tags of which the peer must carry at least one, e.g. `["tag:prod-vps"]`.
    pub required_tags: Vec<String>,
    /// How long a whois answer is reused for the same peer address and port.
    #[serde(default = "default_tailscale_cache")]
    pub cache_ttl: HumanDuration,
}

fn default_tailscale_socket() -> PathBuf {
    PathBuf::from("/var/run/tailscale/tailscaled.sock")
}
fn default_tailscale_cache() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Upload sessions open at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// A session with no request for this long is dropped.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Snapshots accepted per calendar day of `retention.time_zone` (receiver's clock).
    #[serde(default = "default_snapshots_per_day")]
    pub max_snapshots_per_day: u32,
    /// Stored (possibly compressed) chunk bytes one upload session may add.
    #[serde(default = "default_max_session_bytes")]
    pub max_session_bytes: u64,
    /// Stored chunk bytes all sessions together may add per calendar day of
    /// `retention.time_zone` (receiver's clock).
    #[serde(default = "default_max_daily_bytes")]
    pub max_daily_bytes: u64,
    /// Free space the repository's filesystem keeps in reserve: a chunk that would eat
    /// into it is refused with RESOURCE_EXHAUSTED.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Largest gRPC message accepted (a chunk upload must fit: at least 5 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Longest a commit may take from its first message to its last object batch.
    #[serde(default = "default_commit_deadline")]
    pub commit_deadline: HumanDuration,
    /// Longest a commit may wait for the peer's next message.
    #[serde(default = "default_commit_idle_timeout")]
    pub commit_idle_timeout: HumanDuration,
    /// Longest an upload session may stay open (it holds back garbage collection's cut-off).
    #[serde(default = "default_max_session_age")]
    pub max_session_age: HumanDuration,
    /// PutChunks streams one connection may have open at once.
    #[serde(default = "default_put_streams_per_connection")]
    pub max_put_streams_per_connection: usize,
    /// PutChunks streams one certificate identity may have open at once.
    #[serde(default = "default_put_streams_per_identity")]
    pub max_put_streams_per_identity: usize,
    /// Size at which `audit.log` is rotated.
    #[serde(default = "default_audit_log_max_bytes")]
    pub audit_log_max_bytes: u64,
    /// Rotated (zstd-compressed) audit logs kept besides the current one.
    #[serde(default = "default_audit_log_generations")]
    pub audit_log_generations: u32,
}

/// `[guard]`: how far a snapshot may fall against the previous good one before the anomaly
/// guard marks it suspect. Each value is a fraction of the previous value (0.1 = 10 %).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    #[serde(default = "default_object_drop")]
    pub max_object_count_drop: f64,
    #[serde(default = "default_object_drop")]
    pub max_object_bytes_drop: f64,
    #[serde(default = "default_half")]
    pub max_dump_shrink: f64,
    #[serde(default = "default_half")]
    pub max_table_rows_drop: f64,
    /// Growth, as a fraction of the previous value, beyond which a snapshot is suspect
    /// (1.0: more than doubled): an inflated snapshot must not become the baseline.
    #[serde(default = "default_growth")]
    pub max_growth: f64,
    /// Growth is judged only once the previous value reached these floors.
    #[serde(default = "default_growth_min_objects")]
    pub growth_min_objects: u64,
    #[serde(default = "default_growth_min_bytes")]
    pub growth_min_bytes: u64,
    #[serde(default = "default_growth_min_rows")]
    pub growth_min_rows: u64,
}

fn default_growth() -> f64 {
    1.0
}
fn default_growth_min_objects() -> u64 {
    100
}
fn default_growth_min_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_growth_min_rows() -> u64 {
    1000
}

fn default_object_drop() -> f64 {
    0.10
}
fn default_half() -> f64 {
    0.5
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            max_object_count_drop: default_object_drop(),
            max_object_bytes_drop: default_object_drop(),
            max_dump_shrink: default_half(),
            max_table_rows_drop: default_half(),
            max_growth: default_growth(),
            growth_min_objects: default_growth_min_objects(),
            growth_min_bytes: default_growth_min_bytes(),
            growth_min_rows: default_growth_min_rows(),
        }
    }
}

/// Smallest allowed `limits.max_message_bytes`: one incompressible chunk plus framing.
pub const MIN_MESSAGE_BYTES: usize = 5 * 1024 * 1024;
/// Largest allowed `limits.max_message_bytes`.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 256 * 1024 * 1024;

fn default_max_sessions() -> usize {
    2
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
/// The nightly job commits once a day; a failed night's retries commit nothing, so they
/// are not capped by this.
fn default_snapshots_per_day() -> u32 {
    1
}
const GIB: u64 = 1024 * 1024 * 1024;
fn default_max_session_bytes() -> u64 {
    64 * GIB
}
fn default_max_daily_bytes() -> u64 {
    128 * GIB
}
fn default_min_free_bytes() -> u64 {
    2 * GIB
}
fn default_max_message_bytes() -> usize {
    crate::MAX_MESSAGE_BYTES
}
fn default_commit_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 60))
}
fn default_commit_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_session_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_put_streams_per_connection() -> usize {
    4
}
fn default_put_streams_per_identity() -> usize {
    8
}
fn default_audit_log_max_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_audit_log_generations() -> u32 {
    8
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: default_max_sessions(),
            idle_timeout: default_idle_timeout(),
            max_snapshots_per_day: default_snapshots_per_day(),
            max_session_bytes: default_max_session_bytes(),
            max_daily_bytes: default_max_daily_bytes(),
            min_free_bytes: default_min_free_bytes(),
            max_message_bytes: default_max_message_bytes(),
            commit_deadline: default_commit_deadline(),
            commit_idle_timeout: default_commit_idle_timeout(),
            max_session_age: default_max_session_age(),
            max_put_streams_per_connection: default_put_streams_per_connection(),
            max_put_streams_per_identity: default_put_streams_per_identity(),
            audit_log_max_bytes: default_audit_log_max_bytes(),
            audit_log_generations: default_audit_log_generations(),
        }
    }
}

/// `[drill]`: how `backup-receiver drill` proves a snapshot restores. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// A database URL on an existing PostgreSQL server to restore into instead of a
    /// throwaway cluster. Its role needs CREATEDB: the drill creates a fresh database on
    /// that server for each run and drops it afterwards.
    #[serde(default)]
    pub sandbox_database_url: Option<String>,
    /// Directory of `initdb`, `postgres` and `pg_restore`; default `pg_config --bindir`,
    /// else /usr/lib/postgresql/15/bin.
    #[serde(default)]
    pub pg_bin_dir: Option<PathBuf>,
    /// Queries run on the restored database; each must return exactly one boolean `true`.
    #[serde(default)]
    pub sanity_queries: Vec<SanityQuery>,
    /// healthchecks.io-style URL: `<url>/start` when a drill begins, `<url>` on success,
    /// `<url>/fail` on failure (with the report as the request body).
    #[serde(default)]
    pub healthcheck_url: Option<String>,
    /// Where the throwaway cluster and the restored objects go; default `$TMPDIR`.
    #[serde(default)]
    pub scratch_dir: Option<PathBuf>,
    /// OS account the throwaway PostgreSQL and `pg_restore` run as when the drill runs as
    /// root (default `postgres`). It must not be able to read the repository, this
    /// config or the receiver's key; the drill checks and refuses otherwise.
    #[serde(default)]
    pub sandbox_user: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SanityQuery {
    pub name: String,
    pub sql: String,
}

impl DrillConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(url) = &self.sandbox_database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err((
                    "drill.sandbox_database_url",
                    "must be a postgres:// URL".into(),
                ));
            }
        }
        if let Some(url) = &self.healthcheck_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err((
                    "drill.healthcheck_url",
                    "must be an http:// or https:// URL".into(),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for q in &self.sanity_queries {
            if q.name.trim().is_empty() || q.sql.trim().is_empty() {
                return Err((
                    "drill.sanity_queries",
                    "every query needs a non-empty `name` and `sql`".into(),
                ));
            }
            if !seen.insert(q.name.as_str()) {
                return Err((
                    "drill.sanity_queries",
                    format!("the name {:?} is used twice", q.name),
                ));
            }
        }
        Ok(())
    }
}

impl ReceiverConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: ReceiverConfig = parse(path)?;
        let invalid = |key, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message: message.to_string(),
        };
        if cfg.admission.allowed_identities.is_empty() {
            return Err(invalid(
                "admission.allowed_identities",
                "must name at least one client certificate identity",
            ));
        }
        if cfg.admission.allowed_networks.is_empty() {
            return Err(invalid(
                "admission.allowed_networks",
                "must name at least one network, e.g. \"100.64.0.0/10\"",
            ));
        }
        if let Err((key, message)) = cfg.verify.check() {
            return Err(invalid(key, message));
        }
        if cfg.limits.max_sessions == 0 {
            return Err(invalid("limits.max_sessions", "must be at least 1"));
        }
        if cfg.limits.max_snapshots_per_day == 0 {
            return Err(invalid(
                "limits.max_snapshots_per_day",
                "must be at least 1",
            ));
        }
        if cfg.limits.max_session_bytes == 0 {
            return Err(invalid("limits.max_session_bytes", "must be at least 1"));
        }
        if cfg.limits.max_daily_bytes == 0 {
            return Err(invalid("limits.max_daily_bytes", "must be at least 1"));
        }
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES_LIMIT).contains(&cfg.limits.max_message_bytes) {
            return Err(invalid(
                "limits.max_message_bytes",
                &format!(
                    "must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES_LIMIT} (one 4 MiB chunk must fit)"
                ),
            ));
        }
        for (key, value) in [
            ("limits.commit_deadline", cfg.limits.commit_deadline.0),
            (
                "limits.commit_idle_timeout",
                cfg.limits.commit_idle_timeout.0,
            ),
            ("limits.max_session_age", cfg.limits.max_session_age.0),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than 0s"));
            }
        }
        if cfg.limits.max_put_streams_per_connection == 0 {
            return Err(invalid(
                "limits.max_put_streams_per_connection",
                "must be at least 1",
            ));
        }
        if cfg.limits.max_put_streams_per_identity == 0 {
            return Err(invalid(
                "limits.max_put_streams_per_identity",
                "must be at least 1",
            ));
        }
        if cfg.limits.audit_log_max_bytes < 64 * 1024 {
            return Err(invalid(
                "limits.audit_log_max_bytes",
                "must be at least 65536 (64 KiB)",
            ));
        }
        if cfg.limits.audit_log_generations == 0 {
            return Err(invalid(
                "limits.audit_log_generations",
                "must be at least 1",
            ));
        }
        for fp in &cfg.admission.revoked_certificates {
            let hex = fp.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "admission.revoked_certificates",
                    "every entry must be \"sha256:\" and 64 hex digits, as `backup-receiver certs fingerprint FILE` prints",
                ));
            }
        }
        for (key, value) in [
            (
                "guard.max_object_count_drop",
                cfg.guard.max_object_count_drop,
            ),
            (
                "guard.max_object_bytes_drop",
                cfg.guard.max_object_bytes_drop,
            ),
            ("guard.max_dump_shrink", cfg.guard.max_dump_shrink),
            ("guard.max_table_rows_drop", cfg.guard.max_table_rows_drop),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid(
                    key,
                    "must be a fraction between 0.0 and 1.0 (0.1 = a drop of 10 %)",
                ));
            }
        }
        if !(cfg.guard.max_growth.is_finite() && cfg.guard.max_growth > 0.0) {
            return Err(invalid(
                "guard.max_growth",
                "must be a positive fraction (1.0 = suspect when a value more than doubles)",
            ));
        }
        if let Some(ts) = &cfg.admission.tailscale {
            if ts.required_tags.is_empty()
                || ts.required_tags.iter().any(|t| !t.starts_with("tag:"))
            {
                return Err(invalid(
                    "admission.tailscale.required_tags",
                    "must name at least one node tag, each like \"tag:prod-vps\"",
                ));
            }
        }
        if cfg.retention.keep_daily
            + cfg.retention.keep_weekly
            + cfg.retention.keep_monthly
            + cfg.retention.keep_last
            == 0
        {
            return Err(invalid(
                "retention",
                "keeps nothing; set keep_daily or another keep_ rule",
            ));
        }
        if let Err((key, message)) = cfg.drill.validate() {
            return Err(invalid(key, &message));
        }
        let m = &cfg.monitoring;
        if let Some(url) = &m.healthcheck_url {
            check_ping_url(url).map_err(|msg| invalid("monitoring.healthcheck_url", msg))?;
        }
        if m.check_interval.0.is_zero() {
            return Err(invalid(
                "monitoring.check_interval",
                "must be longer than zero",
            ));
        }
        if m.ping_retries == 0 {
            return Err(invalid("monitoring.ping_retries", "must be at least 1"));
        }
        Ok(cfg)
    }
}

fn parse<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads a secret from the file a config key names, without its trailing newline.
pub fn read_secret(key: &'static str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Secret {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(ConfigError::EmptySecret {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    const RECEIVER: &str = r#"
listen = "127.0.0.1:7443"
repo = "/srv/backup"
[tls]
ca_cert = "ca.pem"
server_cert = "r.pem"
server_key = "r.key"
[admission]
allowed_identities = ["prod-vps"]
allowed_networks = ["100.64.0.0/10"]
"#;

    #[test]
    fn receiver_defaults_apply() {
        let f = write(RECEIVER);
        let c = ReceiverConfig::load(f.path()).unwrap();
        // The sender's local dumps keep 14 daily and 8 weekly; the receiver adds 6 monthly.
        assert_eq!(
            c.retention.policy(),
            Policy {
                keep_monthly: 6,
                ..Policy::default()
            }
        );
        assert_eq!(c.retention.time_zone, chrono_tz::Europe::Berlin);
        assert_eq!(c.retention.trash_grace.0, Duration::from_secs(7 * 86400));
        assert_eq!(c.limits.max_snapshots_per_day, 1);
        assert!(c.admission.allowed_networks[0]
            .contains(&"100.100.1.1".parse::<std::net::IpAddr>().unwrap()));
    }

    #[test]
    fn errors_name_the_key() {
        let f = write(&RECEIVER.replace(
            "allowed_identities = [\"prod-vps\"]",
            "allowed_identities = []",
        ));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("admission.allowed_identities"), "{e}");
        let f = write(&RECEIVER.replace("repo =", "repository ="));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("repository"), "{e}");
        let f = write(&format!(
            "{RECEIVER}[retention]\ntime_zone = \"Europe/Nowhere\"\n"
        ));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("time_zone"), "{e}");
        let f = write(&RECEIVER.replace("100.64.0.0/10", "100.64.0.0/99"));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("allowed_networks"), "{e}");
        let f = write(&format!("{RECEIVER}[guard]\nmax_dump_shrink = 1.5\n"));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("guard.max_dump_shrink"), "{e}");
        let f = write(&format!("{RECEIVER}[limits]\nmax_message_bytes = 1000\n"));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("limits.max_message_bytes"), "{e}");
        let f = write(&format!("{RECEIVER}[limits]\nmax_daily_bytes = 0\n"));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("limits.max_daily_bytes"), "{e}");
        let f = write(&format!(
            "{RECEIVER}[admission.tailscale]\nrequired_tags = [\"prod-vps\"]\n"
        ));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("admission.tailscale.required_tags"), "{e}");
    }

    #[test]
    fn limits_guard_and_tailscale_parse() {
        let f = write(&format!(
            "{RECEIVER}[admission.tailscale]\nrequired_tags = [\"tag:prod-vps\"]\n\
             [limits]\nmax_session_bytes = 1000\nmin_free_bytes = 5\n[guard]\nmax_object_count_drop = 0.2\n"
        ));
        let c = ReceiverConfig::load(f.path()).unwrap();
        let ts = c.admission.tailscale.unwrap();
        assert_eq!(
            ts.socket,
            PathBuf::from("/var/run/tailscale/tailscaled.sock")
        );
        assert_eq!(ts.required_tags, vec!["tag:prod-vps".to_string()]);
        assert_eq!(c.limits.max_session_bytes, 1000);
        assert_eq!(c.limits.min_free_bytes, 5);
        assert_eq!(c.limits.max_message_bytes, crate::MAX_MESSAGE_BYTES);
        assert_eq!(c.guard.max_object_count_drop, 0.2);
        assert_eq!(c.guard.max_dump_shrink, 0.5);
    }

    #[test]
    fn issue_12_limits_and_revocations_are_checked() {
        let c = ReceiverConfig::load(write(RECEIVER).path()).unwrap();
        assert_eq!(c.limits.commit_deadline.0, Duration::from_secs(1800));
        assert_eq!(c.limits.commit_idle_timeout.0, Duration::from_secs(60));
        assert_eq!(c.limits.max_session_age.0, Duration::from_secs(86400));
        assert_eq!(
            (
                c.limits.max_put_streams_per_connection,
                c.limits.max_put_streams_per_identity
            ),
            (4, 8)
        );
        assert!(c.admission.revoked_certificates.is_empty());
        let fp = format!("sha256:{}", "ab".repeat(32));
        let f = write(&format!("{RECEIVER}revoked_certificates = [\"{fp}\"]\n"));
        assert_eq!(
            ReceiverConfig::load(f.path())
                .unwrap()
                .admission
                .revoked_certificates,
            [fp]
        );
        for (extra, key) in [
            (
                "revoked_certificates = [\"sha1:00\"]\n",
                "admission.revoked_certificates",
            ),
            (
                "[limits]\ncommit_idle_timeout = \"0s\"\n",
                "limits.commit_idle_timeout",
            ),
            (
                "[limits]\nmax_put_streams_per_identity = 0\n",
                "limits.max_put_streams_per_identity",
            ),
            (
                "[limits]\naudit_log_max_bytes = 10\n",
                "limits.audit_log_max_bytes",
            ),
        ] {
            let f = write(&format!("{RECEIVER}{extra}"));
            let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn drill_section_is_optional_and_checked() {
        let f = write(RECEIVER);
        let c = ReceiverConfig::load(f.path()).unwrap();
        assert!(c.drill.sanity_queries.is_empty() && c.drill.healthcheck_url.is_none());
        let f = write(&format!(
            "{RECEIVER}[drill]\nsanity_queries = [{{ name = \"docs\", sql = \"SELECT true\" }}]\n"
        ));
        let c = ReceiverConfig::load(f.path()).unwrap();
        assert_eq!(c.drill.sanity_queries[0].name, "docs");
        let f = write(&format!(
            "{RECEIVER}[drill]\nhealthcheck_url = \"ftp://example\"\n"
        ));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("drill.healthcheck_url"), "{e}");
    }

    #[test]
    fn secrets_are_trimmed_and_empty_ones_refused() {
        let f = write("s3cret\n");
        assert_eq!(
            read_secret("objects.secret_key_file", f.path()).unwrap(),
            "s3cret"
        );
        let f = write("\n");
        let e = read_secret("objects.secret_key_file", f.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("objects.secret_key_file"), "{e}");
    }
}
