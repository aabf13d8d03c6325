//! The sender's configuration file (`sender.toml`, see deploy/sender.toml). Every value is
//! checked by its type while it is deserialised; errors name the file and the dotted key
//! (`backup_common::config::load`). Secrets are read from the files named here.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_common::checked_string;
use backup_common::config::{load, non_empty, ConfigError, PING_RETRIES, PING_TIMEOUT};
use backup_common::retention::Policy;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

pub use backup_common::config::{read_secret, HttpUrl, HttpsUrl, PingUrl, PostgresUrl};

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

impl SenderConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load(path)
    }
}

/// A healthchecks.io-style check: `<url>/start`, `<url>` (success), `<url>/fail`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcheckConfig {
    pub url: PingUrl,
    /// Per-attempt timeout of one ping.
    #[serde(
        default = "ping_timeout",
        with = "backup_common::config::non_zero_duration"
    )]
    pub timeout: Duration,
    /// Attempts per ping; a ping that still fails is logged, never fatal.
    #[serde(default = "ping_retries")]
    pub retries: NonZeroU32,
}

fn ping_timeout() -> Duration {
    PING_TIMEOUT
}
fn ping_retries() -> NonZeroU32 {
    PING_RETRIES
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverEndpoint {
    /// The receiver only speaks TLS.
    pub url: HttpsUrl,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Name to expect in the receiver's certificate, when it differs from the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// `[database]`. `url` and `local_dir` are required; the defaults of the others are
/// written once, in [`DatabaseDefaults`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: PostgresUrl,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Command prefix that runs pg_dump, e.g. `["docker", "compose", "exec", "-T", "db", "pg_dump"]`.
    #[serde(default = "DatabaseDefaults::pg_dump", deserialize_with = "non_empty")]
    pub pg_dump: Vec<String>,
    /// URL pg_dump connects with, when it differs from `url` (e.g. inside the container).
    #[serde(default)]
    pub dump_url: Option<String>,
    pub local_dir: PathBuf,
    /// strftime pattern of the local dump file name.
    #[serde(default = "DatabaseDefaults::dump_name")]
    pub dump_name: DumpName,
    /// Local rotation (the defaults are [`Policy::default`]'s).
    #[serde(default = "DatabaseDefaults::keep_daily")]
    pub keep_daily: NonZeroU32,
    #[serde(default = "DatabaseDefaults::keep_weekly")]
    pub keep_weekly: u32,
}

/// The defaults of `[database]`'s optional keys.
struct DatabaseDefaults;

impl DatabaseDefaults {
    fn pg_dump() -> Vec<String> {
        vec!["pg_dump".into()]
    }
    fn dump_name() -> DumpName {
        DumpName("archiv-%Y%m%d.dump".into())
    }
    fn keep_daily() -> NonZeroU32 {
        NonZeroU32::new(Policy::default().keep_daily).expect("the default keeps days")
    }
    fn keep_weekly() -> u32 {
        Policy::default().keep_weekly
    }
}

checked_string!(
    /// A strftime file name pattern with %Y, %m and %d and no `/`.
    DumpName,
    |n| {
        if n.contains("%Y") && n.contains("%m") && n.contains("%d") && !n.contains('/') {
            Ok(())
        } else {
            Err(format!(
                "{n:?} must be a file name containing %Y, %m and %d, like \"archiv-%Y%m%d.dump\""
            ))
        }
    }
);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {
    pub endpoint: HttpUrl,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(deserialize_with = "backup_common::config::non_blank")]
    pub bucket: String,
    pub access_key_file: PathBuf,
    pub secret_key_file: PathBuf,
    /// Objects downloaded and chunked at the same time (1 to 64).
    /// 4 keeps both cores busy: with the S3 reads and the chunker fixed, night 1 at 1 GiB
    /// took 3.76 s with 4, 3.99 s with 8 (sender peak 165 / 198 MiB; docs/PERFORMANCE.md,
    /// section 8).
    #[serde(default = "default_concurrency", deserialize_with = "concurrency")]
    pub concurrency: NonZeroUsize,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(4).unwrap()
}
fn concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    let n = NonZeroUsize::deserialize(d)?;
    if n.get() > 64 {
        return Err(D::Error::custom("must be between 1 and 64"));
    }
    Ok(n)
}

/// `[run]`: every key optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Attempts per network step before the run fails (with exponential backoff).
    pub retries: NonZeroU32,
    /// Past this the run is abandoned (pg_dump killed, nothing committed), exit code 6.
    #[serde(with = "backup_common::config::non_zero_duration")]
    pub deadline: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            retries: NonZeroU32::new(5).unwrap(),
            deadline: Duration::from_secs(30 * 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENDER: &str = r#"
[receiver]
url = "https://nas:7443"
ca_cert = "ca.pem"
client_cert = "s.pem"
client_key = "s.key"
[database]
url = "postgres://archiv@127.0.0.1/archiv"
local_dir = "/var/backups/archiv"
[objects]
endpoint = "http://127.0.0.1:9000"
bucket = "familienarchiv"
access_key_file = "a"
secret_key_file = "s"
"#;

    fn load_text(text: &str) -> Result<SenderConfig, String> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        SenderConfig::load(f.path()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply_once() {
        let c = load_text(SENDER).unwrap();
        let p = Policy::default();
        assert_eq!(
            (c.database.keep_daily.get(), c.database.keep_weekly),
            (p.keep_daily, p.keep_weekly)
        );
        assert_eq!(c.database.pg_dump, ["pg_dump"]);
        assert_eq!(c.database.dump_name.as_str(), "archiv-%Y%m%d.dump");
        assert_eq!(c.objects.concurrency.get(), 4);
        assert_eq!(c.run.retries.get(), 5);
        assert_eq!(c.run.deadline, Duration::from_secs(1800));
        let c = load_text(&format!(
            "{SENDER}[healthcheck]\nurl = \"https://hc.example/x\"\n"
        ))
        .unwrap();
        let hc = c.healthcheck.unwrap();
        assert_eq!((hc.timeout, hc.retries), (PING_TIMEOUT, PING_RETRIES));
    }

    #[test]
    fn bad_values_name_their_dotted_key() {
        for (edit, key) in [
            (("https://nas", "http://nas"), "receiver.url"),
            (("postgres://", "mysql://"), "database.url"),
            (
                ("bucket = \"familienarchiv\"", "bucket = \"\""),
                "objects.bucket",
            ),
            (
                (
                    "secret_key_file = \"s\"",
                    "secret_key_file = \"s\"\nconcurrency = 65",
                ),
                "objects.concurrency",
            ),
            (
                ("local_dir", "dump_name = \"x.dump\"\nlocal_dir"),
                "database.dump_name",
            ),
            (
                ("local_dir", "keep_daily = 0\nlocal_dir"),
                "database.keep_daily",
            ),
            (("local_dir", "pg_dump = []\nlocal_dir"), "database.pg_dump"),
        ] {
            let e = load_text(&SENDER.replace(edit.0, edit.1)).unwrap_err();
            assert!(e.contains(&format!("key `{key}`")), "{key}: {e}");
        }
        for (extra, key) in [
            ("[run]\nretries = 0\n", "run.retries"),
            ("[run]\ndeadline = \"0s\"\n", "run.deadline"),
            (
                "[healthcheck]\nurl = \"https://hc/x?y\"\n",
                "healthcheck.url",
            ),
            (
                "[healthcheck]\nurl = \"https://hc/x\"\ntimeout = \"soon\"\n",
                "healthcheck.timeout",
            ),
        ] {
            let e = load_text(&format!("{SENDER}{extra}")).unwrap_err();
            assert!(e.contains(&format!("key `{key}`")), "{key}: {e}");
        }
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = load_text(&format!("{SENDER}[run]\nretry = 3\n")).unwrap_err();
        assert!(
            e.contains("key `run.retry`") && e.contains("unknown field"),
            "{e}"
        );
    }
}
