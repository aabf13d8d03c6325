//! `serve`'s composition root: opens (or creates) the repository with both capabilities,
//! gives the gRPC service the append capability alone and keeps the maintain capability for
//! the NAS's own schedules (retention, verification). Outside `service/` on purpose: nothing
//! in `service/` can name the maintain capability (a unit test reads its sources to hold
//! that). The service runs over TLS with required client certificates from the pinned CA
//! (handshakes in `tls_accept`, so refused ones reach the audit log).

use std::future::Future;
use std::sync::Arc;

use crate::config::ReceiverConfig;
use anyhow::Context;
use backup_common::bounded::{bounded, bounded_join};
use backup_common::proto::backup_server::BackupServer;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::clock::Clock;
use crate::monitoring::events::Refused;
use crate::service::admission::tls_accept::{self, TlsMaterial};
use crate::service::BackupService;
use crate::store::{leases, open};

/// HTTP/2 flow control: hyper's defaults (1 MiB per stream and per connection) let a
/// sender's batches in flight share one 1 MiB window, so uploads stalled on window updates.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
const MAX_FRAME: u32 = 256 * 1024;

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve_on(
    config: ReceiverConfig,
    listener: TcpListener,
    clock: Clock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The one command that creates a repository where there is none.
    let maintainer = open::create_or_open(&config.repo)
        .with_context(|| format!("repo: cannot open or create {}", config.repo.display()))?;
    // The network service gets the append capability only; maintenance keeps the rest.
    let repo = maintainer.repository();
    repo.barrier()
        .with_context(|| format!("repo: syncing the chunks of {}", repo.describe()))?;
    let stale = leases::close_all(&repo)
        .with_context(|| format!("repo: closing stale session leases in {}", repo.describe()))?;
    if stale > 0 {
        tracing::info!(stale, "closed the session leases of a previous process");
    }
    let tls = TlsMaterial::load(&config)?;
    let service = Arc::new(BackupService::new(
        repo.clone(),
        config.clone(),
        clock.clone(),
    ));
    let events = service.events();
    let max_message = config.limits.max_message_bytes;
    let monitor = service.monitor();
    let metrics = monitor.bind_metrics().await?;
    let metrics_addr = metrics.as_ref().map(TcpListener::local_addr).transpose()?;
    if let Some(m) = &metrics {
        tracing::info!(listen = %m.local_addr()?, "metrics endpoint listening");
    }
    // Owned here: the monitor's checks, pings and scrapes stop when the server does.
    let background = tokio::spawn(monitor.run(metrics));
    let _verify = crate::maintenance::verify_schedule::spawn(
        maintainer.clone(),
        config.verify.clone(),
        clock.clone(),
        service.monitor(),
        service.audit(),
    );
    let sessions = service.clone();
    let _maintenance = crate::maintenance::schedule::spawn(
        maintainer,
        config.retention.clone(),
        clock,
        Arc::new(move || sessions.oldest_session_start()),
    );
    let svc = BackupServer::from_arc(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, repo = %config.repo.display(), "receiver listening");
    crate::testhook::report_listen_addrs(bound, metrics_addr)
        .context("reporting the listen addresses")?;
    let incoming = tls_accept::incoming(listener, tls, move |refusal| {
        // Everything here came from an unauthenticated peer: bounded, and recorded at most
        // once a minute per peer address and kind of refusal.
        events.refused(Refused {
            call: "TLS handshake",
            peer: Some(refusal.peer),
            reason: refusal.reason,
            identity: bounded_join(&refusal.identities, 4),
            detail: bounded(&refusal.error),
            extra: serde_json::json!({}),
        });
    });
    let served = Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server");
    background.abort();
    served
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

#[cfg(test)]
mod tests {
    /// The network service holds the append capability only: no file under `service/`
    /// names the maintain capability, so a handler cannot be given it by accident.
    #[test]
    fn nothing_under_service_names_the_maintain_capability() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/service");
        let mut stack = vec![root];
        let mut read = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Unit tests may open a repository on disk; the service's code may not.
                let code = text.split("#[cfg(test)]").next().unwrap();
                if path.file_name().is_some_and(|n| n == "tests.rs") {
                    continue;
                }
                read += 1;
                for word in ["Maintainer", "MaintainStore", "store::open", "store::fs"] {
                    assert!(!code.contains(word), "{} names {word}", path.display());
                }
            }
        }
        assert!(read > 10, "read the service's sources ({read} files)");
    }
}
