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
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            retries: default_retries(),
        }
    }
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
/// 8 overlaps download latency well on 2 cores: at 1 GiB night 1 took 10.4 s with 4,
/// 6.8 s with 8, 5.7 s with 16 (sender peak 126 / 152 / 199 MiB; docs/PERFORMANCE.md).
fn default_concurrency() -> usize {
    8
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
    pub retention: Policy,
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
    /// Snapshots accepted per day (receiver's clock).
    #[serde(default = "default_snapshots_per_day")]
    pub max_snapshots_per_day: u32,
}

fn default_max_sessions() -> usize {
    2
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_snapshots_per_day() -> u32 {
    3
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: default_max_sessions(),
            idle_timeout: default_idle_timeout(),
            max_snapshots_per_day: default_snapshots_per_day(),
        }
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
        if cfg.limits.max_sessions == 0 {
            return Err(invalid("limits.max_sessions", "must be at least 1"));
        }
        if cfg.limits.max_snapshots_per_day == 0 {
            return Err(invalid(
                "limits.max_snapshots_per_day",
                "must be at least 1",
            ));
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
        assert_eq!(c.retention, Policy::default());
        assert_eq!(c.limits.max_snapshots_per_day, 3);
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
        let f = write(&RECEIVER.replace("100.64.0.0/10", "100.64.0.0/99"));
        let e = ReceiverConfig::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("allowed_networks"), "{e}");
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
