//! The upload session, renewed when the receiver has lost it. Sessions live in the
//! receiver's memory only: after a receiver restart (or an idle timeout) every call with
//! the old id fails with the error contract's reason SESSION_LOST (proto/backup.proto,
//! `ErrorDetail`; [`backup_common::contract`]). Nothing of value
//! is lost with it (chunks are already stored write-once, and the previous snapshot is
//! still there), so the sender begins a new session and repeats the call.

use std::future::Future;

use backup_common::contract::{self, Reason};
use backup_common::proto;
use tonic::Status;

use crate::client::{retry, Client};

/// How many times one run may begin a new session before it gives up.
const MAX_RENEWALS: u32 = 5;

pub struct Session {
    client: Client,
    source_host: String,
    attempts: u32,
    id: std::sync::Mutex<String>,
    /// Serialises renewals so concurrent failures begin one new session, not several.
    renewing: tokio::sync::Mutex<u32>,
}

/// The receiver no longer knows the session (restart or idle timeout): the status says so
/// in its details, whatever its message.
pub fn is_lost_session(status: &Status) -> bool {
    contract::reason(status) == Some(Reason::SessionLost)
}

impl Session {
    /// Begins a session (with retries on transient errors).
    pub async fn begin(client: Client, source_host: String, attempts: u32) -> Result<Self, Status> {
        let id = Self::begin_id(&client, &source_host, attempts).await?;
        Ok(Session {
            client,
            source_host,
            attempts,
            id: std::sync::Mutex::new(id),
            renewing: tokio::sync::Mutex::new(0),
        })
    }

    async fn begin_id(client: &Client, source_host: &str, attempts: u32) -> Result<String, Status> {
        let begin = retry("BeginSession", attempts, || {
            let mut c = client.clone();
            let req = proto::BeginSessionRequest {
                source_host: source_host.to_string(),
                sender_time_unix: chrono::Utc::now().timestamp(),
            };
            async move { c.begin_session(req).await.map(|r| r.into_inner()) }
        })
        .await?;
        tracing::info!(session = %begin.session_id, "session opened");
        Ok(begin.session_id)
    }

    pub fn id(&self) -> String {
        self.id.lock().unwrap().clone()
    }

    /// Replaces `stale` with a new session, unless another task already did.
    async fn renew(&self, stale: &str) -> Result<(), Status> {
        let mut renewals = self.renewing.lock().await;
        if self.id() != stale {
            return Ok(());
        }
        if *renewals >= MAX_RENEWALS {
            return Err(Status::failed_precondition(format!(
                "the receiver lost the upload session {MAX_RENEWALS} times in one run; giving up"
            )));
        }
        *renewals += 1;
        tracing::warn!(session = %stale, "the receiver lost the session; beginning a new one");
        let id = Self::begin_id(&self.client, &self.source_host, self.attempts).await?;
        *self.id.lock().unwrap() = id;
        Ok(())
    }

    /// Runs `call(session id)` with retries on transient errors, beginning a new session
    /// and repeating when the receiver has lost this one.
    pub async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, Status>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        loop {
            let id = self.id();
            match retry(what, self.attempts, || call(id.clone())).await {
                Err(status) if is_lost_session(&status) => self.renew(&id).await?,
                other => return other,
            }
        }
    }
}
