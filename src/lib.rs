//! ssegate: a reverse-proxy sidecar that makes a naive Server-Sent Events endpoint
//! production-ready without changing the app behind it.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, parsed once into validated settings ([`Config`]).
//! - [`sse`]: the event-stream wire format, pure code: incremental parser and encoder.
//! - [`proxy`]: the HTTP service: router, faithful pass-through, SSE subscriptions.
//! - [`server`]: the accept loop, HTTP/1.1 and HTTP/2 on one port, graceful stop.
//! - [`hub`]: shared SSE streams: one upstream request per stream key, a ring buffer of
//!   encoded events, subscriber bodies that are cursors into it.
//! - [`upstream`]: the pooled client to apps and the header rules of a proxy.
//! - [`route`]: routes ready to serve and the longest-prefix router.
//! - [`demo`]: the naive app of `ssegate demo`.
//! - [`tls`]: certificates, the rustls config, the swappable acceptor.
//! - [`metrics`]: every counter and gauge, exported in the Prometheus format.
//! - [`admin`]: the admin listener: metrics, health, readiness, streams, reload.
//! - [`app`]: binds the listener and runs everything until a shutdown future resolves.
//!
//! Dependencies point one way: `app → server → proxy → hub → sse`, with `upstream` below
//! `proxy` and `hub`; everything reads `config`.
#![deny(unsafe_code)]
#![warn(
    rust_2018_idioms,
    missing_docs,
    clippy::await_holding_lock,
    clippy::dbg_macro,
    clippy::todo
)]

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod demo;
pub mod hub;
pub mod metrics;
pub mod peer;
pub mod proxy;
pub mod route;
pub mod server;
pub mod sse;
pub mod tls;
pub mod upstream;

pub use app::{App, AppError};
pub use config::Config;
pub use control::{Control, ReloadError};
