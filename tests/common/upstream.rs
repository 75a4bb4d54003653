//! Upstreams the tests control: a real hyper server on 127.0.0.1:0 that runs a handler per
//! request and counts its connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A response body for test upstreams.
pub type TestBody = UnsyncBoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// A body fed frame by frame through a channel; it ends when the sender is dropped.
pub struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Frame<Bytes>>,
}

/// A channel body and the sender that feeds it.
pub fn channel_body() -> (mpsc::UnboundedSender<Frame<Bytes>>, TestBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChannelBody { rx }.boxed_unsync())
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// What an [`Upstream`] has seen of its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connections {
    /// Accepted so far.
    pub accepted: usize,
    /// Accepted and not yet closed.
    pub open: usize,
}

/// Counts a connection as open while it lives (its task ended or aborted alike).
struct OpenConnection(watch::Sender<Connections>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.send_modify(|c| c.open -= 1);
    }
}

/// A running test upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    connections: watch::Sender<Connections>,
    task: JoinHandle<()>,
    /// The connections' tasks, so [`Upstream::stop`] can end them as a dying process would.
    serving: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Where a test upstream listens.
pub enum Listen {
    /// Plain TCP.
    Tcp(TcpListener),
    /// A Unix domain socket.
    Unix(UnixListener),
    /// TLS over TCP, with the acceptor's certificate and ALPN (see `tls::tls_acceptor`).
    Tls(TcpListener, TlsAcceptor),
}

/// A connection's stream, of whichever listener.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Listen {
    /// The next connection; for TLS, before its handshake.
    async fn accept(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Listen::Tcp(listener) | Listen::Tls(listener, _) => Box::new(listener.accept().await?.0),
            Listen::Unix(listener) => Box::new(listener.accept().await?.0),
        })
    }
}

impl Upstream {
    /// Serves every request with `handler`, over HTTP/1.1 and HTTP/2.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        Upstream::serve(listener, handler)
    }

    /// Serves on an already bound listener (a test that restarts an upstream on the same port).
    pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        Upstream::serve_on(Listen::Tcp(listener), handler)
    }

    /// Serves on a TCP, Unix socket or TLS listener. `addr` is the TCP listener's (for a Unix
    /// socket, 0.0.0.0:0: the test knows the socket's path). A connection counts as accepted
    /// before its TLS handshake, and as open until it closes.
    pub fn serve_on<F, Fut>(listen: Listen, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let addr = match &listen {
            Listen::Tcp(listener) | Listen::Tls(listener, _) => listener.local_addr().expect("addr"),
            Listen::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let connections = watch::Sender::new(Connections::default());
        let handler = Arc::new(handler);
        let counter = connections.clone();
        let serving = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = serving.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(stream) = listen.accept().await else {
                    continue;
                };
                counter.send_modify(|c| {
                    c.accepted += 1;
                    c.open += 1;
                });
                let open = OpenConnection(counter.clone());
                let handler = handler.clone();
                let acceptor = match &listen {
                    Listen::Tls(_, acceptor) => Some(acceptor.clone()),
                    _ => None,
                };
                let connection = tokio::spawn(async move {
                    let _open = open;
                    let stream: Box<dyn Io> = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => Box::new(tls),
                            Err(_) => return,
                        },
                        None => stream,
                    };
                    let service = service_fn(move |request| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                tasks.lock().expect("lock").push(connection.abort_handle());
            }
        });
        Upstream {
            addr,
            connections,
            task,
            serving,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.borrow().accepted
    }

    /// Waits until `n` TCP connections have been accepted in all.
    pub async fn wait_connections(&self, n: usize) {
        self.wait_connections_until(&format!("{n} connections at the upstream"), |c| c.accepted >= n)
            .await;
    }

    /// Waits until at most `n` accepted connections are still open.
    pub async fn wait_open_connections(&self, n: usize) {
        self.wait_connections_until(&format!("at most {n} open connections at the upstream"), |c| {
            c.open <= n
        })
        .await;
    }

    async fn wait_connections_until(&self, what: &str, done: impl Fn(&Connections) -> bool) {
        let mut seen = self.connections.subscribe();
        let waited = tokio::time::timeout(super::TIMEOUT, seen.wait_for(|c| done(c))).await;
        if waited.is_err() {
            panic!(
                "timed out after {:?} waiting for {what}; saw {:?}",
                super::TIMEOUT,
                *self.connections.borrow()
            );
        }
    }

    /// Dies: stops accepting and drops every open connection.
    pub fn stop(&self) {
        self.task.abort();
        for connection in self.serving.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on: bound, then closed.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// A request an [`SseApp`] received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    /// HTTP/1.1, or HTTP/2 (over TLS, as ALPN chose).
    pub version: http::Version,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct AppState {
    streams: std::sync::Mutex<Vec<mpsc::UnboundedSender<Frame<Bytes>>>>,
    seen: std::sync::Mutex<Vec<Seen>>,
    answer: std::sync::Mutex<Option<(http::StatusCode, &'static str, String)>>,
    headers: std::sync::Mutex<Vec<(String, String)>>,
    /// End each stream right after its head, as a one-shot endpoint does.
    one_shot: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

/// A naive SSE app the test scripts: every request opens a stream the test writes to with
/// [`SseApp::send`] and ends with [`SseApp::close_streams`]; or gets a fixed answer.
pub struct SseApp {
    pub upstream: Upstream,
    state: Arc<AppState>,
}

impl SseApp {
    pub async fn start() -> SseApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        SseApp::serve(listener)
    }

    /// Serves on `listener`: a test that starts the app late binds the port first.
    pub fn serve(listener: TcpListener) -> SseApp {
        SseApp::serve_on(Listen::Tcp(listener))
    }

    /// Serves on a TCP, Unix socket or TLS listener.
    pub fn serve_on(listen: Listen) -> SseApp {
        let state = Arc::new(AppState::default());
        let shared = state.clone();
        let upstream = Upstream::serve_on(listen, move |request: Request<Incoming>| {
            let state = shared.clone();
            async move {
                let seen = Seen {
                    uri: request.uri().clone(),
                    headers: request.headers().clone(),
                    version: request.version(),
                };
                state.seen.lock().expect("lock").push(seen);
                let answer = state.answer.lock().expect("lock").clone();
                let response = match answer {
                    Some((status, content_type, body)) => Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(full(body))
                        .expect("response"),
                    None => {
                        let (tx, body) = channel_body();
                        if !state.one_shot.load(std::sync::atomic::Ordering::SeqCst) {
                            state.streams.lock().expect("lock").push(tx);
                        }
                        let mut response = Response::builder()
                            .header("content-type", "text/event-stream")
                            .header("cache-control", "no-cache");
                        for (name, value) in state.headers.lock().expect("lock").iter() {
                            response = response.header(name.as_str(), value.as_str());
                        }
                        response.body(body).expect("response")
                    }
                };
                state.changed.notify_waiters();
                response
            }
        });
        SseApp { upstream, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.upstream.addr
    }

    /// Writes `raw` to every open stream; returns how many got it.
    pub fn send(&self, raw: &str) -> usize {
        let mut streams = self.state.streams.lock().expect("lock");
        streams.retain(|tx| {
            tx.send(Frame::data(Bytes::copy_from_slice(raw.as_bytes())))
                .is_ok()
        });
        streams.len()
    }

    /// Ends every open stream cleanly, as an app worker timing out would.
    pub fn close_streams(&self) {
        self.state.streams.lock().expect("lock").clear();
    }

    /// Streams whose reader is still there.
    pub fn open_streams(&self) -> usize {
        let mut streams = self.state.streams.lock().expect("lock");
        streams.retain(|tx| !tx.is_closed());
        streams.len()
    }

    /// Waits until at most `n` streams are still being read.
    pub async fn wait_open_streams(&self, n: usize) {
        super::within(&format!("at most {n} open upstream streams"), async {
            loop {
                let senders = {
                    let mut streams = self.state.streams.lock().expect("lock");
                    streams.retain(|tx| !tx.is_closed());
                    if streams.len() <= n {
                        return;
                    }
                    streams.clone()
                };
                let mut closing = tokio::task::JoinSet::new();
                for tx in senders {
                    closing.spawn(async move { tx.closed().await });
                }
                closing.join_next().await;
            }
        })
        .await;
    }

    /// From now on, answer every request with this instead of a stream.
    pub fn answer_with(&self, status: http::StatusCode, content_type: &'static str, body: &str) {
        *self.state.answer.lock().expect("lock") = Some((status, content_type, body.to_owned()));
    }

    /// From now on, give event-stream responses these headers too.
    pub fn set_headers(&self, headers: &[(&str, &str)]) {
        *self.state.headers.lock().expect("lock") = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// From now on, answer with streams again (open ones, if [`SseApp::end_streams_at_once`]).
    pub fn stream_again(&self) {
        *self.state.answer.lock().expect("lock") = None;
        self.state
            .one_shot
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on, end every stream right after its head, before any event.
    pub fn end_streams_at_once(&self) {
        self.state
            .one_shot
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize) -> Vec<Seen> {
        super::within(
            &format!("{n} upstream requests"),
            self.requests_when(|seen| seen.len() >= n),
        )
        .await
    }

    /// Every request received, as soon as they match `done` (unbounded: the caller bounds it).
    async fn requests_when(&self, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let seen = self.requests();
            if done(&seen) {
                return seen;
            }
            changed.await;
        }
    }

    /// Watches the app for `window` and fails the test, naming `what`, as soon as the requests
    /// it has received match `unwanted`. How a test says something never reaches the app:
    /// absence has no event to await, so the window is the claim.
    pub async fn never_sees(
        &self,
        window: std::time::Duration,
        what: &str,
        unwanted: impl Fn(&[Seen]) -> bool,
    ) {
        if let Ok(seen) = tokio::time::timeout(window, self.requests_when(unwanted)).await {
            let uris: Vec<String> = seen.iter().map(|r| r.uri.to_string()).collect();
            panic!("{what}; the app received {uris:?}");
        }
    }

    /// Watches the app for `window` and fails the test if it receives more than `n` requests.
    pub async fn stays_at_requests(&self, n: usize, window: std::time::Duration) {
        self.never_sees(
            window,
            &format!("more than {n} requests reached the app"),
            |seen| seen.len() > n,
        )
        .await;
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.upstream.connections()
    }
}

/// A request as a [`RawUpstream`] read it off the wire.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// Every value of header `name`.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A keep-alive HTTP/1.1 app written from the RFC, not from hyper: it answers each request at
/// once with a short 200, then honours `Content-Length` as the framing of what follows, as
/// servers do. A proxy that announces a body it does not send makes it read the next request
/// on the connection as that body.
pub struct RawUpstream {
    pub addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<RawRequest>>>,
    changed: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (record, notify) = (seen.clone(), changed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (record, notify) = (record.clone(), notify.clone());
                tokio::spawn(async move {
                    let mut buf: Vec<u8> = Vec::new();
                    loop {
                        // One head, parsed as soon as it is complete.
                        let (request, len) = loop {
                            let mut headers = [httparse::EMPTY_HEADER; 64];
                            let mut head = httparse::Request::new(&mut headers);
                            if let Ok(httparse::Status::Complete(len)) = head.parse(&buf) {
                                let request = RawRequest {
                                    method: head.method.unwrap_or("").to_owned(),
                                    target: head.path.unwrap_or("").to_owned(),
                                    headers: head
                                        .headers
                                        .iter()
                                        .map(|h| {
                                            (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned())
                                        })
                                        .collect(),
                                    body: Vec::new(),
                                };
                                break (request, len);
                            }
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        buf.drain(..len);
                        let response =
                            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(response).await.is_err() {
                            return;
                        }
                        let length: usize = request
                            .header_values("content-length")
                            .first()
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < length {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let mut request = request;
                        request.body = buf.drain(..length.min(buf.len())).collect();
                        record.lock().expect("lock").push(request);
                        notify.notify_waiters();
                    }
                });
            }
        });
        RawUpstream {
            addr,
            seen,
            changed,
            task,
        }
    }

    /// Every request read so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits for a request with this method and target; returns it.
    pub async fn wait_for(&self, method: &str, target: &str) -> RawRequest {
        super::within(&format!("{method} {target} at the upstream"), async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(found) = self
                    .requests()
                    .into_iter()
                    .find(|r| r.method == method && r.target == target)
                {
                    return found;
                }
                changed.await;
            }
        })
        .await
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
