//! The receiver on heim-nas: the gRPC service that accepts nightly snapshots, and the
//! operator's commands over the repository it keeps (list, restore, drill, certificates).
//! It is the trust anchor of the threat model: no request from the network can delete,
//! overwrite, shorten or read back what is stored.
//!
//! Layers, each a folder whose module doc says what it may touch:
//! - [`store`]: the repository on disk, the only layer that changes it;
//! - [`service`]: the network service (admission, sessions, commit validation), built with
//!   the append capability only by [`serve`], the composition root;
//! - [`maintenance`]: prune, garbage collection, verification and their schedule;
//! - [`operator`]: restore, drill, listing;
//! - [`monitoring`]: the anomaly guard, the audit log, metrics and pings;
//! - [`cli`]: the commands as an operator runs them, and their exit codes.

pub mod cli;
pub mod clock;
pub mod config;
pub mod maintenance;
pub mod monitoring;
pub mod operator;
pub mod serve;
pub mod service;
pub mod store;
pub mod testhook;

#[cfg(test)]
mod tests;
