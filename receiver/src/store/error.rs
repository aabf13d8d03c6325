//! What a store operation can fail with, in the store's own terms: a [`StoreErrorKind`]
//! that every caller can decide on (the file store maps `errno`s to it, an object store
//! its status codes), where it happened (a path or a key), and the store's own words.
//!
//! Callers decide on the kind, never on `io::ErrorKind` or an HTTP status: "not found"
//! is the only kind a query may turn into an answer ("absent"), and only where the
//! interface says so; every other kind stops the decision that needed the fact.

use std::fmt;

/// What went wrong, as far as a caller needs to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The object, chunk or repository is not there.
    NotFound,
    /// A create-only name is taken.
    AlreadyExists,
    /// The store refused this process (file permissions, an S3 policy).
    PermissionDenied,
    /// The store is full (the file system, a bucket quota).
    NoSpace,
    /// The store did not answer (a timeout, a connection refused, a throttled request):
    /// trying again later may work.
    Unavailable,
    /// The object is there but is not what its space holds (undecodable, wrong format).
    Corrupt,
    /// Anything else (an I/O error of the disk, an unexpected answer).
    Other,
}

impl StoreErrorKind {
    fn says(self) -> &'static str {
        match self {
            StoreErrorKind::NotFound => "not found",
            StoreErrorKind::AlreadyExists => "already exists",
            StoreErrorKind::PermissionDenied => "permission denied",
            StoreErrorKind::NoSpace => "no space left",
            StoreErrorKind::Unavailable => "store unavailable",
            StoreErrorKind::Corrupt => "unreadable",
            StoreErrorKind::Other => "store error",
        }
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed store operation: its kind, where, and why.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    /// The path (file store) or key (object store) the operation was on.
    at: String,
    /// The store's own explanation (who the process runs as, which format it found).
    detail: Option<String>,
    /// Replaces the whole message when the kind alone reads wrong ("no repository at …").
    message: Option<String>,
    source: Option<Source>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, at: impl Into<String>) -> Self {
        StoreError {
            kind,
            at: at.into(),
            detail: None,
            message: None,
            source: None,
        }
    }

    /// An object that is there but cannot be decoded, with why.
    pub fn corrupt(at: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Corrupt, at).with_detail(why)
    }

    /// Adds the store's explanation (shown after the kind).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Replaces the message (the kind and place stay for callers).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Keeps the underlying error (an `io::Error`, an SDK error) as the source.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The path or key the operation was on.
    pub fn at(&self) -> &str {
        &self.at
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == StoreErrorKind::NotFound
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = &self.message {
            return f.write_str(m);
        }
        write!(f, "{}: {}", self.kind.says(), self.at)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The kind says all an errno would for these; for the rest the source adds what
        // happened (EIO, a refused connection).
        match self.kind {
            StoreErrorKind::NotFound
            | StoreErrorKind::AlreadyExists
            | StoreErrorKind::PermissionDenied
            | StoreErrorKind::NoSpace => None,
            _ => self.source.as_deref().map(|s| s as _),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_kind_and_the_place_once() {
        let e = StoreError::new(StoreErrorKind::PermissionDenied, "/srv/repo/snapshots")
            .with_detail("running as nobody")
            .with_source(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(
            backup_common::error_chain(&e),
            "permission denied: /srv/repo/snapshots (running as nobody)"
        );
        let e = StoreError::new(StoreErrorKind::Other, "/srv/repo/chunks/ab")
            .with_source(std::io::Error::other("Input/output error"));
        assert_eq!(
            backup_common::error_chain(&e),
            "store error: /srv/repo/chunks/ab: Input/output error"
        );
        let e = StoreError::new(StoreErrorKind::NotFound, "/x").with_message("no repository at /x");
        assert_eq!(e.to_string(), "no repository at /x");
        assert!(e.is_not_found());
    }
}
