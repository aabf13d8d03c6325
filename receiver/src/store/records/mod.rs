//! The record type of each space (see store/record.rs): its key, its object names and
//! its bytes, one file per space. Pure: nothing here reads or writes the store.

pub mod hold;
pub mod lease;
pub mod quarantine;
pub mod snapshot;
pub mod trash;
pub mod verdict;
pub mod verify_state;

use crate::store::backend::valid_name;

/// `<id>.json`: the name rule of the spaces keyed by a snapshot id.
pub(in crate::store) fn json_name(id: &str) -> String {
    format!("{id}.json")
}

/// The id of a `<id>.json` name.
pub(in crate::store) fn parse_json_name(name: &str) -> Option<String> {
    name.strip_suffix(".json")
        .filter(|id| valid_name(id))
        .map(str::to_string)
}

/// A record body as pretty JSON (the files are read by operators, too).
pub(in crate::store) fn pretty(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("a record serializes")
}

/// A JSON record body, or why it is not one.
pub(in crate::store) fn from_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
