//! The HTTP service: routes each request, then either passes it through to the upstream or
//! subscribes it to an SSE stream of the hub.

mod body;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;

pub use body::ProxyBody;

use crate::config::{Config, SseMode, StreamMode};
use crate::hub::key::{last_event_id, query_without_last_event_id, stream_key};
use crate::hub::stream::Template;
use crate::hub::{Hub, Outcome, SubscriberBody};
use crate::route::{RouteEntry, Router};
use crate::upstream::headers::strip_hop_by_hop;
use crate::upstream::UpstreamError;

/// The service behind every connection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    router: Router<RouteEntry>,
    hub: Hub,
}

impl Proxy {
    /// A proxy for the routes of `config`, serving subscriptions from `hub`.
    pub fn new(config: &Config, hub: Hub) -> Self {
        Proxy {
            inner: Arc::new(Inner {
                router: RouteEntry::router(config),
                hub,
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
        if is_subscription(route.config.sse, &request) {
            return self.subscribe(&route, request, remote).await;
        }
        pass_through(&route, request, remote).await
    }

    /// An SSE subscription: joins (or opens) the stream for its key and answers 200 with a
    /// subscriber body, unless the upstream gave a definitive non-stream answer.
    async fn subscribe(
        &self,
        route: &Arc<RouteEntry>,
        request: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<ProxyBody> {
        let hub = &self.inner.hub;
        if hub.is_shutting_down() {
            let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "ssegate: shutting down\n");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        let settings = &route.config.settings;
        let resume_from = last_event_id(request.headers(), request.uri().query());
        let shared = settings.mode == StreamMode::Shared;
        let key = shared.then(|| {
            stream_key(
                &route.config.path,
                &settings.stream_key,
                request.uri(),
                request.headers(),
            )
        });
        let pending = hub.join(route, key, || {
            upstream_template(route, &request, remote, shared, resume_from.as_deref())
        });
        match pending.outcome(settings.upstream_connect_timeout).await {
            Outcome::Subscribe(pending) => {
                let (body, _) = pending.attach(resume_from.as_deref());
                sse_response(body)
            }
            Outcome::Answer(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, ProxyBody::upstream(body))
            }
            Outcome::AskUpstream => pass_through(route, request, remote).await,
        }
    }
}

/// The request a stream sends upstream: the opening subscription's, minus its resume point in
/// shared mode (the stream's own resume point is added on reconnect). In per-client mode the
/// client's Last-Event-ID goes to the app, as a header even when it came in the query.
fn upstream_template<B>(
    route: &RouteEntry,
    request: &Request<B>,
    remote: SocketAddr,
    shared: bool,
    resume_from: Option<&str>,
) -> Template {
    let uri = request.uri();
    let query = if shared {
        query_without_last_event_id(uri.query())
    } else {
        uri.query().map(str::to_owned)
    };
    let path_and_query = match query {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    };
    let mut headers = request.headers().clone();
    let upstream_uri = route.client.rewrite(uri, &mut headers, &path_and_query, remote);
    if shared {
        headers.remove("last-event-id");
    } else if let Some(value) = resume_from.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert("last-event-id", value);
    }
    Template {
        uri: upstream_uri,
        headers,
    }
}

/// Passes a request through to the route's upstream and streams the answer back.
async fn pass_through(
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
            let (status, body) = match error {
                UpstreamError::ConnectTimeout(_) | UpstreamError::ResponseTimeout(_) => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "ssegate: the upstream did not answer in time\n",
                ),
                UpstreamError::Unreachable(_) | UpstreamError::Failed(_) => (
                    StatusCode::BAD_GATEWAY,
                    "ssegate: the upstream could not be reached\n",
                ),
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
            error_response(status, body)
        }
    }
}

/// The 200 response of a subscription. Its headers keep every intermediary from buffering or
/// caching it; it has no Content-Length and is never compressed.
fn sse_response(body: SubscriberBody) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::sse(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
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
