//! The HTTP service: routes each request, then either passes it through to the upstream or
//! subscribes it to a shared SSE stream.

mod body;
mod forward;
mod headers;
mod route;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;

pub use body::ProxyBody;
pub use forward::{chain, BoxError, UpstreamBody, UpstreamClient, UpstreamError};
pub use headers::{add_forwarded, strip_hop_by_hop};
pub use route::Router;

use crate::config::{Config, Route, SseMode};

/// One route, ready to serve: its settings and its upstream client.
#[derive(Debug)]
pub struct RouteEntry {
    /// The route's validated config.
    pub config: Route,
    /// The pooled client to its upstream.
    pub client: UpstreamClient,
}

/// The service behind every connection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    router: Router<RouteEntry>,
}

impl Proxy {
    /// A proxy for the routes of `config`.
    pub fn new(config: &Config) -> Self {
        let routes = config.routes.iter().map(|route| {
            let entry = RouteEntry {
                client: UpstreamClient::new(route.upstream.clone(), route.settings.upstream_connect_timeout),
                config: route.clone(),
            };
            (route.path.clone(), Arc::new(entry))
        });
        Proxy {
            inner: Arc::new(Inner {
                router: Router::new(routes),
            }),
        }
    }

    /// Serves one request from the client at `remote`.
    pub async fn handle(&self, request: Request<Incoming>, remote: SocketAddr) -> Response<ProxyBody> {
        let Some(route) = self.inner.router.find(request.uri().path()).cloned() else {
            return error_response(StatusCode::NOT_FOUND, "ssegate: no route for this path\n");
        };
        if request.method() == Method::CONNECT {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "ssegate: CONNECT is not proxied\n",
            );
        }
        let _subscription = is_subscription(route.config.sse, &request);
        self.pass_through(&route, request, remote).await
    }

    async fn pass_through(
        &self,
        route: &RouteEntry,
        request: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<ProxyBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let request = route.client.prepare(request.map(Either::Left), remote);
        match route.client.send(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, ProxyBody::upstream(body))
            }
            Err(error) => {
                let status = match error {
                    UpstreamError::ConnectTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    UpstreamError::Unreachable(_) | UpstreamError::Failed(_) => StatusCode::BAD_GATEWAY,
                };
                tracing::warn!(
                    route = %route.config.path,
                    upstream = %route.client.upstream(),
                    %method,
                    %path,
                    fault = "upstream",
                    status = status.as_u16(),
                    "{error}"
                );
                let body = match status {
                    StatusCode::GATEWAY_TIMEOUT => "ssegate: the upstream did not answer in time\n",
                    _ => "ssegate: the upstream could not be reached\n",
                };
                error_response(status, body)
            }
        }
    }
}

/// Whether a request is an SSE subscription under the route's `sse` setting.
pub fn is_subscription<B>(mode: SseMode, request: &Request<B>) -> bool {
    if request.method() != Method::GET {
        return false;
    }
    match mode {
        SseMode::Never => false,
        SseMode::Always => true,
        SseMode::Auto => request
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|media| {
                media
                    .split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            }),
    }
}

/// A short plain-text response from ssegate itself.
pub fn error_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
