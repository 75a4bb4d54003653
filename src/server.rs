//! The accept loop: HTTP/1.1 and HTTP/2 cleartext on one port, connection limits and deadlines,
//! graceful stop.

mod conn;
mod io;

pub use conn::{ConnState, Expiry, InFlight};
pub use io::ConnIo;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Largest request head (request line and headers) accepted from a client, in bytes.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// The connection settings in force; a reload replaces them (new connections use them).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: Option<u64>,
    /// Time for a complete request head.
    pub header_read_timeout: Duration,
    /// Idle time between requests.
    pub keepalive_timeout: Duration,
    /// Time a client's socket may stay unwritable.
    pub write_timeout: Duration,
    /// Time connections get to finish after a stop.
    pub grace: Duration,
}

impl Limits {
    /// The limits of `config`.
    pub fn of(config: &Config) -> Limits {
        Limits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            keepalive_timeout: config.keepalive_timeout,
            write_timeout: config.client_write_timeout,
            grace: config.shutdown_grace,
        }
    }
}

/// Counts an open connection while it lives.
struct Open {
    count: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections.dec();
    }
}

/// Serves `listener` with `proxy` until `shutdown` resolves, then stops accepting and gives the
/// open connections the grace period to finish. `before_drain` runs between the two: the hub
/// uses it to end SSE responses, which never end by themselves and would otherwise hold the
/// drain open.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
    before_drain: impl FnOnce(),
    limits: Arc<RwLock<Limits>>,
    metrics: Arc<Metrics>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Request-head deadlines are the connection watchdog's (see `conn`), so hyper's own timer,
    // which would also cut idle keep-alive connections, is off.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, usually: pause rather than spin on the error.
                    tracing::warn!(%error, "accept failed; pausing accepts for 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let limits = limits
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let count = open.fetch_add(1, Ordering::AcqRel) + 1;
        metrics.connections.inc();
        let guard = Open {
            count: open.clone(),
            metrics: metrics.clone(),
        };
        if limits.max_connections.is_some_and(|max| count as u64 > max) {
            metrics.connections_refused.inc();
            tokio::spawn(refuse(stream, remote, limits.header_read_timeout, guard));
            continue;
        }
        let state = ConnState::new();
        let io = ConnIo::new(
            stream,
            state.clone(),
            limits.write_timeout,
            metrics.write_stalls.clone(),
        );
        let proxy = proxy.clone();
        let requests = state.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            let in_flight = requests.begin();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(request, remote, in_flight).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service).into_owned());
        tokio::spawn(async move {
            let _guard = guard;
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        log_connection_error(remote, error.as_ref());
                    }
                }
                why = state.expired(limits.header_read_timeout, limits.keepalive_timeout) => {
                    match why {
                        Expiry::Head => tracing::debug!(%remote, fault = "client", "request head not complete within header_read_timeout; closing"),
                        Expiry::Idle => tracing::debug!(%remote, "keep-alive connection idle past keepalive_timeout; closing"),
                    }
                }
            }
        });
    }
    drop(listener);
    before_drain();
    let grace = limits
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .grace;
    tracing::info!(open_connections = graceful.count(), grace = ?grace, "stopped accepting; draining connections");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing the connections still open");
    }
}

/// Answers one request on a connection over `max_connections` with 503 and closes it. Never a
/// hang: the connection gets `header_read_timeout` to send its request.
async fn refuse(stream: TcpStream, remote: SocketAddr, timeout: Duration, _guard: Open) {
    tracing::warn!(%remote, "max_connections reached; answering 503");
    let service = service_fn(|_request| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"ssegate: too many connections\n")));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, std::convert::Infallible>(response)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(false);
    let serve = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(timeout, serve).await;
}

/// A connection that ended with an error: the client's doing (bad request, reset) and worth a
/// debug line, never more.
fn log_connection_error(remote: SocketAddr, error: &(dyn std::error::Error + 'static)) {
    tracing::debug!(%remote, fault = "client", error = %crate::upstream::chain(error), "connection ended with an error");
}
