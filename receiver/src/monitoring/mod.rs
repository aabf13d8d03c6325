//! What tells a human something is wrong: the anomaly guard's verdict on each commit, the
//! audit log of what the network asked for, and the monitor (metrics, healthcheck pings,
//! missing nights).

pub mod audit;
pub mod events;
pub mod guard;
pub mod monitor;
