//! The protocol's error contract (`ErrorDetail` in proto/backup.proto): the reason a
//! sender acts on travels in the status's binary details, so neither side matches on
//! message text. The receiver writes it with [`status`], the sender reads it with [`reason`].

use prost::Message;
use tonic::{Code, Status};

pub use crate::proto::error_detail::Reason;
use crate::proto::ErrorDetail;

/// A status with `code`, `message` and the machine-readable `reason`.
pub fn status(code: Code, message: impl Into<String>, reason: Reason) -> Status {
    let detail = ErrorDetail {
        reason: reason as i32,
    };
    Status::with_details(code, message, detail.encode_to_vec().into())
}

/// The reason a status carries; `None` when it carries none (or one this build does not
/// know, which the caller treats like none).
pub fn reason(status: &Status) -> Option<Reason> {
    if status.details().is_empty() {
        return None;
    }
    let detail = ErrorDetail::decode(status.details()).ok()?;
    Reason::try_from(detail.reason)
        .ok()
        .filter(|r| *r != Reason::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_survives_the_round_trip_and_plain_statuses_have_none() {
        for r in [
            Reason::SessionLost,
            Reason::MissingChunks,
            Reason::LimitExceeded,
            Reason::RefusedByPolicy,
        ] {
            let s = status(Code::FailedPrecondition, "x", r);
            assert_eq!(reason(&s), Some(r));
        }
        assert_eq!(
            reason(&Status::failed_precondition("unknown or expired session")),
            None
        );
        let garbage = Status::with_details(Code::Internal, "x", vec![0xff, 0xff].into());
        assert_eq!(reason(&garbage), None);
    }
}
