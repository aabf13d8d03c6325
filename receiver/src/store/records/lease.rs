//! `leases/<session>.open` and `leases/<session>.closed`: an upload session `serve` has
//! open, and its end (store/leases.rs says what they mean). Both are written by `serve`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::from_json;
use crate::store::backend::{valid_name, Space};
use crate::store::record::{sealed::Sealed, Appendable, Record};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    pub session: String,
    pub started: DateTime<Utc>,
    /// After this the lease is ignored (the session is older than `max_session_age`).
    pub ends: DateTime<Utc>,
}

/// The name of a lease object: a session's opening or its end.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeaseKey {
    Open(String),
    Closed(String),
}

impl LeaseKey {
    pub fn session(&self) -> &str {
        match self {
            LeaseKey::Open(s) | LeaseKey::Closed(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRecord {
    Open(Lease),
    /// Empty: its name says it all.
    Closed(String),
}

impl Sealed for LeaseRecord {}

impl Record for LeaseRecord {
    const SPACE: Space = Space::Leases;
    type Key = LeaseKey;
    fn name(key: &LeaseKey) -> String {
        match key {
            LeaseKey::Open(s) => format!("{s}.open"),
            LeaseKey::Closed(s) => format!("{s}.closed"),
        }
    }
    fn parse_name(name: &str) -> Option<LeaseKey> {
        let key = if let Some(s) = name.strip_suffix(".open") {
            LeaseKey::Open(s.to_string())
        } else {
            LeaseKey::Closed(name.strip_suffix(".closed")?.to_string())
        };
        valid_name(key.session()).then_some(key)
    }
    fn key(&self) -> LeaseKey {
        match self {
            LeaseRecord::Open(l) => LeaseKey::Open(l.session.clone()),
            LeaseRecord::Closed(s) => LeaseKey::Closed(s.clone()),
        }
    }
    fn encode(&self) -> Vec<u8> {
        match self {
            LeaseRecord::Open(l) => serde_json::to_vec(l).expect("a lease serializes"),
            LeaseRecord::Closed(_) => Vec::new(),
        }
    }
    fn decode(key: &LeaseKey, bytes: &[u8]) -> Result<LeaseRecord, String> {
        Ok(match key {
            LeaseKey::Open(s) => {
                let mut lease: Lease = from_json(bytes)?;
                // The object's name is what clean-up removes and `.closed` pairs with; a
                // body that says otherwise does not redirect either.
                lease.session = s.clone();
                LeaseRecord::Open(lease)
            }
            LeaseKey::Closed(s) => LeaseRecord::Closed(s.clone()),
        })
    }
}

impl Appendable for LeaseRecord {}
