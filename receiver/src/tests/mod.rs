//! Tests across layers that need the crate's insides: every store query made to fail
//! through the memory store, and the decisions that needed it stopping.

mod store_failures;
