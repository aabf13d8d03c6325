//! The one mapping of the service's errors to gRPC statuses: code, message, and (where
//! the sender must act on it) the error contract's reason (`ErrorDetail` in
//! proto/backup.proto, [`backup_common::contract`]). Handlers build a [`ServiceError`] and
//! convert it here; nothing else in the service chooses a status code for a domain error.

use backup_common::bounded::quoted;
use backup_common::contract::{self, Reason};
use tonic::{Code, Status};

use crate::service::admission::quota::QuotaError;
use crate::service::admission::Refusal as Admission;
use crate::service::validate::Refusal;
use crate::store::error::StoreErrorKind;
use crate::store::repository::RepoError;

/// Why the service answered a request with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The session is not (or no longer) known: the sender begins a new one.
    #[error("unknown or expired session {}; begin a new session", quoted(.0))]
    SessionLost(String),
    /// The request is malformed or breaks a rule of the protocol.
    #[error("{0}")]
    Invalid(String),
    /// A limit of the receiver was reached; the message names it.
    #[error("{0}")]
    Limit(String),
    /// Admission refused the peer.
    #[error("{}", .0.message())]
    Admission(Admission),
    /// A policy beyond the admission rules refused the peer (the Tailscale identity check).
    #[error("{0}")]
    Policy(String),
    /// The request conflicts with one in progress.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Commit(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] RepoError),
    #[error(transparent)]
    Quota(#[from] QuotaError),
    #[error("receiver task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let message = e.to_string();
        match e {
            ServiceError::SessionLost(_) => {
                contract::status(Code::FailedPrecondition, message, Reason::SessionLost)
            }
            ServiceError::Invalid(_) | ServiceError::Commit(Refusal::Invalid(_)) => {
                Status::invalid_argument(message)
            }
            ServiceError::Limit(_)
            | ServiceError::Commit(Refusal::TooLarge(_))
            | ServiceError::Quota(
                QuotaError::Session { .. } | QuotaError::Daily { .. } | QuotaError::Reserve { .. },
            ) => contract::status(Code::ResourceExhausted, message, Reason::LimitExceeded),
            ServiceError::Quota(QuotaError::Statvfs { .. }) => Status::internal(message),
            ServiceError::Admission(a) => {
                let code = match a {
                    Admission::NoCertificate => Code::Unauthenticated,
                    _ => Code::PermissionDenied,
                };
                contract::status(code, message, Reason::RefusedByPolicy)
            }
            ServiceError::Policy(_) => {
                contract::status(Code::PermissionDenied, message, Reason::RefusedByPolicy)
            }
            ServiceError::Conflict(_) => Status::already_exists(message),
            ServiceError::Unavailable(_) => Status::unavailable(message),
            ServiceError::Commit(Refusal::MissingChunks(_))
            | ServiceError::Store(RepoError::MissingChunk { .. }) => {
                contract::status(Code::FailedPrecondition, message, Reason::MissingChunks)
            }
            ServiceError::Commit(Refusal::Store(e)) | ServiceError::Store(e) => store(e),
            ServiceError::Task(_) => Status::internal(message),
        }
    }
}

fn store(e: RepoError) -> Status {
    match e {
        RepoError::MissingChunk { .. } => contract::status(
            Code::FailedPrecondition,
            e.to_string(),
            Reason::MissingChunks,
        ),
        RepoError::NoSuchSnapshot(_) | RepoError::Empty => Status::not_found(e.to_string()),
        RepoError::Store(ref s) if s.kind() == StoreErrorKind::NoSpace => {
            tracing::error!(error = %e, "repository storage is full");
            contract::status(
                Code::ResourceExhausted,
                format!("receiver storage is full: {e}"),
                Reason::LimitExceeded,
            )
        }
        // The store did not answer: the sender retries later, as after a cut connection.
        RepoError::Store(ref s) if s.kind() == StoreErrorKind::Unavailable => {
            tracing::error!(error = %e, "repository storage unavailable");
            Status::unavailable(format!("receiver storage unavailable: {e}"))
        }
        _ => {
            tracing::error!(error = %e, "repository error");
            Status::internal(format!("receiver storage error: {e}"))
        }
    }
}

pub(super) fn repo_status(e: impl Into<RepoError>) -> Status {
    ServiceError::Store(e.into()).into()
}

pub(super) fn refusal_status(r: Refusal) -> Status {
    ServiceError::Commit(r).into()
}

pub(super) fn join_status(e: tokio::task::JoinError) -> Status {
    ServiceError::Task(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_sender_must_tell_apart_carries_its_reason() {
        let reason = |e: ServiceError| contract::reason(&Status::from(e));
        assert_eq!(
            reason(ServiceError::SessionLost("x".into())),
            Some(Reason::SessionLost)
        );
        assert_eq!(
            reason(ServiceError::Commit(Refusal::MissingChunks(vec![]))),
            Some(Reason::MissingChunks)
        );
        assert_eq!(
            reason(ServiceError::Limit("limits.max_sessions".into())),
            Some(Reason::LimitExceeded)
        );
        assert_eq!(
            reason(ServiceError::Admission(Admission::NoCertificate)),
            Some(Reason::RefusedByPolicy)
        );
        assert_eq!(reason(ServiceError::Invalid("bad".into())), None);
        assert_eq!(reason(ServiceError::Conflict("again".into())), None);
    }
}
