//! ssegate: a reverse-proxy sidecar that makes a naive Server-Sent Events endpoint
//! production-ready without changing the app behind it.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, parsed once into validated settings ([`Config`]).
//! - [`sse`]: the event-stream wire format, pure code: incremental parser and encoder.
//! - [`proxy`]: the HTTP service: router, faithful pass-through, SSE subscriptions.
//! - [`server`]: the accept loop, HTTP/1.1 and HTTP/2 on one port, graceful stop.
//! - [`app`]: binds the listener and runs everything until a shutdown future resolves.
//!
//! Dependencies point one way: `app → server → proxy → sse`, and everything reads `config`.
#![deny(unsafe_code)]
#![warn(
    rust_2018_idioms,
    missing_docs,
    clippy::await_holding_lock,
    clippy::dbg_macro,
    clippy::todo
)]

pub mod app;
pub mod config;
pub mod hub;
pub mod proxy;
pub mod route;
pub mod server;
pub mod sse;
pub mod upstream;

pub use app::{App, AppError};
pub use config::Config;
