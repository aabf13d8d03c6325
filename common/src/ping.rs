//! Dead-man's-switch pings in the healthchecks.io protocol (`<url>`, `<url>/start`,
//! `<url>/fail`), shared by the sender and the receiver. This is the only network call in
//! `common`: one bounded HTTP POST per attempt, retried a few times. A ping never returns
//! an error to its caller: monitoring that fails must not fail (or stall) a backup; it is
//! logged instead, and the missing ping is itself what the checking service alerts on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest body sent with a ping; healthchecks.io keeps the first 100 kB.
pub const MAX_BODY: usize = 64 * 1024;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// Which of the protocol's endpoints a ping goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Start,
    Success,
    Fail,
}

impl Signal {
    fn suffix(self) -> &'static str {
        match self {
            Signal::Start => "/start",
            Signal::Success => "",
            Signal::Fail => "/fail",
        }
    }
}

/// A check URL with its timeout and retry policy.
#[derive(Clone)]
pub struct Pinger {
    url: String,
    timeout: Duration,
    attempts: u32,
    client: Client<Https, Full<Bytes>>,
}

impl std::fmt::Debug for Pinger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinger")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl Pinger {
    /// `url` was validated with the config (http or https, no query). Trusts the system's
    /// root certificates for https.
    pub fn new(url: &str, timeout: Duration, attempts: u32) -> std::io::Result<Pinger> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                // Plain http:// checks still work; https ones fail loudly on every ping.
                tracing::warn!(error = %e, "no system root certificates; https pings will fail");
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(std::io::Error::other)?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(https);
        Ok(Pinger {
            url: url.trim_end_matches('/').to_string(),
            timeout,
            attempts: attempts.max(1),
            client,
        })
    }

    /// Sends one signal; returns whether it was delivered. Takes at most about
    /// `attempts × (timeout + 1 s)`.
    pub async fn send(&self, signal: Signal, body: &str) -> bool {
        let url = format!("{}{}", self.url, signal.suffix());
        let body = truncate(body, MAX_BODY);
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=self.attempts {
            match tokio::time::timeout(self.timeout, self.post(&url, body)).await {
                Ok(Ok(())) => {
                    tracing::debug!(url = %url, "healthcheck ping delivered");
                    return true;
                }
                Ok(Err(e)) => {
                    tracing::warn!(url = %url, attempt, error = %e, "healthcheck ping failed")
                }
                Err(_) => {
                    tracing::warn!(url = %url, attempt, timeout = ?self.timeout, "healthcheck ping timed out")
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
        }
        tracing::error!(url = %url, attempts = self.attempts, "giving up on a healthcheck ping");
        false
    }

    async fn post(&self, url: &str, body: &str) -> Result<(), String> {
        let req = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(hyper::header::USER_AGENT, "familienarchiv-backup")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .map_err(|e| format!("bad request: {e}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| crate::error_chain(&e))?;
        let status = resp.status();
        // Drain the (tiny) reply so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, keeping the end (the end of a
/// log is what explains a failure).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_end_on_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("abcdef", 3), "def");
        assert_eq!(truncate("aäb", 2), "b");
    }
}
