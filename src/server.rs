//! The accept loop: HTTP/1.1 and HTTP/2 cleartext on one port, graceful stop.

mod stall;

pub use stall::StallGuard;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::hub::Counter;
use crate::proxy::Proxy;

/// How connections are served.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long open connections may take to finish after a stop.
    pub grace: Duration,
    /// How long a client's socket may stay unwritable.
    pub write_timeout: Duration,
    /// Counts connections closed because the client stopped reading.
    pub stalls: Arc<Counter>,
}

/// Largest request head (request line and headers) accepted from a client, in bytes.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// How long a client may take to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `listener` with `proxy` until `shutdown` resolves, then stops accepting and gives the
/// open connections `settings.grace` to finish. `before_drain` runs between the two: the hub
/// uses it to end SSE responses, which never end by themselves and would otherwise hold the
/// drain open.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
    before_drain: impl FnOnce(),
    settings: Settings,
) {
    let grace = settings.grace;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
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
        let proxy = proxy.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(request, remote).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                log_connection_error(remote, error.as_ref());
            }
        });
    }
    drop(listener);
    before_drain();
    let open = graceful.count();
    tracing::info!(open_connections = open, grace = ?grace, "stopped accepting; draining connections");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing the connections still open");
    }
}

/// A connection that ended with an error: the client's doing (bad request, reset) and worth a
/// debug line, never more.
fn log_connection_error(remote: SocketAddr, error: &(dyn std::error::Error + 'static)) {
    tracing::debug!(%remote, fault = "client", error = %crate::upstream::chain(error), "connection ended with an error");
}
