//! Faithful pass-through: a request goes to the route's upstream and the response comes back,
//! bodies streamed both ways frame by frame, only hop-by-hop headers changed.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::headers::{add_forwarded, strip_hop_by_hop};
use crate::config::Upstream;

/// A request body bound upstream: the client's streamed body, or nothing (SSE subscriptions).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// Boxed error with the standard bounds.
pub type BoxError = Box<dyn StdError + Send + Sync>;

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
    /// The connection broke, or the upstream answered something that is not HTTP: 502.
    #[error("upstream failed: {}", chain(.0.as_ref()))]
    Failed(BoxError),
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
    pub fn prepare<B>(&self, request: Request<B>, client: SocketAddr) -> Request<B> {
        let (mut parts, body) = request.into_parts();
        // An HTTP/2 client names the host in :authority, not in a Host header.
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // The request line was valid, and so is the base URL: the join is a valid URI.
        if let Ok(uri) = self.upstream.uri_for(path_and_query) {
            parts.uri = uri;
        }
        strip_hop_by_hop(&mut parts.headers);
        add_forwarded(&mut parts.headers, client.ip(), "http", host.clone());
        if let Some(host) = host {
            parts.headers.insert(header::HOST, host);
        }
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
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
