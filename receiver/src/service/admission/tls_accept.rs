//! TLS for the gRPC service, done here rather than inside tonic so that a handshake the
//! receiver refuses (a client certificate from a foreign CA, an expired one, none at all)
//! is logged and written to the audit log with the peer's address and the identity the
//! certificate claimed, like every other refusal. The pinned CA is the only trust root.
//!
//! A connection from outside `admission.allowed_networks` is closed before any TLS byte
//! is read: it costs no handshake, only a (rate-limited) refusal record. A client
//! certificate listed in `admission.revoked_certificates` is refused in the handshake
//! although the CA signed it.
//!
//! Each TCP connection's handshake runs in its own task, bounded by a deadline; the accept
//! loop ends when the server stops listening to it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::ReceiverConfig;
use anyhow::Context;
use backup_common::tls::{cert_identities, fingerprint};
use ipnet::IpNet;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// A refused connection: from outside the allowed networks (no handshake was made), or
/// a refused TLS handshake.
#[derive(Debug, Clone)]
pub struct TlsRefusal {
    pub peer: SocketAddr,
    /// "network", "revoked" or "tls".
    pub reason: &'static str,
    /// Identities (CN, DNS SANs) of the client certificate presented, if any. Unverified
    /// and unbounded: bound them before they are logged.
    pub identities: Vec<String>,
    pub error: String,
}

/// The parsed TLS material: server certificate and key, and the verifier of client
/// certificates against the pinned CA.
pub struct TlsMaterial {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// `admission.revoked_certificates`, lower-case.
    revoked: Arc<HashSet<String>>,
    allowed_networks: Vec<IpNet>,
}

impl TlsMaterial {
    pub fn load(config: &ReceiverConfig) -> anyhow::Result<TlsMaterial> {
        let certs = CertificateDer::pem_file_iter(&config.tls.server_cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .with_context(|| {
                format!(
                    "tls.server_cert: cannot read {}",
                    config.tls.server_cert.display()
                )
            })?;
        let key = PrivateKeyDer::from_pem_file(&config.tls.server_key).with_context(|| {
            format!(
                "tls.server_key: cannot read {}",
                config.tls.server_key.display()
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&config.tls.ca_cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .with_context(|| {
                format!("tls.ca_cert: cannot read {}", config.tls.ca_cert.display())
            })?;
        for ca in cas {
            roots
                .add(ca)
                .with_context(|| format!("tls.ca_cert: {}", config.tls.ca_cert.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("tls.ca_cert: cannot build the client certificate verifier")?;
        let material = TlsMaterial {
            certs,
            key,
            verifier,
            provider,
            revoked: Arc::new(
                config
                    .admission
                    .revoked_certificates
                    .iter()
                    .map(|f| f.to_ascii_lowercase())
                    .collect(),
            ),
            allowed_networks: config.admission.allowed_networks.clone(),
        };
        material.server_config(Arc::new(Mutex::new(Vec::new())), Arc::default())?;
        Ok(material)
    }

    /// A server config for one connection, recording the presented identities in `seen`.
    fn server_config(
        &self,
        seen: Arc<Mutex<Vec<String>>>,
        revoked_seen: Arc<AtomicBool>,
    ) -> anyhow::Result<rustls::ServerConfig> {
        let verifier = Arc::new(Recording {
            inner: self.verifier.clone(),
            seen,
            revoked: self.revoked.clone(),
            revoked_seen,
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .context("tls.server_cert / tls.server_key do not match")?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// Accepts connections on `listener` and yields those whose TLS handshake succeeded.
/// Refused handshakes that got as far as a certificate check go to `on_refused`.
pub fn incoming(
    listener: TcpListener,
    material: TlsMaterial,
    on_refused: impl Fn(TlsRefusal) + Send + Sync + 'static,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let material = Arc::new(material);
    let on_refused = Arc::new(on_refused);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            if !crate::service::admission::network_allowed(&material.allowed_networks, peer.ip()) {
                drop(tcp);
                on_refused(TlsRefusal {
                    peer,
                    reason: "network",
                    identities: Vec::new(),
                    error: format!(
                        "source address {} is not in admission.allowed_networks; closed before the TLS handshake",
                        peer.ip()
                    ),
                });
                continue;
            }
            // gRPC replies are small writes (headers, message, trailers): without
            // TCP_NODELAY, Nagle holds them until the peer's delayed ACK, ~40 ms per call.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(peer = %peer, error = %e, "cannot set TCP_NODELAY");
            }
            let (tx, material, on_refused) = (tx.clone(), material.clone(), on_refused.clone());
            tokio::spawn(async move {
                let seen = Arc::new(Mutex::new(Vec::new()));
                let revoked = Arc::new(AtomicBool::new(false));
                let cfg = match material.server_config(seen.clone(), revoked.clone()) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "TLS configuration");
                        return;
                    }
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
                match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        let is_tls_error = e
                            .get_ref()
                            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
                        if is_tls_error {
                            on_refused(TlsRefusal {
                                peer,
                                reason: if revoked.load(Ordering::Relaxed) {
                                    "revoked"
                                } else {
                                    "tls"
                                },
                                identities: std::mem::take(&mut *seen.lock().unwrap()),
                                error: e.to_string(),
                            });
                        } else {
                            // A probe or a dropped connection: nothing was presented.
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake not completed");
                        }
                    }
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Refuses revoked certificates, delegates to the pinned-CA verifier, and remembers who
/// the certificate claimed to be.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ClientCertVerifier>,
    seen: Arc<Mutex<Vec<String>>>,
    revoked: Arc<HashSet<String>>,
    revoked_seen: Arc<AtomicBool>,
}

impl ClientCertVerifier for Recording {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = cert_identities(end_entity.as_ref()).unwrap_or_default();
        if !self.revoked.is_empty() && self.revoked.contains(&fingerprint(end_entity.as_ref())) {
            self.revoked_seen.store(true, Ordering::Relaxed);
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
