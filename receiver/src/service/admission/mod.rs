//! Who may talk to the receiver: a client certificate signed by the pinned CA (enforced by
//! the TLS layer), whose identity is on the allow-list, connecting from an allowed network.
//! Every refusal is logged and written to the audit log with the peer's address and identity.

pub mod quota;
pub mod streams;
pub mod tailscale;
pub mod tls_accept;

use std::net::{IpAddr, SocketAddr};

use crate::config::Admission;
use backup_common::tls::cert_identities;
use tonic::{Request, Status};

/// The admitted peer of one request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    pub identity: String,
    /// The admitted client certificate: `certs fingerprint` form, and its notAfter (Unix
    /// seconds) when it could be read.
    pub cert_fingerprint: String,
    pub cert_not_after: Option<i64>,
}

/// Why a peer was refused, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Network(IpAddr),
    NoAddress,
    NoCertificate,
    Identity(Vec<String>),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Network(_) | Refusal::NoAddress => "network",
            Refusal::NoCertificate => "no-certificate",
            Refusal::Identity(_) => "identity",
        }
    }

    /// What the peer is told (and the audit log records).
    pub fn message(&self) -> String {
        match self {
            Refusal::Network(ip) => {
                format!("source address {ip} is not in admission.allowed_networks")
            }
            Refusal::NoAddress => "peer address unknown".into(),
            Refusal::NoCertificate => "a client certificate is required".into(),
            Refusal::Identity(ids) => format!(
                "client certificate identity [{}] is not in admission.allowed_identities",
                backup_common::bounded::bounded_join(ids, 4)
            ),
        }
    }

    /// The status the peer gets (mapped in `service::status`).
    pub fn status(&self) -> Status {
        crate::service::status::ServiceError::Admission(self.clone()).into()
    }
}

/// IPv4 peers reach a dual-stack listener as ::ffff:a.b.c.d.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Whether `ip` is in one of `networks` (`admission.allowed_networks`).
pub fn network_allowed(networks: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = unmapped(ip);
    networks.iter().any(|net| net.contains(&ip))
}

/// Checks a request against the admission rules.
pub fn admit<T>(
    rules: &Admission,
    request: &Request<T>,
) -> Result<Peer, (Refusal, Option<SocketAddr>)> {
    let addr = request.remote_addr();
    let ip = match addr {
        Some(a) => a.ip(),
        None => return Err((Refusal::NoAddress, None)),
    };
    if !network_allowed(&rules.allowed_networks, ip) {
        return Err((Refusal::Network(unmapped(ip)), addr));
    }
    let certs = request.peer_certs().ok_or((Refusal::NoCertificate, addr))?;
    let leaf = certs.first().ok_or((Refusal::NoCertificate, addr))?;
    let ids = cert_identities(leaf.as_ref()).map_err(|_| (Refusal::Identity(vec![]), addr))?;
    match ids.iter().find(|id| rules.allowed_identities.contains(id)) {
        Some(id) => Ok(Peer {
            addr,
            identity: id.clone(),
            cert_fingerprint: backup_common::tls::fingerprint(leaf.as_ref()),
            cert_not_after: backup_common::tls::cert_not_after(leaf.as_ref()).ok(),
        }),
        None => Err((Refusal::Identity(ids), addr)),
    }
}
