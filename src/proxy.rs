//! The HTTP service: routes each request, then either passes it through to the upstream or
//! subscribes it to an SSE stream of the hub.

mod body;

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;

pub use body::{AccessLog, ProxyBody};

use crate::config::{Config, SseMode, StreamMode};
use crate::hub::key::{last_event_id, query_without_last_event_id, stream_key};
use crate::hub::stream::Template;
use crate::hub::{Hub, Outcome, SubscriberBody};
use crate::metrics::Metrics;
use crate::route::{RouteEntry, Router};
use crate::server::InFlight;
use crate::upstream::headers::strip_hop_by_hop;
use crate::upstream::{Peer, UpstreamBody, UpstreamError};

/// A request body ssegate can send upstream: the client's streamed body (bounded by the
/// route's `max_request_body`), or none (a request head read by the server's lean path).
pub trait RequestBody: Send + 'static {
    /// The body as sent upstream, cut off at `limit` bytes.
    fn upstream(self, limit: usize) -> UpstreamBody;
    /// The smallest size the body can have.
    fn declared_len(&self) -> u64;
}

impl RequestBody for Incoming {
    fn upstream(self, limit: usize) -> UpstreamBody {
        Either::Left(Limited::new(self, limit))
    }
    fn declared_len(&self) -> u64 {
        self.size_hint().lower()
    }
}

impl RequestBody for () {
    fn upstream(self, _limit: usize) -> UpstreamBody {
        Either::Right(Empty::new())
    }
    fn declared_len(&self) -> u64 {
        0
    }
}

/// The service behind every connection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The routes in force; a reload swaps the whole router at once.
    router: RwLock<Arc<Router<RouteEntry>>>,
    hub: Hub,
    metrics: Arc<Metrics>,
}

impl Proxy {
    /// A proxy for the routes of `config`, serving subscriptions from `hub`.
    pub fn new(config: &Config, hub: Hub, metrics: Arc<Metrics>) -> Self {
        let router = RouteEntry::router(config, &metrics, None);
        Proxy {
            inner: Arc::new(Inner {
                router: RwLock::new(Arc::new(router)),
                hub,
                metrics,
            }),
        }
    }

    /// The routes in force.
    pub fn router(&self) -> Arc<Router<RouteEntry>> {
        self.inner
            .router
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swaps in the routes of a reloaded `config`. Requests in flight finish on the routes they
    /// started with; live streams go on under their route's new version (or end cleanly if
    /// their route is gone), keeping their buffers and clients.
    pub fn reload(&self, config: &Config) {
        let previous = self.router();
        let router = Arc::new(RouteEntry::router(config, &self.inner.metrics, Some(&previous)));
        *self.inner.router.write().unwrap_or_else(PoisonError::into_inner) = router.clone();
        self.inner
            .hub
            .reconfigure(&router, config.buffer_total_bytes, config.max_streams);
    }

    /// Whether `request` (a head, with no body) would be an SSE subscription: the server serves
    /// those on its lean path.
    pub fn is_subscription_head<B>(&self, request: &Request<B>) -> bool {
        self.router()
            .find(request.uri().path())
            .is_some_and(|route| is_subscription(route.config.sse, request))
    }

    /// Serves one request from the client at `remote`; `in_flight` keeps it counted on its
    /// connection until the response ends.
    pub async fn handle<B: RequestBody>(
        &self,
        request: Request<B>,
        remote: SocketAddr,
        in_flight: InFlight,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let peer = Peer {
            addr: remote,
            secure: in_flight.secure(),
        };
        let route = self.router().find(request.uri().path()).cloned();
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let log = |status, route: Option<&RouteEntry>| AccessLog {
            method: method.clone(),
            path: path.clone(),
            status,
            upstream: route.map_or_else(|| "-".to_owned(), |r| r.client.upstream().to_string()),
            started,
            bytes: 0,
            metrics: route.map(|r| r.metrics.clone()),
            admission: None,
        };
        let Some(route) = route else {
            let response = error_response(StatusCode::NOT_FOUND, "ssegate: no route for this path\n");
            let log = log(response.status(), None);
            return finish(response, log, in_flight);
        };
        if request.method() == Method::CONNECT {
            let response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "ssegate: CONNECT is not proxied\n",
            );
            let log = log(response.status(), Some(&route));
            return finish(response, log, in_flight);
        }
        let Some(admission) = route.admit() else {
            tracing::warn!(route = %route.config.path, "max_clients reached; answering 503");
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ssegate: too many clients on this route\n",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            let log = log(response.status(), Some(&route));
            return finish(response, log, in_flight);
        };
        if is_subscription(route.config.sse, &request) {
            return match self.subscribe(&route, request, peer, admission).await {
                Ok(response) => response.map(|body| body.hold(in_flight)),
                Err((response, admission)) => {
                    let mut log = log(response.status(), Some(&route));
                    log.admission = admission;
                    finish(response, log, in_flight)
                }
            };
        }
        let mut entry = log(StatusCode::OK, Some(&route));
        let response = pass_through(&route, request, peer).await;
        entry.status = response.status();
        entry.admission = Some(admission);
        finish(response, entry, in_flight)
    }

    /// An SSE subscription: joins (or opens) the stream for its key and answers 200 with a
    /// subscriber body. Not a subscription after all (the upstream's definitive answer, or the
    /// request passed through): `Err`, to be logged as a plain request.
    async fn subscribe<B: RequestBody>(
        &self,
        route: &Arc<RouteEntry>,
        request: Request<B>,
        remote: Peer,
        admission: crate::route::Admission,
    ) -> Result<Response<ProxyBody>, (Response<ProxyBody>, Option<crate::route::Admission>)> {
        let hub = &self.inner.hub;
        if hub.is_shutting_down() {
            let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "ssegate: shutting down\n");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err((response, Some(admission)));
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
        let Some(pending) = hub.join(route, key, || {
            upstream_template(route, &request, remote, shared, resume_from.as_deref())
        }) else {
            route.metrics.refused.inc();
            tracing::warn!(route = %route.config.path, "max_streams reached; a subscription that needs a new stream gets 503");
            let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "ssegate: too many streams\n");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err((response, Some(admission)));
        };
        match pending.outcome(settings.upstream_connect_timeout).await {
            Outcome::Subscribe(pending) => Ok(sse_response(
                pending.attach(resume_from.as_deref(), Some(admission)),
            )),
            Outcome::Answer(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Err((
                    Response::from_parts(parts, ProxyBody::upstream(body)),
                    Some(admission),
                ))
            }
            Outcome::AskUpstream => Err((pass_through(route, request, remote).await, Some(admission))),
        }
    }
}

/// Attaches the access log and the connection's in-flight mark to a response.
fn finish(response: Response<ProxyBody>, log: AccessLog, in_flight: InFlight) -> Response<ProxyBody> {
    response.map(|body| body.log(log).hold(in_flight))
}

/// The request a stream sends upstream: the opening subscription's, minus its resume point in
/// shared mode (the stream's own resume point is added on reconnect). In per-client mode the
/// client's Last-Event-ID goes to the app, as a header even when it came in the query.
fn upstream_template<B>(
    route: &RouteEntry,
    request: &Request<B>,
    remote: Peer,
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
async fn pass_through<B: RequestBody>(
    route: &RouteEntry,
    request: Request<B>,
    remote: Peer,
) -> Response<ProxyBody> {
    let settings = &route.config.settings;
    let max_body = settings.max_request_body;
    if request.body().declared_len() > max_body {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, "ssegate: request body too large\n");
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // A body without a declared length is counted as it streams; past the limit the upstream
    // request fails and the client gets 413.
    let limited = usize::try_from(max_body).unwrap_or(usize::MAX);
    let request = route
        .client
        .prepare(request.map(|body| body.upstream(limited)), remote);
    let sent = route.client.send(request);
    let result = match settings.upstream_response_timeout {
        Some(limit) => tokio::time::timeout(limit, sent)
            .await
            .unwrap_or(Err(UpstreamError::ResponseTimeout(limit))),
        None => sent.await,
    };
    match result {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, ProxyBody::upstream(body))
        }
        Err(error) if error.is_body_too_large() => {
            tracing::info!(route = %route.config.path, %method, %path, fault = "client", "request body over max_request_body; answering 413");
            error_response(StatusCode::PAYLOAD_TOO_LARGE, "ssegate: request body too large\n")
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
