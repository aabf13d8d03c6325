//! The end-to-end suite as one test binary (one link instead of one per file): real
//! PostgreSQL, a real S3 server, and the real binaries over mutual TLS on loopback.

mod browse;
mod crash;
mod drill;
mod drill_hostile;
mod errors;
mod example_configs;
mod harness;
mod heal;
mod hostile;
mod hostile_limits;
mod json_schema;
mod measured;
mod monitoring;
mod nightly;
mod readme;
mod restore_safety;
mod runbook;
mod store_races;
mod tailscale_policy;
mod two_months;
mod verify_schedule;
