//! ssegate library.
pub mod config;
pub mod sse;
