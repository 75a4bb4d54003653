//! ssegate: a reverse-proxy sidecar that makes a naive Server-Sent Events endpoint
//! production-ready without changing the app behind it.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, parsed once into validated settings ([`Config`]).
//! - [`sse`]: the event-stream wire format, pure code: incremental parser and encoder.
//! - [`proxy`]: the HTTP service (a `tower::Service`): router, faithful pass-through, SSE
//!   subscriptions.
//! - [`server`]: runs any such service: the accept loop, `max_connections`, HTTP/1.1 and
//!   HTTP/2 on one port, the lean HTTP/1.1 path for SSE subscriptions, graceful stop.
//! - [`peer`]: what a request carries of its connection (client address, TLS), put in by the
//!   server, read by the proxy.
//! - [`hub`]: shared SSE streams: one upstream request per stream key, a ring buffer of
//!   encoded events, subscriber bodies that are cursors into it.
//! - [`upstream`]: the pooled client to apps and the header rules of a proxy.
//! - [`error`]: the answers ssegate makes itself: who was at fault, and `rescue`, which makes
//!   the response and the log line.
//! - [`route`]: routes ready to serve and the longest-prefix router.
//! - [`demo`]: the naive app of `ssegate demo`.
//! - [`tls`]: certificates, the rustls config, the swappable acceptor.
//! - [`metrics`]: every counter and gauge, exported in the Prometheus format.
//! - [`control`]: the handle on a running instance: reload, readiness, metrics, streams.
//! - [`admin`]: the admin listener: metrics, health, readiness, streams, reload.
//! - [`app`]: binds the listeners, wires the proxy into the server, and runs everything until a
//!   shutdown future resolves.
//!
//! Dependencies point one way: `app → admin → control → {server, proxy}`; `server` knows no
//! proxy (only `peer`, `tls`, `metrics`); `proxy → hub → route → upstream → peer`, with `hub →
//! sse`; everything reads `config` and `metrics`, and `error` is below them all. ARCHITECTURE.md says how to check it.
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
pub mod error;
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
