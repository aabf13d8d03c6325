//! `acks/`, `rejects/`, `drills/`, `contested/` (`<id>.json` each): a word on one snapshot,
//! one record type per space ([`Verdict<K>`] with `K` the kind), so an ack cannot be
//! written where a rejection belongs. What they mean is store/verdicts.rs.

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{from_json, json_name, parse_json_name, pretty};
use crate::store::backend::Space;
use crate::store::record::{sealed::Sealed, Appendable, Record};

/// An operator's, the drill's or the receiver's word on one snapshot (the body of every
/// verdict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub snapshot: String,
    pub time: DateTime<Utc>,
    pub operator: String,
    pub note: Option<String>,
}

/// Which verdict: its space.
pub trait VerdictKind: Sealed {
    const SPACE: Space;
}

/// An operator acknowledged a suspect snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {}
/// An operator rejected a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {}
/// A restore drill passed on a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drilled {}
/// A refused second commit of its day contested a snapshot (written by `serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contested {}

macro_rules! kind {
    ($t:ty, $space:expr) => {
        impl Sealed for $t {}
        impl VerdictKind for $t {
            const SPACE: Space = $space;
        }
    };
}
kind!(Acked, Space::Acks);
kind!(Rejected, Space::Rejects);
kind!(Drilled, Space::Drills);
kind!(Contested, Space::Contested);

/// A verdict of kind `K`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<K> {
    pub body: Ack,
    kind: PhantomData<K>,
}

impl<K> Verdict<K> {
    pub fn new(body: Ack) -> Self {
        Verdict {
            body,
            kind: PhantomData,
        }
    }
}

impl<K: VerdictKind> Sealed for Verdict<K> {}

impl<K: VerdictKind> Record for Verdict<K> {
    const SPACE: Space = K::SPACE;
    type Key = String;
    fn name(id: &String) -> String {
        json_name(id)
    }
    fn parse_name(name: &str) -> Option<String> {
        parse_json_name(name)
    }
    fn key(&self) -> String {
        self.body.snapshot.clone()
    }
    fn encode(&self) -> Vec<u8> {
        pretty(&self.body)
    }
    fn decode(id: &String, bytes: &[u8]) -> Result<Self, String> {
        let mut body: Ack = from_json(bytes)?;
        body.snapshot = id.clone();
        Ok(Verdict::new(body))
    }
}

/// `serve` contests the snapshots of a day whose second commit it refused; contesting
/// only ever takes a snapshot out of `latest`, never makes one good.
impl Appendable for Verdict<Contested> {}
