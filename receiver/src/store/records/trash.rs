//! The trash as records, created once and never moved (an object store has no rename):
//!
//! ```text
//! trash/<id>@<time>.json      a tombstone: snapshot id was pruned at time
//! undeleted/<id>@<time>.json  the tombstone id@time was undone by `undelete`
//! ```
//!
//! The manifest stays in `snapshots/` all along. A snapshot is *in the trash* while it has
//! a tombstone that no undeleted record undoes ([`in_trash`]); only the purge, after the
//! grace period, removes the manifest and then its records (store/trash.rs).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{from_json, pretty};
use crate::store::backend::{valid_name, Space};
use crate::store::record::{sealed::Sealed, Record};

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A snapshot and the time (receiver clock, whole seconds) it was pruned: the key of a
/// tombstone and of the undeleted record that undoes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pruned {
    pub snapshot: String,
    pub at: DateTime<Utc>,
}

impl Pruned {
    pub fn new(snapshot: &str, at: DateTime<Utc>) -> Pruned {
        Pruned {
            snapshot: snapshot.to_string(),
            // The name holds whole seconds: so does the key, or a round trip would differ.
            at: DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at),
        }
    }
}

fn name(k: &Pruned) -> String {
    format!("{}@{}.json", k.snapshot, k.at.format(TIME_FORMAT))
}

fn parse(name: &str) -> Option<Pruned> {
    let (id, time) = name.strip_suffix(".json")?.rsplit_once('@')?;
    let at = NaiveDateTime::parse_from_str(time, TIME_FORMAT)
        .ok()?
        .and_utc();
    valid_name(id).then(|| Pruned {
        snapshot: id.to_string(),
        at,
    })
}

/// "Snapshot `snapshot` was pruned at `pruned_at`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub snapshot: String,
    pub pruned_at: DateTime<Utc>,
}

/// "The tombstone `snapshot@pruned_at` was undone at `undeleted_at`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undeleted {
    pub snapshot: String,
    pub pruned_at: DateTime<Utc>,
    pub undeleted_at: DateTime<Utc>,
}

impl Sealed for Tombstone {}
impl Sealed for Undeleted {}

impl Record for Tombstone {
    const SPACE: Space = Space::Trash;
    type Key = Pruned;
    fn name(k: &Pruned) -> String {
        name(k)
    }
    fn parse_name(n: &str) -> Option<Pruned> {
        parse(n)
    }
    fn key(&self) -> Pruned {
        Pruned::new(&self.snapshot, self.pruned_at)
    }
    fn encode(&self) -> Vec<u8> {
        pretty(self)
    }
    fn decode(k: &Pruned, bytes: &[u8]) -> Result<Tombstone, String> {
        let _: Tombstone = from_json(bytes).map_err(|e| {
            format!("{e} (a trash entry of a receiver before tombstones holds a whole manifest; see docs/adr/0010)")
        })?;
        Ok(Tombstone {
            snapshot: k.snapshot.clone(),
            pruned_at: k.at,
        })
    }
}

impl Record for Undeleted {
    const SPACE: Space = Space::Undeleted;
    type Key = Pruned;
    fn name(k: &Pruned) -> String {
        name(k)
    }
    fn parse_name(n: &str) -> Option<Pruned> {
        parse(n)
    }
    fn key(&self) -> Pruned {
        Pruned::new(&self.snapshot, self.pruned_at)
    }
    fn encode(&self) -> Vec<u8> {
        pretty(self)
    }
    fn decode(k: &Pruned, bytes: &[u8]) -> Result<Undeleted, String> {
        let u: Undeleted = from_json(bytes)?;
        Ok(Undeleted {
            snapshot: k.snapshot.clone(),
            pruned_at: k.at,
            undeleted_at: u.undeleted_at,
        })
    }
}

/// The snapshots in the trash, each with its newest tombstone that nothing undid: the one
/// rule of what "in the trash" means.
pub fn in_trash(tombstones: &[Pruned], undeleted: &[Pruned]) -> BTreeMap<String, DateTime<Utc>> {
    let undone: BTreeSet<&Pruned> = undeleted.iter().collect();
    let mut out: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for t in tombstones.iter().filter(|t| !undone.contains(t)) {
        let at = out.entry(t.snapshot.clone()).or_insert(t.at);
        *at = (*at).max(t.at);
    }
    out
}
