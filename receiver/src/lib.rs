//! The receiver on heim-nas: the gRPC service that accepts nightly snapshots, and the
//! operator's commands over the repository it keeps (list, restore, drill, certificates).
//! It is the trust anchor of the threat model: no request from the network can delete,
//! overwrite, shorten or read back what is stored.

pub mod admission;
pub mod audit;
pub mod clock;
pub mod drill;
pub mod gc;
pub mod guard;
pub mod monitor;
pub mod prune;
pub mod quota;
pub mod repository;
pub mod restore;
pub mod sandbox_pg;
pub mod schedule;
pub mod server;
pub mod service;
pub mod snapshots;
pub mod tailscale;
pub mod testhook;
pub mod tls_accept;
pub mod trash;
pub mod verdicts;
pub mod verify;
