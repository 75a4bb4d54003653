//! ssegate: a reverse-proxy sidecar that makes a naive Server-Sent Events endpoint
//! production-ready without changing the app behind it.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, parsed once into validated settings ([`Config`]).
//! - [`sse`]: the event-stream wire format, pure code: incremental parser and encoder.
//! - `proxy`: the HTTP service (a `tower::Service`): router, faithful pass-through, SSE
//!   subscriptions.
//! - `server`: runs any such service: the accept loop, `max_connections`, HTTP/1.1 and HTTP/2
//!   on one port, the lean HTTP/1.1 path for SSE subscriptions, graceful stop.
//! - `peer`: what a request carries of its connection (client address, TLS; for an upgrade,
//!   its place and the drain), put in by the server, read by the proxy.
//! - `hub`: shared SSE streams: one task per stream key reading an event source (the app over
//!   HTTP), a ring buffer of encoded events, subscriber bodies that are cursors into it.
//! - `upstream`: the pooled client to apps (over TCP, TLS or a Unix socket), the one builder of
//!   upstream requests, the header rules of a proxy, the reconnect backoff.
//! - `cluster`: instances sharing streams through Redis: the key names, the shared log of each
//!   stream (lease, fenced appends, reads), the Redis client.
//! - `error`: the answers ssegate makes itself: who was at fault, and `rescue`, which makes the
//!   response and the log line.
//! - `route`: routes ready to serve and the longest-prefix router.
//! - [`demo`]: the naive app of `ssegate demo`.
//! - `tls`: certificates, the rustls config, the swappable acceptor.
//! - `metrics`: every counter and gauge, exported in the Prometheus format.
//! - `control`: the handle on a running instance ([`Control`]): reload, readiness, streams.
//! - `admin`: the admin listener: metrics, health, readiness, streams, reload.
//! - `app`: binds the listeners ([`App`]), wires the proxy into the server, and runs
//!   everything until a shutdown future resolves.
//!
//! Dependencies point one way: `app → {admin → control} → {server, proxy}`; `server` knows no
//! proxy (only `peer`, `tls`, `metrics`); `proxy → hub → route → upstream → peer`, with
//! `hub → sse`; everything reads `config` and `metrics`, and `error` is below every module
//! that answers or logs a fault. ARCHITECTURE.md says how to check it.
//!
//! The public surface is what the binary, the tests and the examples use: [`App`],
//! [`Control`], [`Config`] and its [`config`] module, the [`sse`] wire format, the [`demo`] app,
//! [`load_certificate`], [`system_roots`] and [`check_redis`] (for `ssegate check`). Everything
//! else is the crate's own.
#![deny(unsafe_code)]
#![warn(
    rust_2018_idioms,
    missing_docs,
    clippy::await_holding_lock,
    clippy::dbg_macro,
    clippy::todo,
    unreachable_pub
)]

mod admin;
mod app;
mod cluster;
pub mod config;
mod control;
pub mod demo;
mod error;
mod hub;
mod metrics;
mod peer;
mod proxy;
mod route;
mod server;
pub mod sse;
mod tls;
mod upstream;

pub use app::{App, AppError};
pub use cluster::{
    check_connection as check_redis, ConnectError as RedisConnectError, Connected as RedisConnected,
};
pub use config::Config;
pub use control::{Control, ReloadError};
pub use tls::{load as load_certificate, Loaded as LoadedCertificate, TlsError};
pub use upstream::tls::{system_roots, SystemRoots};

/// What the fuzz targets (`fuzz/`) and their seed test drive directly: the lean path's head
/// reader, the request-target checks, a proxy to ask them, and a stream's reading of an app's
/// response. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::hub::Hub;
    pub use crate::metrics::Metrics;
    pub use crate::proxy::target::{normalise_path, Target};
    pub use crate::proxy::Proxy;
    pub use crate::server::{sniff, Sniffed};
    pub use crate::upstream::stream::fuzzing::{read_response, Pieces};
}
