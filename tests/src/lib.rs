//! Integration-test harness for the backup system: real, throwaway
//! dependencies started per test.
//!
//! - [`pg`]: a PostgreSQL 15 cluster in a temporary directory.
//! - [`s3`]: an in-process S3 server (s3s + s3s-fs) on loopback.
//! - [`net`]: free ports and waiting for listeners.
//!
//! Everything binds 127.0.0.1 on kernel-chosen ports and lives in its own
//! temporary directory, so tests can run in parallel.

pub mod hostile;
pub mod net;
pub mod pg;
pub mod s3;

pub use net::{free_port, wait_for_tcp};
pub use pg::PgCluster;
pub use s3::S3Server;
pub mod checks;
pub mod proxy;
pub mod stack;
