//! The receiver binary's command-line tests, one test binary.

mod cli;
mod maintenance;
mod store_errors;
