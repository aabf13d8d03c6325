//! `verify-state/<n>.json` (n zero-padded to 20 digits, so names sort as numbers): the
//! verification schedule's saved state, the newest number wins. What it holds is
//! maintenance/verify_state.rs's business; the store keeps the bytes and the names.

use crate::store::backend::Space;
use crate::store::record::{sealed::Sealed, Record};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyStateSave {
    pub number: u64,
    pub bytes: Vec<u8>,
}

impl Sealed for VerifyStateSave {}

impl Record for VerifyStateSave {
    const SPACE: Space = Space::VerifyState;
    type Key = u64;
    fn name(n: &u64) -> String {
        format!("{n:020}.json")
    }
    fn parse_name(name: &str) -> Option<u64> {
        name.strip_suffix(".json")?.parse().ok()
    }
    fn key(&self) -> u64 {
        self.number
    }
    fn encode(&self) -> Vec<u8> {
        self.bytes.clone()
    }
    fn decode(&number: &u64, bytes: &[u8]) -> Result<VerifyStateSave, String> {
        Ok(VerifyStateSave {
            number,
            bytes: bytes.to_vec(),
        })
    }
}
