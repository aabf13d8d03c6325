//! The sender's side of the gRPC connection: mutual TLS with the pinned CA, and a retry
//! helper with exponential backoff for the calls that may be repeated safely (all of
//! them: chunk uploads are idempotent, and a commit either happened or did not).

use std::future::Future;
use std::time::Duration;

use crate::config::ReceiverEndpoint;
use anyhow::Context;
use backup_common::proto::backup_client::BackupClient;
use backup_common::MAX_MESSAGE_BYTES;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};

pub type Client = BackupClient<Channel>;

/// Builds a client; the connection is opened lazily and re-opened after a cut.
pub fn connect(endpoint: &ReceiverEndpoint) -> anyhow::Result<Client> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .with_context(|| format!("receiver.{key}: cannot read {}", path.display()))
    };
    let ca = read("ca_cert", &endpoint.ca_cert)?;
    let cert = read("client_cert", &endpoint.client_cert)?;
    let key = read("client_key", &endpoint.client_key)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    if let Some(name) = &endpoint.server_name {
        tls = tls.domain_name(name.clone());
    }
    let channel = Channel::from_shared(endpoint.url.to_string())
        .with_context(|| format!("receiver.url: {:?} is not a valid URL", endpoint.url))?
        .tls_config(tls)
        .context("receiver TLS configuration")?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect_lazy();
    Ok(BackupClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Errors worth another try: the connection, not the request, was the problem.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
    )
}

/// Runs `call` up to `attempts` times, backing off 250 ms, 500 ms, 1 s, … (at most 8 s)
/// between transient failures.
pub async fn retry<T, F, Fut>(what: &str, attempts: u32, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(status) if attempt < attempts && is_transient(&status) => {
                tracing::warn!(what, attempt, code = ?status.code(), message = status.message(), "retrying after a transient error");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
                attempt += 1;
            }
            Err(status) => return Err(status),
        }
    }
}
