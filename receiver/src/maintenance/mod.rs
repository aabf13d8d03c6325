//! Work the receiver does to its own repository on its own clock: retention (prune), garbage
//! collection, verification, and `serve`'s schedule for them. Never reachable from the network.

pub mod gc;
pub mod prune;
pub mod schedule;
pub mod verify;
pub mod verify_schedule;
pub mod verify_state;
