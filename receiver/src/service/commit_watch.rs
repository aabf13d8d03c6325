//! How long a peer may keep a commit open. A Commit stream is read through [`watch`]: each
//! message must arrive within `limits.commit_idle_timeout`, the whole stream within
//! `limits.commit_deadline` of its first read, and the session table may cancel it (a newer
//! session of the same identity superseded it, or it outlived `limits.max_session_age`).
//! A stream that stalls or is cancelled yields one error and ends, so the commit is
//! dropped and its session is again subject to the idle timeout and to being superseded.
//!
//! Only the receiving part of a commit is watched: once the last object batch has arrived
//! (the peer has said everything) the rest is the receiver's own work and runs to its end.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::Limits;
use futures::Stream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Why a watched commit stream was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// No message within `limits.commit_idle_timeout`.
    Idle,
    /// Still receiving at `limits.commit_deadline`.
    Deadline,
    /// The session table ended the session (superseded, or older than `max_session_age`).
    Cancelled,
}

impl Stall {
    pub fn label(self) -> &'static str {
        match self {
            Stall::Idle => "idle",
            Stall::Deadline => "deadline",
            Stall::Cancelled => "cancelled",
        }
    }

    fn status(self, idle: Duration, deadline: Duration) -> Status {
        match self {
            Stall::Idle => Status::deadline_exceeded(format!(
                "commit dropped: no message for {} (limits.commit_idle_timeout)",
                humantime::format_duration(idle)
            )),
            Stall::Deadline => Status::deadline_exceeded(format!(
                "commit dropped: still receiving after {} (limits.commit_deadline)",
                humantime::format_duration(deadline)
            )),
            Stall::Cancelled => Status::aborted(
                "commit dropped: its session was superseded by a newer session of the same \
                 identity or exceeded limits.max_session_age",
            ),
        }
    }
}

pub type Watched<'a, T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'a>>;

struct State<S, F> {
    inner: S,
    deadline: tokio::time::Instant,
    idle: Duration,
    total: Duration,
    cancel: CancellationToken,
    stall: Arc<OnceLock<Stall>>,
    on_end: F,
    done: bool,
}

/// Reads `inner` under the commit limits. `on_end` runs when `inner` ends: it returns false
/// when the session is gone (the end then becomes a [`Stall::Cancelled`] error) and
/// otherwise marks the commit as fully received, beyond cancellation. The reason of a
/// stall is left in `stall`.
pub fn watch<'a, T, S, F>(
    inner: S,
    limits: &Limits,
    cancel: CancellationToken,
    stall: Arc<OnceLock<Stall>>,
    on_end: F,
) -> Watched<'a, T>
where
    T: Send + 'a,
    S: Stream<Item = Result<T, Status>> + Unpin + Send + 'a,
    F: FnMut() -> bool + Send + 'a,
{
    let state = State {
        inner,
        deadline: tokio::time::Instant::now() + limits.commit_deadline,
        idle: limits.commit_idle_timeout,
        total: limits.commit_deadline,
        cancel,
        stall,
        on_end,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        // Cancellation and the deadline come first: a peer that always has a message
        // ready must not outrun them.
        let next = tokio::select! {
            biased;
            _ = st.cancel.cancelled() => Err(Stall::Cancelled),
            _ = tokio::time::sleep_until(st.deadline) => Err(Stall::Deadline),
            n = st.inner.next() => Ok(n),
            _ = tokio::time::sleep(st.idle) => Err(Stall::Idle),
        };
        let stall = match next {
            Ok(Some(item)) => return Some((item, st)),
            Ok(None) if (st.on_end)() => return None,
            Ok(None) => Stall::Cancelled,
            Err(stall) => stall,
        };
        st.done = true;
        let _ = st.stall.set(stall);
        Some((Err(stall.status(st.idle, st.total)), st))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(idle_ms: u64, deadline_ms: u64) -> Limits {
        Limits {
            commit_idle_timeout: Duration::from_millis(idle_ms),
            commit_deadline: Duration::from_millis(deadline_ms),
            ..Limits::default()
        }
    }

    async fn drain(mut s: Watched<'_, u32>) -> (Vec<u32>, Option<Status>) {
        let mut items = Vec::new();
        let mut error = None;
        while let Some(x) = s.next().await {
            match x {
                Ok(v) => items.push(v),
                Err(e) => error = Some(e),
            }
        }
        (items, error)
    }

    #[tokio::test]
    async fn a_silent_stream_is_cut_off_after_the_idle_timeout() {
        let inner = futures::stream::iter(vec![Ok(1u32)]).chain(futures::stream::pending());
        let stall = Arc::new(OnceLock::new());
        let w = watch(
            Box::pin(inner),
            &limits(50, 60_000),
            CancellationToken::new(),
            stall.clone(),
            || true,
        );
        let (items, err) = drain(w).await;
        assert_eq!(items, vec![1]);
        let err = err.expect("an error");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(
            err.message().contains("limits.commit_idle_timeout"),
            "{err:?}"
        );
        assert_eq!(stall.get(), Some(&Stall::Idle));
    }

    #[tokio::test]
    async fn a_trickling_stream_is_cut_off_at_the_deadline() {
        // One message every 10 ms, well within the idle timeout, forever.
        let inner = tokio_stream::StreamExt::throttle(
            futures::stream::repeat(Ok::<u32, Status>(7)),
            Duration::from_millis(10),
        );
        let stall = Arc::new(OnceLock::new());
        let w = watch(
            Box::pin(inner),
            &limits(60_000, 200),
            CancellationToken::new(),
            stall.clone(),
            || true,
        );
        let (items, err) = drain(w).await;
        assert!(!items.is_empty());
        assert!(err
            .expect("an error")
            .message()
            .contains("limits.commit_deadline"));
        assert_eq!(stall.get(), Some(&Stall::Deadline));
    }

    #[tokio::test]
    async fn cancellation_ends_a_waiting_stream_and_a_vanished_session_fails_the_end() {
        let cancel = CancellationToken::new();
        let stall = Arc::new(OnceLock::new());
        let w = watch::<u32, _, _>(
            Box::pin(futures::stream::pending()),
            &limits(60_000, 60_000),
            cancel.clone(),
            stall.clone(),
            || true,
        );
        cancel.cancel();
        let (_, err) = drain(w).await;
        assert_eq!(err.expect("an error").code(), tonic::Code::Aborted);
        assert_eq!(stall.get(), Some(&Stall::Cancelled));

        // A complete stream whose session was removed meanwhile does not end cleanly.
        let stall = Arc::new(OnceLock::new());
        let w = watch(
            Box::pin(futures::stream::iter(vec![Ok(1u32), Ok(2)])),
            &limits(60_000, 60_000),
            CancellationToken::new(),
            stall.clone(),
            || false,
        );
        let (items, err) = drain(w).await;
        assert_eq!(items, vec![1, 2]);
        assert_eq!(err.expect("an error").code(), tonic::Code::Aborted);

        // And one whose session is still there ends without an error.
        let w = watch(
            Box::pin(futures::stream::iter(vec![Ok(1u32)])),
            &limits(60_000, 60_000),
            CancellationToken::new(),
            Arc::new(OnceLock::new()),
            || true,
        );
        let (items, err) = drain(w).await;
        assert_eq!(items, vec![1]);
        assert!(err.is_none(), "{err:?}");
    }
}
