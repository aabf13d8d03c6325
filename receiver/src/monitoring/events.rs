//! One call per event the receiver records about a peer: the log line (tracing), the audit
//! record and the metric (`backup_receiver_rejected_requests_total`) are written together
//! here, so the three cannot drift apart. It never fails a request: the audit log and the
//! monitor swallow their own errors.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{json, Value};
use tonic::Status;

use crate::clock::Clock;
use crate::monitoring::audit::AuditLog;
use crate::monitoring::monitor::{self, Monitor};

/// A peer refused before its request was looked at: by the TLS handshake, the network and
/// certificate rules, or the Tailscale identity check. Everything in it is bounded by the
/// caller (it may come from an unauthenticated peer).
pub struct Refused<'a> {
    /// The gRPC call, or "TLS handshake".
    pub call: &'a str,
    pub peer: Option<SocketAddr>,
    /// The metric's and the audit record's reason label: "tls", "network", "identity",
    /// "revoked", "tailscale", ….
    pub reason: &'static str,
    /// The identities the peer's certificate names (bounded), or "".
    pub identity: String,
    /// What the receiver says about the refusal (bounded).
    pub detail: String,
    /// Further audit fields, merged into the record.
    pub extra: Value,
}

/// Where the receiver's peer events go.
pub struct Events {
    audit: Arc<AuditLog>,
    monitor: Arc<Monitor>,
    clock: Clock,
}

impl Events {
    pub fn new(audit: Arc<AuditLog>, monitor: Arc<Monitor>, clock: Clock) -> Self {
        Events {
            audit,
            monitor,
            clock,
        }
    }

    /// Records a refusal: always counted in the metric; audited and logged at most once a
    /// minute per peer address and kind (see [`AuditLog::refused`]).
    pub fn refused(&self, r: Refused<'_>) {
        self.monitor.rejected(r.reason);
        let peer = r.peer.map(|a| a.to_string()).unwrap_or_default();
        let mut fields = json!({
            "call": r.call,
            "peer": peer,
            "reason": r.reason,
            "identity": r.identity,
            "detail": r.detail,
        });
        if let (Value::Object(obj), Value::Object(extra)) = (&mut fields, r.extra) {
            obj.extend(extra);
        }
        let kind = format!("{} {}", r.call, r.detail);
        let recorded = self.audit.refused(
            (self.clock)(),
            r.peer.map(|a| a.ip()),
            r.reason,
            &kind,
            fields,
        );
        if recorded {
            tracing::warn!(call = r.call, peer = %peer, reason = r.reason, identity = %r.identity, detail = %r.detail, "refused peer");
        }
    }

    /// Records a request of an admitted peer that was answered with an error `status`
    /// (its message already bounded): logged, audited and counted under its code.
    pub fn rejected(&self, call: &str, identity: &str, peer: Option<SocketAddr>, status: &Status) {
        tracing::warn!(call, identity = %identity, code = ?status.code(), message = status.message(), "rejected request");
        self.monitor.rejected(&monitor::code_label(status.code()));
        self.audit.record(
            (self.clock)(),
            "rejected",
            json!({
                "call": call,
                "identity": identity,
                "peer": peer.map(|a| a.to_string()),
                "code": format!("{:?}", status.code()),
                "message": status.message(),
            }),
        );
    }
}
