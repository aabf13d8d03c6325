//! The repository: chunks, snapshot manifests, the trash, the operator's verdicts and the
//! upload-session leases, behind a store interface with two capabilities
//! ([`backend::AppendStore`] for the network service, [`backend::MaintainStore`] for the
//! NAS's maintenance). The only layer that changes anything under the repository root;
//! [`fs`] is the only module in it that touches the file system.

pub mod backend;
pub mod fs;
pub mod leases;
pub mod memory;
pub mod repository;
pub mod trash;
pub mod verdicts;
