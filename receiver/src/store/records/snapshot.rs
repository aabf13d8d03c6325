//! `snapshots/<id>.json`: one manifest per committed snapshot, written once by the commit
//! and removed only by the trash's purge.

use backup_common::manifest::{Manifest, READABLE_FORMATS};

use super::{from_json, json_name, parse_json_name};
use crate::store::backend::Space;
use crate::store::record::{sealed::Sealed, Appendable, Record};

impl Sealed for Manifest {}

impl Record for Manifest {
    const SPACE: Space = Space::Snapshots;
    type Key = String;
    fn name(id: &String) -> String {
        json_name(id)
    }
    fn parse_name(name: &str) -> Option<String> {
        parse_json_name(name)
    }
    fn key(&self) -> String {
        self.id.clone()
    }
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serializes")
    }
    fn decode(_id: &String, bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = from_json(bytes)?;
        if !READABLE_FORMATS.contains(&m.format) {
            return Err(format!(
                "format {} is not supported (this receiver reads {READABLE_FORMATS:?})",
                m.format
            ));
        }
        Ok(m)
    }
}

/// The commit publishes manifests through the append capability.
impl Appendable for Manifest {}
