//! The accept loop: HTTP/1.1 and HTTP/2 on one port (cleartext or TLS), connection limits and
//! deadlines, graceful stop.
//!
//! The server runs any `tower::Service` over HTTP requests and knows nothing of what it does.
//! It inserts the connection's [`Peer`] into each request's extensions and wraps each response
//! body in its own [`Tracked`] body, which keeps the request counted on its connection until
//! the body ends.

mod conn;
mod io;
mod lean;
mod limit;
mod tracked;

pub(crate) use conn::{watched, ConnState, InFlight};
pub(crate) use io::ConnIo;
pub use lean::{sniff, Sniffed};
pub(crate) use limit::ConnectionLimit;
pub(crate) use tracked::Tracked;

use lean::Prefixed;
use limit::{Admission, Slot};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use crate::config::Config;
use crate::error::{chain, unavailable, Fault};
use crate::metrics::Metrics;
use crate::peer::{Peer, Upgrades};
use crate::tls::Acceptor;

/// Boxed error with the standard bounds: what a response body's error becomes.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The lean path's question: is this request head (with no body) a subscription it may serve?
/// A predicate beside the service rather than a bound on it, so layers can wrap the service.
pub(crate) type IsLean = Arc<dyn Fn(&Request<()>) -> bool + Send + Sync>;

/// Largest request head (request line and headers) accepted from a client, in bytes.
pub(crate) const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Requests (SSE subscriptions included) one HTTP/2 connection may have open at once, as Nginx's
/// `http2_max_concurrent_streams`. A page's EventSources share one connection, so this is far
/// above what a page opens; it bounds what one connection can make ssegate hold.
pub(crate) const MAX_H2_STREAMS: u32 = 128;

/// The connection settings in force; a reload replaces them (new connections use them).
/// `max_connections` is a [`ConnectionLimit`] of its own: it counts open connections.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Time for a complete request head.
    pub header_read_timeout: Duration,
    /// Idle time between requests.
    pub keepalive_timeout: Duration,
    /// Time a client's socket may stay unwritable.
    pub write_timeout: Duration,
    /// Time connections get to finish after a stop.
    pub grace: Duration,
    /// Whether the lean HTTP/1.1 path serves subscriptions (when the server has one).
    pub lean_http1: bool,
}

impl Limits {
    /// The limits of `config`.
    pub(crate) fn of(config: &Config) -> Limits {
        Limits {
            header_read_timeout: config.header_read_timeout,
            keepalive_timeout: config.keepalive_timeout,
            write_timeout: config.client_write_timeout,
            grace: config.shutdown_grace,
            lean_http1: config.lean_http1,
        }
    }
}

/// A server of `service`: its limits, metrics, TLS and lean path, ready to [`Server::serve`].
pub(crate) struct Server<S> {
    service: S,
    lean: Option<IsLean>,
    limits: Arc<RwLock<Limits>>,
    connections: ConnectionLimit,
    metrics: Arc<Metrics>,
    tls: Option<Acceptor>,
}

impl<S> Server<S> {
    /// A cleartext server of `service` under `limits` and `connections` (a reload changes
    /// both), without the lean path.
    pub(crate) fn new(
        service: S,
        limits: Arc<RwLock<Limits>>,
        connections: ConnectionLimit,
        metrics: Arc<Metrics>,
    ) -> Self {
        Server {
            service,
            lean: None,
            limits,
            connections,
            metrics,
            tls: None,
        }
    }

    /// Serves the first request of a connection on the lean HTTP/1.1 path when `is_lean` says
    /// its head is a subscription (see `lean`).
    pub(crate) fn lean(mut self, is_lean: IsLean) -> Self {
        self.lean = Some(is_lean);
        self
    }

    /// Serves TLS with `acceptor`.
    pub(crate) fn tls(mut self, acceptor: Option<Acceptor>) -> Self {
        self.tls = acceptor;
        self
    }

    /// Serves `listener` until `shutdown` resolves, then stops accepting and gives the open
    /// connections the grace period to finish. `before_drain` runs between the two: the hub
    /// uses it to end SSE responses, which never end by themselves and would otherwise hold the
    /// drain open.
    ///
    /// Past `max_connections`, a place is waited for before `accept`: a few connections
    /// ([`limit::MAX_REFUSING`] at once) are answered 503 meanwhile, the others wait in the kernel's
    /// backlog.
    pub(crate) async fn serve<B, RB>(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        before_drain: impl FnOnce(),
    ) where
        S: Service<Request<B>, Response = Response<RB>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: From<Incoming> + Default + Send + 'static,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let Server {
            service,
            lean: is_lean,
            limits,
            connections,
            metrics,
            tls,
        } = self;
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
            .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32)
            .max_concurrent_streams(MAX_H2_STREAMS)
            // Extended CONNECT (RFC 8441): a browser's WebSocket over its HTTP/2 connection.
            .enable_connect_protocol();
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        // The lean path's connections, so a drain can wait for them as hyper's graceful
        // shutdown waits for its own: each holds a token of the tracker while it lives.
        let lean = TaskTracker::new();
        let stop = CancellationToken::new();
        // Upgraded connections (WebSockets), which hyper no longer holds: the drain waits for
        // them too, then closes them.
        let tunnels = TaskTracker::new();
        let tunnels_closed = CancellationToken::new();
        tokio::pin!(shutdown);
        loop {
            let admission = tokio::select! {
                admission = connections.admit() => admission,
                () = &mut shutdown => break,
            };
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
            let handshake = tls.as_ref().map(Acceptor::current);
            let guard = match connections.recheck(admission) {
                Admission::Serve(reserved) => reserved.open(),
                Admission::Refuse(refusal) => {
                    metrics.connections_refused.inc();
                    tokio::spawn(async move {
                        let _refusal = refusal;
                        // One short deadline for the handshake and the answer together: a
                        // refusal slot is held briefly, whatever the client does.
                        let deadline = limits.header_read_timeout.min(REFUSAL_DEADLINE);
                        let refusing = async move {
                            match handshake {
                                None => refuse(stream, remote).await,
                                Some(acceptor) => {
                                    if let Ok(tls) = acceptor.accept(stream).await {
                                        refuse(tls, remote).await;
                                    }
                                }
                            }
                        };
                        let _ = tokio::time::timeout(deadline, refusing).await;
                    });
                    continue;
                }
            };
            let connection = Connection {
                deadlines: (limits.header_read_timeout, limits.keepalive_timeout),
                service: service.clone(),
                is_lean: is_lean.clone().filter(|_| limits.lean_http1),
                peer: Peer {
                    addr: remote,
                    secure: handshake.is_some(),
                },
                builder: builder.clone(),
                watcher: graceful.watcher(),
                lean: lean.clone(),
                stop: stop.clone(),
                tunnels: tunnels.clone(),
                tunnels_closed: tunnels_closed.clone(),
                remote,
            };
            let state = ConnState::new();
            let io = ConnIo::new(
                stream,
                state.clone(),
                limits.write_timeout,
                metrics.write_stalls.clone(),
            );
            // Each kind of connection boxes its own serving future, so a plain connection's
            // task does not carry room for a TLS stream (the task is short-lived on the lean
            // path, and the allocator reuses small blocks far better than 5 KiB ones: measured,
            // an idle SSE client cost 5.6 KiB instead of 1.6 KiB with one big task).
            let serving: Pin<Box<dyn Future<Output = ()> + Send>> = match handshake {
                None => Box::pin(connection.serve(io, state.clone(), guard)),
                Some(acceptor) => {
                    let state = state.clone();
                    Box::pin(async move {
                        // The handshake's bytes count as the first request head's: a client
                        // that stalls in it is cut off by header_read_timeout.
                        match acceptor.accept(io).await {
                            Ok(tls) => connection.serve(tls, state, guard).await,
                            Err(error) => {
                                tracing::debug!(%remote, fault = %Fault::Client, %error, "TLS handshake failed")
                            }
                        }
                    })
                }
            };
            tokio::spawn(watched(
                serving,
                state,
                (limits.header_read_timeout, limits.keepalive_timeout),
                remote,
            ));
        }
        drop(listener);
        stop.cancel();
        before_drain();
        let grace = limits
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .grace;
        tracing::info!(open_connections = metrics.connections.get(), grace = ?grace, "stopped accepting; draining connections");
        let drained = async {
            graceful.shutdown().await;
            lean.close();
            lean.wait().await;
            tunnels.close();
            tunnels.wait().await;
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                upgraded = tunnels.len(),
                "grace period over; closing the connections still open"
            );
            tunnels_closed.cancel();
        }
    }
}

/// What one connection's task needs.
struct Connection<S> {
    /// `header_read_timeout` and `keepalive_timeout` when the connection was accepted.
    deadlines: (Duration, Duration),
    service: S,
    is_lean: Option<IsLean>,
    peer: Peer,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    lean: TaskTracker,
    stop: CancellationToken,
    tunnels: TaskTracker,
    tunnels_closed: CancellationToken,
    remote: SocketAddr,
}

impl<S> Connection<S> {
    /// Reads the first request head; serves an SSE subscription on the lean path, and anything
    /// else with hyper (which then serves the rest of the connection).
    async fn serve<IO, B, RB>(self, mut io: IO, state: Arc<ConnState>, guard: Option<Slot>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<B>, Response = Response<RB>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: From<Incoming> + Default + Send + 'static,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let remote = self.remote;
        let Some(is_lean) = self.is_lean.clone() else {
            return self.hand_to_hyper(Bytes::new(), io, state, guard);
        };
        let counted = self.lean.token();
        let sniffing = async {
            tokio::select! {
                sniffed = lean::sniff(&mut io, &*is_lean) => Some(sniffed),
                // Stopping before a request arrived: close.
                () = self.stop.cancelled() => None,
            }
        };
        let request = match Box::pin(sniffing).await {
            Some(Ok(Sniffed::Subscription(request))) => request,
            Some(Ok(Sniffed::Other(prefix))) => {
                drop(counted);
                return self.hand_to_hyper(prefix, io, state, guard);
            }
            Some(Ok(Sniffed::Closed)) | None => return,
            Some(Err(error)) => return log_connection_error(remote, &error),
        };
        let in_flight = state.begin();
        let mut request = request.map(|()| B::default());
        request.extensions_mut().insert(self.peer);
        let response = match Box::pin(self.service.oneshot(request)).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        // The response goes on in a task of its own, holding only what it needs: an idle SSE
        // client costs that task, not this one's largest state.
        let writer = lean::Writer::new(io, response.map(|body| Tracked::new(body, in_flight)));
        tokio::spawn(async move {
            let _open = guard;
            let _counted = counted;
            if let Err(error) = writer.await {
                log_connection_error(remote, &error);
            }
        });
    }

    /// Hands the connection to hyper in a task of its own, under its watchdog: the task that
    /// accepted it (with room for a TLS handshake and the first head) ends, so a connection
    /// that stays (HTTP/2, keep-alive) costs only hyper's state.
    fn hand_to_hyper<IO, B, RB>(
        self,
        prefix: bytes::Bytes,
        io: IO,
        state: Arc<ConnState>,
        guard: Option<Slot>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<B>, Response = Response<RB>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: From<Incoming> + Default + Send + 'static,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let (deadlines, remote) = (self.deadlines, self.remote);
        let serving = self.hyper(prefix, io, state.clone(), guard);
        tokio::spawn(watched(serving, state, deadlines, remote));
    }

    /// Hands the connection to hyper, with the bytes already read replayed first.
    fn hyper<IO, B, RB>(
        self,
        prefix: bytes::Bytes,
        io: IO,
        state: Arc<ConnState>,
        guard: Option<Slot>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<B>, Response = Response<RB>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: From<Incoming> + Default + Send + 'static,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let remote = self.remote;
        let peer = self.peer;
        let inner = self.service;
        let hold = guard.map(|slot| Box::new(slot) as Box<dyn Send>);
        let upgrades = Upgrades::new(hold, self.tunnels, self.tunnels_closed);
        let open = upgrades.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let in_flight = state.begin();
            let mut request = request.map(B::from);
            request.extensions_mut().insert(peer);
            if request.headers().contains_key(http::header::UPGRADE)
                || request.method() == http::Method::CONNECT
            {
                request.extensions_mut().insert(upgrades.clone());
            }
            let called = inner.clone().oneshot(request);
            async move {
                let response = match called.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        });
        let io = TokioIo::new(Prefixed::new(prefix, io));
        let connection = self.watcher.watch(
            self.builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        Box::pin(async move {
            let _open = open;
            if let Err(error) = connection.await {
                log_connection_error(remote, error.as_ref());
            }
        })
    }
}

/// The longest a connection over `max_connections` is given for its TLS handshake and request
/// (or `header_read_timeout`, if shorter).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// Answers one request on a connection over `max_connections` with 503 and closes it: HTTP/1.1
/// without keep-alive, HTTP/2 with a GOAWAY once the first answer is made, so no client keeps a
/// refusal slot past its answer.
async fn refuse<IO>(stream: IO, remote: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::warn!(%remote, fault = %Fault::Internal, "max_connections reached; answering 503");
    let answered = Arc::new(tokio::sync::Notify::new());
    let told = answered.clone();
    let service = service_fn(move |_request| {
        told.notify_one();
        async {
            Ok::<_, std::convert::Infallible>(unavailable::<Full<Bytes>>("ssegate: too many connections\n"))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = answered.notified() => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

/// A connection that ended with an error: the client's doing (bad request, reset) and worth a
/// debug line, never more.
fn log_connection_error(remote: SocketAddr, error: &(dyn std::error::Error + 'static)) {
    tracing::debug!(%remote, fault = %Fault::Client, error = %chain(error), "connection ended with an error");
}
