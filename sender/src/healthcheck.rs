//! The sender's dead-man's switch (healthchecks.io protocol): `<url>/start` when a run
//! begins, `<url>` with a short summary only after the receiver confirmed the commit, and
//! `<url>/fail` with the reason and the tail of the log on any failure. Without a
//! `[healthcheck]` section nothing is sent. A ping can delay a run by at most its
//! `timeout × retries` and never changes its outcome.

use crate::config::{HealthcheckConfig, SenderConfig};
use backup_common::ping::{Pinger, Signal};

use crate::log_tail::LogTail;
use crate::run::{self, RunError, Summary};

/// The configured check, or nothing.
pub struct Healthcheck {
    pinger: Option<Pinger>,
}

impl Healthcheck {
    pub fn from_config(cfg: Option<&HealthcheckConfig>) -> Healthcheck {
        let pinger = cfg.and_then(|hc| {
            Pinger::new(&hc.url, hc.timeout, hc.retries.get())
                .map_err(|e| {
                    // No roots to trust: the run goes on, and the missing pings page someone.
                    tracing::error!(error = %e, "cannot set up healthcheck pings");
                })
                .ok()
        });
        Healthcheck { pinger }
    }

    async fn send(&self, signal: Signal, body: &str) {
        if let Some(p) = &self.pinger {
            p.send(signal, body).await;
        }
    }

    pub async fn start(&self) {
        self.send(Signal::Start, "").await;
    }

    pub async fn success(&self, summary: &Summary) {
        self.send(Signal::Success, &success_body(summary)).await;
    }

    pub async fn fail(&self, err: &RunError, log_tail: &str) {
        self.send(Signal::Fail, &fail_body(err, log_tail)).await;
    }
}

pub fn success_body(summary: &Summary) -> String {
    format!("{summary}\n")
}

/// First line: the reason kind (`config`, `source`, `receiver`, `local`, `timeout`,
/// `suspect`), then the message, then the last log lines.
pub fn fail_body(err: &RunError, log_tail: &str) -> String {
    let mut body = format!(
        "backup failed: {} (exit code {})\n{err}\n",
        err.kind(),
        err.exit_code()
    );
    if !log_tail.is_empty() {
        body.push_str("\n--- last log lines ---\n");
        body.push_str(log_tail);
    }
    body
}

/// One nightly run reported to the healthcheck: start, then pre-flight and the run under
/// the deadline, then success or fail.
pub async fn reported_run(cfg: &SenderConfig, log_tail: &LogTail) -> Result<Summary, RunError> {
    let hc = Healthcheck::from_config(cfg.healthcheck.as_ref());
    hc.start().await;
    // A committed snapshot the receiver flagged suspect is not a success: the sender's
    // check turns red with the receiver's.
    let result = run::run_with_deadline(cfg)
        .await
        .and_then(|summary| match summary.suspect {
            Some(_) => Err(RunError::Suspect(Box::new(summary))),
            None => Ok(summary),
        });
    match &result {
        Ok(summary) => hc.success(summary).await,
        Err(e) => {
            tracing::error!(kind = e.kind(), error = %e, "backup failed");
            hc.fail(e, &log_tail.text()).await
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_body_starts_with_the_reason() {
        let e = RunError::Timeout(std::time::Duration::from_secs(60));
        let body = fail_body(&e, "a\nb\n");
        assert!(
            body.starts_with("backup failed: timeout (exit code 6)\n"),
            "{body}"
        );
        assert!(body.ends_with("--- last log lines ---\na\nb\n"), "{body}");
    }
}
