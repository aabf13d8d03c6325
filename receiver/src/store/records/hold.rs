//! `holds/<id>.json`: a snapshot an operator brought back with `undelete`; prune keeps it
//! until the hold is removed by hand (`rm REPO/holds/<id>.json` releases it to the
//! calendar again).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{from_json, json_name, parse_json_name, pretty};
use crate::store::backend::Space;
use crate::store::record::{sealed::Sealed, Record};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub snapshot: String,
    pub reason: String,
    /// The prune the undelete undid.
    pub pruned_at: Option<DateTime<Utc>>,
}

impl Sealed for Hold {}

impl Record for Hold {
    const SPACE: Space = Space::Holds;
    type Key = String;
    fn name(id: &String) -> String {
        json_name(id)
    }
    fn parse_name(name: &str) -> Option<String> {
        parse_json_name(name)
    }
    fn key(&self) -> String {
        self.snapshot.clone()
    }
    fn encode(&self) -> Vec<u8> {
        pretty(self)
    }
    fn decode(id: &String, bytes: &[u8]) -> Result<Hold, String> {
        let mut h: Hold = from_json(bytes)?;
        h.snapshot = id.clone();
        Ok(h)
    }
}
