//! Opening a repository on the file system by its path: the one place that puts the file
//! store (fs.rs) behind the capabilities (repository.rs), so neither names the other.
//! Only [`create_or_open`] creates a repository (`serve`'s start); every other command
//! opens an existing one and says "no repository at PATH" when there is none.

use std::path::Path;

use crate::store::error::StoreError;
use crate::store::fs::FsStore;
use crate::store::repository::{Maintainer, Repository};

/// The existing repository at `root`, with the append capability.
pub fn repository(root: &Path) -> Result<Repository, StoreError> {
    Ok(maintainer(root)?.repository())
}

/// The existing repository at `root`, with the maintain capability.
pub fn maintainer(root: &Path) -> Result<Maintainer, StoreError> {
    Ok(Maintainer::new(FsStore::open(root)?))
}

/// The repository at `root`, created empty when there is none.
pub fn create_or_open(root: &Path) -> Result<Maintainer, StoreError> {
    Ok(Maintainer::new(FsStore::open_or_init(root)?))
}
