//! `quarantine/<hex>` and `quarantine/<hex>.N`: the stored bytes of a chunk verification
//! found damaged, moved aside (never deleted) by the maintain capability's `quarantine`,
//! the N-th time for the same id when it was damaged again after a heal.

use backup_common::chunk::ChunkId;

use crate::store::backend::Space;
use crate::store::record::{sealed::Sealed, Record};

/// A chunk id, and which of its quarantined copies (0 for the first).
pub type QuarantineKey = (ChunkId, u32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub chunk: ChunkId,
    pub copy: u32,
    /// The chunk's stored form as it was found.
    pub stored: Vec<u8>,
}

impl Sealed for Quarantined {}

impl Record for Quarantined {
    const SPACE: Space = Space::Quarantine;
    type Key = QuarantineKey;
    fn name((id, copy): &QuarantineKey) -> String {
        match copy {
            0 => id.to_hex(),
            n => format!("{}.{n}", id.to_hex()),
        }
    }
    fn parse_name(name: &str) -> Option<QuarantineKey> {
        let (hex, copy) = match name.split_once('.') {
            Some((hex, n)) => (hex, n.parse().ok().filter(|&n| n > 0)?),
            None => (name, 0),
        };
        Some((ChunkId::from_hex(hex).ok()?, copy))
    }
    fn key(&self) -> QuarantineKey {
        (self.chunk, self.copy)
    }
    fn encode(&self) -> Vec<u8> {
        self.stored.clone()
    }
    fn decode(&(chunk, copy): &QuarantineKey, bytes: &[u8]) -> Result<Quarantined, String> {
        Ok(Quarantined {
            chunk,
            copy,
            stored: bytes.to_vec(),
        })
    }
}
