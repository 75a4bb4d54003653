//! The way to an app: a pooled client per route (HTTP/1.1 over TCP or a Unix socket, HTTP/2 or
//! HTTP/1.1 over TLS), a lean exchange of its own for each SSE stream ([`stream`]), the
//! rewriting of a client request into an upstream request, and the errors an upstream exchange
//! can end in.

pub(crate) mod backoff;
mod connect;
mod forwarded;
pub(crate) mod headers;
mod http2;
pub(crate) mod stream;
pub(crate) mod tls;

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Empty, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Transport, Upstream, UpstreamTls};
use crate::error::chain;
use crate::error::ProxyError;
use connect::Connector;
use headers::{add_forwarded, drop_confusable, strip_hop_by_hop, Forwarding};
use http2::{Http2, Http2Error, Sent};

/// A request body bound upstream: the client's streamed body (bounded by `max_request_body`),
/// or nothing (SSE subscriptions).
pub(crate) type UpstreamBody = Either<ClientBody, Empty<Bytes>>;

pin_project_lite::pin_project! {
    /// A client's request body on its way upstream, bounded by `max_request_body`. Its errors
    /// are marked as the client's ([`ClientBodyError`]): a body the client cut short or framed
    /// badly is its fault, not the upstream's.
    pub struct ClientBody {
        #[pin]
        body: Limited<Incoming>,
        // Its error, once it failed. Over HTTP/1.1 the exchange fails with it; over HTTP/2 with
        // the stream reset hyper sends then, which does not carry it (see `UpstreamClient::send`).
        failed: Arc<OnceLock<SharedError>>,
    }
}

impl ClientBody {
    /// `body`, cut off past `limit` bytes.
    pub fn new(body: Incoming, limit: usize) -> ClientBody {
        ClientBody {
            body: Limited::new(body, limit),
            failed: Arc::default(),
        }
    }
}

/// An error told to more than one party (a failed connect to every request waiting for it; a
/// client's body error to hyper and to the exchange): it reads as the error itself, which is
/// its source, so the causes in its chain are found as in any other.
#[derive(Debug, Clone)]
pub(crate) struct SharedError(Arc<dyn StdError + Send + Sync>);

impl From<BoxError> for SharedError {
    fn from(error: BoxError) -> SharedError {
        SharedError(Arc::from(error))
    }
}

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for SharedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Reading the client's request body failed: malformed framing, a connection cut short, or
/// more bytes than `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body failed")]
pub(crate) struct ClientBodyError(#[source] pub BoxError);

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        this.body.poll_frame(cx).map_err(|error| {
            let error = SharedError::from(error);
            let _ = this.failed.set(error.clone());
            Box::new(ClientBodyError(Box::new(error))) as BoxError
        })
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Boxed error with the standard bounds.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// A pooled client for one route's upstream.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    /// HTTP/1.1, pooled (over TLS it offers only http/1.1).
    client: Client<Connector, UpstreamBody>,
    /// The pool's connector, for SSE streams' connections of their own (see [`stream`]).
    http1: Connector,
    /// For an `https://` upstream, the one HTTP/2 connection plain requests share when the app
    /// chooses HTTP/2 (see [`UpstreamClient::send`]).
    http2: Option<Arc<Http2>>,
    upstream: Upstream,
    connect_timeout: Duration,
}

/// Why an upstream exchange failed, as the client will be told.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connect did not finish in time: 504.
    #[error("connect to upstream timed out after {}", crate::config::format_duration(*.0))]
    ConnectTimeout(Duration),
    /// The upstream refused the connection or could not be reached: 502.
    #[error("upstream unreachable: {}", chain(.0.as_ref()))]
    Unreachable(BoxError),
    /// The TLS handshake with the upstream failed (its certificate did not pass a check, or
    /// it does not speak TLS): 502.
    #[error("upstream TLS handshake failed: {}", chain(.0.as_ref()))]
    Handshake(BoxError),
    /// The upstream accepted the connection but sent no response head in time: 504.
    #[error("upstream sent no response head within {}", crate::config::format_duration(*.0))]
    ResponseTimeout(Duration),
    /// The connection broke, or the upstream answered something that is not HTTP: 502.
    #[error("upstream failed: {}", chain(.0.as_ref()))]
    Failed(BoxError),
}

impl UpstreamError {
    /// Whether the exchange failed because the client's request body went over its limit.
    pub fn is_body_too_large(&self) -> bool {
        self.caused_by::<LengthLimitError>()
    }

    /// Whether the exchange failed because of the client's request body (cut short, badly
    /// framed, too large): the client's fault.
    pub fn is_client_body(&self) -> bool {
        self.caused_by::<ClientBodyError>()
    }

    fn caused_by<E: StdError + 'static>(&self) -> bool {
        let UpstreamError::Failed(error) = self else {
            return false;
        };
        caused_by::<E>(error.as_ref())
    }
}

impl From<UpstreamError> for ProxyError {
    /// Sorts a failed exchange by its cause: the client's request body (over its limit, or
    /// unreadable), or the upstream (too slow: 504, else 502).
    fn from(error: UpstreamError) -> Self {
        if error.is_body_too_large() {
            ProxyError::BodyTooLarge
        } else if error.is_client_body() {
            ProxyError::ClientBody(Box::new(error))
        } else {
            let timed_out = matches!(
                error,
                UpstreamError::ConnectTimeout(_) | UpstreamError::ResponseTimeout(_)
            );
            ProxyError::Upstream {
                timed_out,
                source: Box::new(error),
            }
        }
    }
}

impl UpstreamClient {
    /// A client for `upstream` (trusted per `tls` when it is `https://`) with the given connect
    /// timeout (for TLS, the handshake included).
    pub fn new(upstream: Upstream, tls: Option<&UpstreamTls>, connect_timeout: Duration) -> Self {
        let pooled = |connector: Connector| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(TokioTimer::new())
                .build(connector)
        };
        let base = upstream.uri_for("/").unwrap_or_default();
        let (http1, http2) = match (upstream.transport(), tls) {
            (Transport::Https(_), Some(tls)) => {
                let connector = |alpn| {
                    let config = tls::client_config(tls, alpn);
                    Connector::tls(base.clone(), config, tls.server_name.clone(), connect_timeout)
                };
                (
                    connector(tls::ALPN_H1),
                    Some(Arc::new(Http2::new(connector(tls::ALPN_H2_AND_H1)))),
                )
            }
            // The config gives every `https://` upstream its TLS settings; without them it
            // is not spoken to at all, rather than in plain text.
            (Transport::Https(_), None) => (
                Connector::unusable("an https:// upstream without its TLS settings"),
                None,
            ),
            (Transport::Unix(path), _) => (Connector::unix(path, connect_timeout), None),
            (Transport::Http(_), _) => (Connector::tcp(base, connect_timeout), None),
        };
        UpstreamClient {
            client: pooled(http1.clone()),
            http1,
            http2,
            upstream,
            connect_timeout,
        }
    }

    /// The upstream base URL.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Sends `request` (already addressed by [`UpstreamClient::prepare`]) and returns the
    /// response head with its streaming body. To an `https://` app that chooses HTTP/2, on the
    /// route's one HTTP/2 connection; else, and for a request that asks for an upgrade (HTTP/2
    /// has none, RFC 9113 §8.2.2), on a pooled HTTP/1.1 connection.
    pub async fn send(&self, request: Request<UpstreamBody>) -> Result<Response<Incoming>, UpstreamError> {
        let http2 = self
            .http2
            .as_ref()
            .filter(|_| !request.headers().contains_key(header::UPGRADE));
        let request = match http2 {
            Some(http2) => {
                let body_failed = match request.body() {
                    Either::Left(body) => Some(body.failed.clone()),
                    Either::Right(_) => None,
                };
                match http2.send(request).await {
                    Ok(Sent::Response(response)) => return Ok(response),
                    Ok(Sent::Http1(request)) => request,
                    Err(Http2Error::Connect(error)) => {
                        return Err(connect_error(self.connect_timeout, error))
                    }
                    // The client's body failed first (cut short, over its limit): its fault.
                    Err(Http2Error::Send(error)) => {
                        let cause = body_failed.as_ref().and_then(|failed| failed.get());
                        return Err(UpstreamError::Failed(match cause {
                            Some(cause) => Box::new(ClientBodyError(Box::new(cause.clone()))),
                            None => Box::new(error),
                        }));
                    }
                }
            }
            None => request,
        };
        self.send_http1(request).await
    }

    async fn send_http1(&self, request: Request<UpstreamBody>) -> Result<Response<Incoming>, UpstreamError> {
        self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                connect_error(self.connect_timeout, Box::new(e))
            } else {
                UpstreamError::Failed(Box::new(e))
            }
        })
    }

    /// Rewrites a client request into the upstream request (see [`UpstreamClient::head`]),
    /// sent as HTTP/1.1 whatever the client spoke, or as HTTP/2 on a connection to an
    /// `https://` app that chose it: the connection decides, whatever the request's version.
    pub(crate) fn prepare<B>(&self, request: Request<B>, from: Forwarding<'_>) -> Request<B> {
        let (mut parts, body) = request.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let head = self.head(
            &parts.uri,
            std::mem::take(&mut parts.headers),
            &path_and_query,
            from,
        );
        parts.uri = head.uri;
        parts.headers = head.headers;
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }

    /// The head of every request ssegate sends this upstream (a pass-through, a stream's
    /// template): `path_and_query` on the upstream's URL, and `headers` (those of a client's
    /// request for `uri`) with hop-by-hop and confusable headers removed, `X-Forwarded-*` (and
    /// the route's `client_headers`) added and the client's Host kept.
    pub(crate) fn head(
        &self,
        uri: &Uri,
        mut headers: HeaderMap,
        path_and_query: &str,
        from: Forwarding<'_>,
    ) -> UpstreamHead {
        // An HTTP/2 client names the host in :authority, not in a Host header.
        let host = headers.get(header::HOST).cloned().or_else(|| {
            let authority = uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        strip_hop_by_hop(&mut headers);
        drop_confusable(&mut headers);
        add_forwarded(&mut headers, from, host.clone());
        if let Some(host) = host {
            headers.insert(header::HOST, host);
        }
        // The request line was valid, and so is the base URL: the join is a valid URI. Should it
        // not be, the base URL alone still reaches the right upstream.
        let uri = self
            .upstream
            .uri_for(path_and_query)
            .unwrap_or_else(|_| self.upstream.uri_for("/").unwrap_or_default());
        UpstreamHead { uri, headers }
    }
}

/// A request head ready for the upstream, as [`UpstreamClient::head`] builds it.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamHead {
    /// The upstream URL.
    pub(crate) uri: Uri,
    /// The headers to send.
    pub(crate) headers: HeaderMap,
}

/// A connection that could not be made (the connector's error; it took at most `timeout`):
/// the connect timeout, a failed TLS handshake, or an app that cannot be reached.
fn connect_error(timeout: Duration, error: BoxError) -> UpstreamError {
    if is_timeout(error.as_ref()) {
        UpstreamError::ConnectTimeout(timeout)
    } else if caused_by::<tls::HandshakeError>(error.as_ref()) {
        UpstreamError::Handshake(error)
    } else {
        UpstreamError::Unreachable(error)
    }
}

/// Whether an error of type `E` is somewhere in `error`'s chain.
fn caused_by<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether a connect error was the connect timeout: somewhere in its chain is an I/O error of
/// kind `TimedOut` (the connector's own timeout, or the kernel's).
fn is_timeout(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientHeaders;
    use crate::error::Fault;
    use crate::peer::Peer;
    use http_body_util::{BodyExt, Full};

    #[test]
    fn one_head_for_every_upstream_request() {
        let upstream = Upstream::parse("http://127.0.0.1:3000/base/").expect("upstream");
        let client = UpstreamClient::new(upstream, None, Duration::from_secs(1));
        let peer = Peer {
            addr: "192.0.2.7:5000".parse().expect("addr"),
            secure: true,
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("x_forwarded_for", HeaderValue::from_static("spoof"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
        // An HTTP/2 client: the host is in the URI, not in a Host header.
        let uri: Uri = "https://app.test/events?x=1".parse().expect("uri");
        let from = Forwarding {
            peer,
            trusted: &[],
            send: ClientHeaders::default(),
        };
        let head = client.head(&uri, headers, "/events?x=1", from);
        assert_eq!(head.uri, "http://127.0.0.1:3000/base/events?x=1");
        assert_eq!(head.headers[header::HOST], "app.test");
        assert_eq!(head.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(head.headers["x-forwarded-proto"], "https");
        assert_eq!(head.headers["x-forwarded-host"], "app.test");
        assert_eq!(head.headers[header::ACCEPT], "text/event-stream");
        for gone in ["connection", "x-hop", "x_forwarded_for"] {
            assert!(!head.headers.contains_key(gone), "{gone}");
        }

        // A stream's request is this head, as `stream::request_head` writes it.
        let request = String::from_utf8(stream::request_head(&head.uri, &head.headers, Some("e-41")))
            .expect("ascii head");
        assert!(
            request.starts_with("GET /base/events?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.ends_with("last-event-id: e-41\r\n\r\n"), "{request}");
    }

    #[tokio::test]
    async fn a_failed_exchange_is_the_upstreams_fault_unless_the_clients_body_caused_it() {
        let status = |error: UpstreamError| {
            let error = ProxyError::from(error);
            (error.status().as_u16(), error.fault())
        };
        let timeout = UpstreamError::ConnectTimeout(Duration::from_secs(5));
        assert_eq!(status(timeout), (504, Fault::Upstream));
        let timeout = UpstreamError::ResponseTimeout(Duration::from_secs(5));
        assert_eq!(status(timeout), (504, Fault::Upstream));
        let refused = UpstreamError::Unreachable("connection refused".into());
        assert_eq!(status(refused), (502, Fault::Upstream));
        let cut = UpstreamError::Failed(Box::new(ClientBodyError("cut short".into())));
        assert_eq!(status(cut), (400, Fault::Client));
        let over = Limited::new(Full::new(Bytes::from_static(b"too long")), 1)
            .collect()
            .await
            .expect_err("over the limit");
        let over = UpstreamError::Failed(Box::new(ClientBodyError(over)));
        assert_eq!(status(over), (413, Fault::Client));
    }

    /// An app over TLS offering h2 and http/1.1, answering each request with its HTTP version.
    async fn versions_app() -> (std::net::SocketAddr, UpstreamTls) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let der: CertificateDer<'static> = made.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![der.clone()], key)
                .expect("certificate and key");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                        let version = format!("{:?}", request.version());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(version))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let tls = UpstreamTls {
            ca: Some(crate::config::CaFile {
                path: "test".into(),
                certs: vec![der],
            }),
            server_name: ServerName::try_from("localhost").expect("name"),
            named: true,
        };
        (addr, tls)
    }

    #[tokio::test]
    async fn an_upgrade_goes_on_http1_to_an_app_that_speaks_http2() {
        let (addr, tls) = versions_app().await;
        let upstream = Upstream::parse(&format!("https://localhost:{}", addr.port())).expect("upstream");
        let client = UpstreamClient::new(upstream, Some(&tls), Duration::from_secs(5));
        let ask = |upgrade: bool| {
            let mut request = Request::new(Either::Right(Empty::new()));
            *request.uri_mut() = client.upstream().uri_for("/").expect("uri");
            if upgrade {
                request
                    .headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            request
        };
        for (upgrade, version) in [(false, "HTTP/2.0"), (true, "HTTP/1.1"), (false, "HTTP/2.0")] {
            let response = client.send(ask(upgrade)).await.expect("answer");
            let body = response.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(String::from_utf8_lossy(&body), version, "upgrade: {upgrade}");
        }
        // Streams go on HTTP/1.1 too, on a connection of their own.
        let uri = client.upstream().uri_for("/").expect("uri");
        let head = stream::request_head(&uri, &HeaderMap::new(), None);
        let response = client.send_stream(head).await.expect("answer");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(String::from_utf8_lossy(&body), "HTTP/1.1");
    }
}
