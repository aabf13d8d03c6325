//! `REPO/repository.json`: what makes a directory a repository. Opening checks for it and
//! says exactly why a path is not one ("no repository at PATH (…)"); only `serve`'s
//! open-or-create writes it.

use std::fs;
use std::io;
use std::path::Path;

use backup_common::durable;
use backup_common::manifest::FORMAT_VERSION;
use serde::{Deserialize, Serialize};

use super::errno;
use crate::store::error::{StoreError, StoreErrorKind};

pub const MARKER: &str = "repository.json";

#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
    kind: String,
}

/// Why `root` cannot be opened as a repository, when it cannot: `NotFound` (with the
/// reason) when there is none, the store error when the marker cannot be looked at.
pub(super) fn check(root: &Path) -> Result<(), StoreError> {
    let marker = root.join(MARKER);
    match fs::metadata(&marker) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(no_repository(root, &format!("{MARKER} is not a file"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(match fs::metadata(root) {
            Ok(m) if m.is_dir() => no_repository(root, &format!("it has no {MARKER}")),
            Ok(_) => no_repository(root, "it is not a directory"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                no_repository(root, "it does not exist")
            }
            Err(e) => errno::store_error(root, root, e),
        }),
        Err(e) => Err(errno::store_error(root, &marker, e)),
    }
}

/// Writes the marker of a new repository, write-once, staged in `tmp`.
pub(super) fn write(root: &Path, tmp: &Path) -> io::Result<()> {
    let marker = serde_json::to_vec_pretty(&Marker {
        format: FORMAT_VERSION,
        kind: "familienarchiv-backup".into(),
    })
    .expect("marker serializes");
    durable::write_once(tmp, root, MARKER, &marker).map(drop)
}

fn no_repository(root: &Path, why: &str) -> StoreError {
    StoreError::new(StoreErrorKind::NotFound, root.display().to_string())
        .with_message(format!("no repository at {} ({why})", root.display()))
}
