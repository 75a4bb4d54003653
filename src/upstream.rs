//! The way to an app: a pooled HTTP/1.1 client per route, the rewriting of a client request into
//! an upstream request, and the errors an upstream exchange can end in.

pub mod headers;

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Empty, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Upstream;
use headers::{add_forwarded, drop_confusable, strip_hop_by_hop};

/// A request body bound upstream: the client's streamed body (bounded by `max_request_body`),
/// or nothing (SSE subscriptions).
pub type UpstreamBody = Either<ClientBody, Empty<Bytes>>;

pin_project_lite::pin_project! {
    /// A client's request body on its way upstream, bounded by `max_request_body`. Its errors
    /// are marked as the client's ([`ClientBodyError`]): a body the client cut short or framed
    /// badly is its fault, not the upstream's.
    pub struct ClientBody {
        #[pin]
        body: Limited<Incoming>,
    }
}

impl ClientBody {
    /// `body`, cut off past `limit` bytes.
    pub fn new(body: Incoming, limit: usize) -> ClientBody {
        ClientBody {
            body: Limited::new(body, limit),
        }
    }
}

/// Reading the client's request body failed: malformed framing, a connection cut short, or
/// more bytes than `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body failed")]
pub struct ClientBodyError(#[source] pub BoxError);

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.project()
            .body
            .poll_frame(cx)
            .map_err(|error| Box::new(ClientBodyError(error)) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Boxed error with the standard bounds.
pub type BoxError = Box<dyn StdError + Send + Sync>;

pub use crate::peer::Peer;

/// A pooled HTTP/1.1 client for one route's upstream.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpConnector, UpstreamBody>,
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
        let mut next: Option<&(dyn StdError + 'static)> = Some(error.as_ref());
        while let Some(e) = next {
            if e.is::<E>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

impl UpstreamClient {
    /// A client for `upstream` with the given TCP connect timeout.
    pub fn new(upstream: Upstream, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        UpstreamClient {
            client,
            upstream,
            connect_timeout,
        }
    }

    /// The upstream base URL.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Sends `request` (already addressed by [`UpstreamClient::prepare`]) and returns the
    /// response head with its streaming body.
    pub async fn send(&self, request: Request<UpstreamBody>) -> Result<Response<Incoming>, UpstreamError> {
        self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                if is_timeout(&e) {
                    UpstreamError::ConnectTimeout(self.connect_timeout)
                } else {
                    UpstreamError::Unreachable(Box::new(e))
                }
            } else {
                UpstreamError::Failed(Box::new(e))
            }
        })
    }

    /// Rewrites a client request into the upstream request: URL on the upstream, HTTP/1.1,
    /// hop-by-hop headers removed, `X-Forwarded-*` added, the client's Host kept.
    pub fn prepare<B>(&self, request: Request<B>, client: Peer) -> Request<B> {
        let (mut parts, body) = request.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        parts.uri = self.rewrite(&parts.uri, &mut parts.headers, &path_and_query, client);
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }

    /// The upstream URL for `path_and_query`, with `headers` (those of a request for `uri`)
    /// made ready for the upstream.
    pub fn rewrite(&self, uri: &Uri, headers: &mut HeaderMap, path_and_query: &str, client: Peer) -> Uri {
        // An HTTP/2 client names the host in :authority, not in a Host header.
        let host = headers.get(header::HOST).cloned().or_else(|| {
            let authority = uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        strip_hop_by_hop(headers);
        drop_confusable(headers);
        let proto = if client.secure { "https" } else { "http" };
        add_forwarded(headers, client.addr.ip(), proto, host.clone());
        if let Some(host) = host {
            headers.insert(header::HOST, host);
        }
        // The request line was valid, and so is the base URL: the join is a valid URI. Should it
        // not be, the base URL alone still reaches the right upstream.
        self.upstream
            .uri_for(path_and_query)
            .unwrap_or_else(|_| self.upstream.uri_for("/").unwrap_or_default())
    }
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

/// An error and its sources, joined by ": ", for one log line.
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}
