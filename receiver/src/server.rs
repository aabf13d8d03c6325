//! Starts the gRPC service over TLS with required client certificates from the pinned CA.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use backup_common::config::ReceiverConfig;
use backup_common::proto::backup_server::BackupServer;
use backup_common::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::clock::Clock;
use crate::repository::Repository;
use crate::service::BackupService;

fn tls_config(config: &ReceiverConfig) -> anyhow::Result<ServerTlsConfig> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("tls.{key}: cannot read {}", path.display()))
    };
    let cert = read("server_cert", &config.tls.server_cert)?;
    let key = read("server_key", &config.tls.server_key)?;
    let ca = read("ca_cert", &config.tls.ca_cert)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false))
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve_on(
    config: ReceiverConfig,
    listener: TcpListener,
    clock: Clock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let repo = Repository::open_or_init(&config.repo)
        .with_context(|| format!("repo: cannot open or create {}", config.repo.display()))?;
    repo.sync_all_chunk_dirs()
        .with_context(|| format!("repo: syncing {}", repo.chunks_dir().display()))?;
    let tls = tls_config(&config)?;
    let service = Arc::new(BackupService::new(repo, config.clone(), clock));
    let svc = BackupServer::from_arc(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(listen = %listener.local_addr()?, repo = %config.repo.display(), "receiver listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .tls_config(tls)
        .context("TLS configuration")?
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server")
}

/// Binds the configured address and serves until `shutdown` resolves.
pub async fn serve(
    config: ReceiverConfig,
    clock: Clock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    serve_on(config, listener, clock, shutdown).await
}
