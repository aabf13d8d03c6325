//! Admission glue of the handlers: every call first admits its peer (network and
//! certificate rules, then Tailscale), and every refused or rejected request is recorded.

use std::future::Future;

use backup_common::bounded::{bounded, bounded_join};
use serde_json::json;
use tonic::{Request, Status};

use super::status::ServiceError;
use super::BackupService;
use crate::monitoring::events::Refused;
use crate::service::admission::tailscale::Verdict;
use crate::service::admission::{admit, Peer};

impl BackupService {
    /// Admits the peer of `request`: network and certificate rules, then (when configured)
    /// the Tailscale identity check. The future does not hold on to the request.
    pub(super) fn admit<T>(
        &self,
        request: &Request<T>,
        call: &'static str,
    ) -> impl Future<Output = Result<Peer, Status>> + Send + '_ {
        let admitted = self.admit_tls(request, call);
        if let Ok(peer) = &admitted {
            if let Some(not_after) = peer.cert_not_after {
                self.monitor.certificate_admitted(
                    &peer.cert_fingerprint,
                    &peer.identity,
                    not_after,
                );
            }
        }
        async move {
            let peer = admitted?;
            self.admit_tailscale(peer, call).await
        }
    }

    pub(super) async fn admit_tailscale(
        &self,
        peer: Peer,
        call: &'static str,
    ) -> Result<Peer, Status> {
        let (Some(ts), Some(addr)) = (&self.tailscale, peer.addr) else {
            return Ok(peer);
        };
        let (status, node): (Status, _) = match ts.check(addr).await {
            Verdict::Allowed(_) => return Ok(peer),
            Verdict::MissingTag(node) => (
                ServiceError::Policy(format!(
                    "tailscale node {:?} has tags {:?}, none of admission.tailscale.required_tags {:?}",
                    node.name,
                    node.tags,
                    ts.required_tags()
                ))
                .into(),
                Some(node),
            ),
            Verdict::UnknownPeer => (
                ServiceError::Policy(format!(
                    "tailscaled does not know peer {addr}; only tailnet nodes are admitted"
                ))
                .into(),
                None,
            ),
            Verdict::Failed(e) => {
                tracing::error!(error = %e, "tailscale whois failed; refusing the peer");
                (
                    ServiceError::Unavailable(format!(
                        "the receiver cannot verify the peer's tailscale identity: {e}"
                    ))
                    .into(),
                    None,
                )
            }
        };
        self.events.refused(Refused {
            call,
            peer: Some(addr),
            reason: "tailscale",
            identity: peer.identity.clone(),
            detail: bounded(status.message()),
            extra: json!({
                "tailscale_node": node.as_ref().map(|n| bounded(&n.name)),
                "tailscale_tags": node.as_ref().map(|n| n.tags.iter().take(8).map(|t| bounded(t)).collect::<Vec<_>>()),
                "tailscale_login": node.as_ref().map(|n| bounded(&n.login)),
            }),
        });
        Err(status)
    }

    pub(super) fn admit_tls<T>(&self, request: &Request<T>, call: &str) -> Result<Peer, Status> {
        admit(&self.config.admission, request).map_err(|(refusal, addr)| {
            let status = refusal.status();
            self.events.refused(Refused {
                call,
                peer: addr,
                reason: refusal.reason(),
                identity: match &refusal {
                    crate::service::admission::Refusal::Identity(ids) => bounded_join(ids, 4),
                    _ => String::new(),
                },
                detail: status.message().to_string(),
                extra: json!({}),
            });
            status
        })
    }

    /// Records a request of an admitted peer answered with `status`, and returns it.
    pub(super) fn reject(&self, peer: &Peer, call: &str, status: Status) -> Status {
        // Messages name peer strings only bounded; this caps whatever else slipped in.
        let status = if status.message().len() > 2048 {
            Status::with_details(
                status.code(),
                bounded(status.message()),
                status.details().to_vec().into(),
            )
        } else {
            status
        };
        self.events
            .rejected(call, &peer.identity, peer.addr, &status);
        status
    }
}
