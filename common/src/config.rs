//! What both programs' configuration files (TOML) share: the loader, the error that names
//! the file and the dotted key, secrets read from files, and the value types that check
//! themselves while they are deserialised (URLs, non-zero durations). The sender's sections
//! live in `backup_sender::config`, the receiver's in `backup_receiver::config`.
//!
//! Each section is a plain struct with `deny_unknown_fields`; a section whose keys are all
//! optional has one `Default` and `#[serde(default)]`, so a default is written once. A
//! value that cannot be valid does not deserialise, so a loaded config needs no second
//! validation pass (only rules across keys are checked after loading).
//! Secrets (passwords, S3 keys, TLS keys) are read from files named here, never taken
//! from the command line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

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
        key: String,
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

impl ConfigError {
    /// A rule across keys that the types cannot hold, broken at `key`.
    pub fn invalid(path: &Path, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Reads and deserialises a config file. An error inside a value names its dotted key
/// (`limits.max_sessions`, `drill.sanity_queries[0].sql`) and its line.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text).map_err(|(key, message)| match key {
        None => ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        },
        Some(key) => ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        },
    })
}

/// Deserialises TOML text; on error the dotted key (when there is one) and the message.
fn parse_str<T: DeserializeOwned>(text: &str) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let mut message = inner.message().trim_end().to_string();
        if let Some(line) = line {
            message.push_str(&format!(" (line {line})"));
        }
        ((key != ".").then_some(key), message)
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

/// Defines a string type that is checked when it is parsed or deserialised, so a held
/// value is always valid. It reads as a `&str` (`Deref`, `Display`).
#[macro_export]
macro_rules! checked_string {
    ($(#[$meta:meta])* $name:ident, $check:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Debug::fmt(&self.0, f)
            }
        }

        impl $name {
            /// Checks `s`; the error says what it must be.
            pub fn parse(s: &str) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(s).map(|()| $name(s.to_string()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::parse(s)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(::serde::de::Error::custom)
            }
        }
    };
}

fn scheme_is(s: &str, schemes: &[&str]) -> bool {
    schemes.iter().any(|p| {
        s.strip_prefix(p)
            .and_then(|r| r.strip_prefix("://"))
            .is_some()
    })
}

checked_string!(
    /// An `http://` or `https://` URL.
    HttpUrl,
    |s| {
        if scheme_is(s, &["http", "https"]) {
            Ok(())
        } else {
            Err(format!("{s:?} must be an http:// or https:// URL"))
        }
    }
);

checked_string!(
    /// An `https://` URL.
    HttpsUrl,
    |s| {
        if scheme_is(s, &["https"]) {
            Ok(())
        } else {
            Err(format!("{s:?} must be an https:// URL"))
        }
    }
);

checked_string!(
    /// A `postgres://` or `postgresql://` URL.
    PostgresUrl,
    |s| {
        if scheme_is(s, &["postgres", "postgresql"]) {
            Ok(())
        } else {
            Err(format!("{s:?} must be a postgres:// URL"))
        }
    }
);

checked_string!(
    /// A healthchecks.io-style check URL: http(s), no query string or fragment, because
    /// `/start` and `/fail` are appended to it. The sender's `healthcheck.url`, the
    /// receiver's `monitoring.healthcheck_url` and `drill.healthcheck_url`.
    PingUrl,
    |s| {
        if !scheme_is(s, &["http", "https"]) {
            Err(format!("{s:?} must be an http:// or https:// URL"))
        } else if s.contains(['?', '#']) {
            Err(format!(
                "{s:?} must not contain a query or fragment (/start and /fail are appended)"
            ))
        } else {
            Ok(())
        }
    }
);

/// Per-attempt timeout of one ping, unless configured.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per ping, unless configured.
pub const PING_RETRIES: std::num::NonZeroU32 = std::num::NonZeroU32::new(3).unwrap();

/// A duration like `30m`, `26h`, `7d` or `90s` (humantime-serde; `"0s"` allowed). For
/// `#[serde(with = "backup_common::config::duration")]`.
pub mod duration {
    pub use humantime_serde::deserialize;
}

/// A [`duration`] that must be longer than zero. For
/// `#[serde(with = "backup_common::config::non_zero_duration")]`.
pub mod non_zero_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v: Duration = humantime_serde::deserialize(d)?;
        if v.is_zero() {
            return Err(D::Error::custom("must be longer than 0s"));
        }
        Ok(v)
    }
}

/// A list with at least one entry. For `#[serde(deserialize_with = "...")]`.
pub fn non_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let v = Vec::<T>::deserialize(d)?;
    if v.is_empty() {
        return Err(D::Error::custom("must name at least one entry"));
    }
    Ok(v)
}

/// A string that is not empty or blank. For `#[serde(deserialize_with = "...")]`.
pub fn non_blank<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(D::Error::custom("must not be empty"));
    }
    Ok(s)
}

/// An integer within `MIN..=MAX`. For `#[serde(deserialize_with = "in_range::<_, A, B>")]`.
pub fn in_range<'de, D: Deserializer<'de>, const MIN: u64, const MAX: u64>(
    d: D,
) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if !(MIN..=MAX).contains(&v) {
        return Err(D::Error::custom(format!(
            "{v} is not between {MIN} and {MAX}"
        )));
    }
    Ok(v)
}

/// Displays a duration as the config writes it (`1day 2h`).
pub fn human(d: Duration) -> impl fmt::Display {
    humantime::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        section: Section,
    }

    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        #[serde(with = "non_zero_duration")]
        wait: Duration,
        ping: Option<PingUrl>,
    }

    impl Default for Section {
        fn default() -> Self {
            Section {
                wait: Duration::from_secs(60),
                ping: None,
            }
        }
    }

    #[test]
    fn bad_value_names_its_dotted_key_and_line() {
        let (key, msg) = parse_str::<Outer>("[section]\nwait = \"0s\"\n").unwrap_err();
        assert_eq!(key.as_deref(), Some("section.wait"));
        assert!(
            msg.contains("longer than 0s") && msg.contains("line 2"),
            "{msg}"
        );
        let (key, msg) = parse_str::<Outer>("[section]\nping = \"https://x/?a=1\"\n").unwrap_err();
        assert_eq!(key.as_deref(), Some("section.ping"));
        assert!(msg.contains("query"), "{msg}");
        let c = parse_str::<Outer>("").unwrap();
        assert_eq!(c.section.wait, Duration::from_secs(60));
    }

    #[test]
    fn unknown_key_is_refused_naming_it() {
        let (key, msg) = parse_str::<Outer>("[section]\nwiat = \"1s\"\n").unwrap_err();
        assert!(msg.contains("unknown field `wiat`"), "{key:?} {msg}");
        assert_eq!(key.as_deref(), Some("section.wiat"), "{msg}");
    }

    #[test]
    fn url_types_check_their_scheme() {
        assert!(PingUrl::parse("ftp://example").is_err());
        assert!(HttpsUrl::parse("http://example").is_err());
        assert!(PostgresUrl::parse("postgresql://u@h/db").is_ok());
        assert_eq!(
            &*HttpUrl::parse("http://127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
    }

    #[test]
    fn secrets_are_trimmed_and_empty_ones_refused() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"s3cret\n").unwrap();
        assert_eq!(
            read_secret("objects.secret_key_file", f.path()).unwrap(),
            "s3cret"
        );
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"\n").unwrap();
        let e = read_secret("objects.secret_key_file", f.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("objects.secret_key_file"), "{e}");
    }
}
