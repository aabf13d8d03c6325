//! The nightly sender on the production VPS: a consistent database dump and the new and
//! changed objects of the bucket, chunked, deduplicated against the receiver and sent over
//! gRPC with mutual TLS. It can add data to the receiver; it cannot remove any.

pub mod client;
pub mod config;
pub mod database;
pub mod healthcheck;
pub mod local_dumps;
pub mod log_tail;
pub mod objects;
pub mod preflight;
pub mod progress;
pub mod run;
pub mod session;
pub mod upload;
