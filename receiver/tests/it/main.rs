//! The receiver binary's command-line tests, one test binary.

mod cli;
mod exit_table;
mod maintenance;
mod select;
mod store_errors;
