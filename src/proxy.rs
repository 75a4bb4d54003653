//! The HTTP service: routes each request, then either passes it through to the upstream or
//! subscribes it to an SSE stream of the hub.

mod body;
mod compress;
pub(crate) mod target;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::Poll;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

pub(crate) use body::{AccessLog, ProxyBody};

use crate::config::{Cidr, Config, SseMode, StreamMode};
use crate::error::{rescue, Context, ProxyError};
use crate::hub::budget::ClientId;
use crate::hub::key::{last_event_id, query_without_last_event_id, stream_key};
use crate::hub::stream::Template;
use crate::hub::{HeldBody, Hub, Joined, Outcome};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::route::{RouteEntry, Router};
use crate::upstream::headers::{client_address, is_event_stream, list_items, strip_hop_by_hop, Forwarding};
use crate::upstream::{ClientBody, UpstreamBody, UpstreamError, UpstreamHead};
use target::Target;

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
        Either::Left(ClientBody::new(self, limit))
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

/// The request body the proxy serves: hyper's streamed body, or none (a head the server's lean
/// path read). One type for both, so the server hands its service one kind of request.
#[derive(Debug, Default)]
pub(crate) struct IncomingBody(Option<Incoming>);

impl From<Incoming> for IncomingBody {
    fn from(body: Incoming) -> Self {
        IncomingBody(Some(body))
    }
}

impl RequestBody for IncomingBody {
    fn upstream(self, limit: usize) -> UpstreamBody {
        match self.0 {
            Some(body) => body.upstream(limit),
            None => ().upstream(limit),
        }
    }
    fn declared_len(&self) -> u64 {
        self.0.as_ref().map_or(0, RequestBody::declared_len)
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
    /// Peers whose `X-Forwarded-For` names the client.
    trusted_proxies: RwLock<Arc<[Cidr]>>,
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
                trusted_proxies: RwLock::new(config.trusted_proxies.clone().into()),
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
        for gone in previous.routes().filter(|r| router.get(&r.config.path).is_none()) {
            self.inner.metrics.forget_route(&gone.config.path);
        }
        *self.inner.router.write().unwrap_or_else(PoisonError::into_inner) = router.clone();
        *self
            .inner
            .trusted_proxies
            .write()
            .unwrap_or_else(PoisonError::into_inner) = config.trusted_proxies.clone().into();
        self.inner.hub.reconfigure(&router, config);
    }

    /// The peers trusted to name the client behind them.
    fn trusted_proxies(&self) -> Arc<[Cidr]> {
        self.inner
            .trusted_proxies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `request` (a head, with no body) would be an SSE subscription: the server serves
    /// those on its lean path. A request ssegate would refuse is not one: hyper serves it, and
    /// [`Proxy::handle`] refuses it there.
    pub fn is_subscription_head<B>(&self, request: &Request<B>) -> bool {
        let Ok(target) = Target::of(request) else {
            return false;
        };
        self.router().find(&target.merged).is_some_and(|route| {
            target.path_for(&route.config.settings).is_ok()
                && !announces_body(request)
                && is_subscription(route.config.sse, request)
        })
    }

    /// Serves one request. The client's address and whether it came over TLS are the
    /// request's `Peer` extension (the server inserts it).
    pub async fn handle<B: RequestBody>(&self, mut request: Request<B>) -> Response<ProxyBody> {
        let started = Instant::now();
        let peer = request.extensions().get::<Peer>().copied().unwrap_or_default();
        let remote = peer.addr;
        let method = request.method().clone();
        let log = |path: &str, status, route: Option<&RouteEntry>| AccessLog {
            method: method.clone(),
            path: path.to_owned(),
            status,
            upstream: route.map_or_else(|| "-".to_owned(), |r| r.client.upstream().to_string()),
            started,
            bytes: 0,
            metrics: route.map(|r| r.metrics.clone()),
            admission: None,
        };
        if request.method() == Method::CONNECT && upgrade::requested(&request).is_none() {
            let response = rescue(ProxyError::Connect, &asked(&request, remote));
            let log = log(request.uri().path(), response.status(), None);
            return finish(response, log);
        }
        // One path decides the route and reaches the upstream: normalised here, once.
        let target = match Target::of(&request) {
            Ok(target) => target,
            Err(why) => {
                let response = self.refuse(&request, remote, why);
                let log = log(request.uri().path(), response.status(), None);
                return finish(response, log);
            }
        };
        let Some(route) = self.router().find(&target.merged).cloned() else {
            let context = Context {
                path: Some(&target.path),
                // The path only: the query may hold a token.
                target: None,
                ..asked(&request, remote)
            };
            let response = rescue(ProxyError::NoRoute, &context);
            let log = log(&target.path, response.status(), None);
            return finish(response, log);
        };
        let applied = target
            .path_for(&route.config.settings)
            .and_then(|path| target.apply(&mut request, path));
        if let Err(why) = applied {
            let response = self.refuse(&request, remote, why);
            let log = log(&target.path, response.status(), Some(&route));
            return finish(response, log);
        }
        let path = request.uri().path().to_owned();
        let Some(admission) = route.admit() else {
            let response = rescue(
                ProxyError::TooManyClients,
                &routed(&route, &method, &path, remote),
            );
            let log = log(&path, response.status(), Some(&route));
            return finish(response, log);
        };
        if let Some(protocols) = upgrade::requested(&request) {
            if let Some(protocols) = upgrade::allowed(&route, protocols, &path, peer) {
                let trusted = self.trusted_proxies();
                let from = Forwarding {
                    peer,
                    trusted: &trusted,
                    send: route.config.settings.client_headers,
                };
                let (response, admission) =
                    upgrade::upgrade(&route, request, from, protocols, admission).await;
                let mut log = log(&path, response.status(), Some(&route));
                log.admission = admission;
                return finish(response, log);
            }
            if request.method() == Method::CONNECT {
                // An extended CONNECT the route does not allow has no plain form to pass as.
                let response = rescue(ProxyError::Connect, &asked(&request, remote));
                let log = log(&path, response.status(), Some(&route));
                return finish(response, log);
            }
        }
        if is_subscription(route.config.sse, &request) {
            if announces_body(&request) {
                // EventSource never sends a body; a subscription that announces one is trying to
                // make the upstream read bytes that are not its request.
                let response =
                    self.refuse(&request, remote, "a subscription (GET) announcing a request body");
                let log = log(&path, response.status(), Some(&route));
                return finish(response, log);
            }
            return match self.subscribe(&route, request, peer, admission).await {
                Ok(response) => response,
                Err((response, admission)) => {
                    let mut log = log(&path, response.status(), Some(&route));
                    log.admission = admission;
                    finish(response, log)
                }
            };
        }
        let mut entry = log(&path, StatusCode::OK, Some(&route));
        let trusted = self.trusted_proxies();
        let response = pass_through(&route, request, peer, &trusted, false).await;
        entry.status = response.status();
        entry.admission = Some(admission);
        finish(response, entry)
    }

    /// A 400 for a request that is the client's fault, with the log line that says so.
    fn refuse<B>(
        &self,
        request: &Request<B>,
        remote: SocketAddr,
        why: impl std::fmt::Display,
    ) -> Response<ProxyBody> {
        self.inner.metrics.bad_requests.inc();
        rescue(ProxyError::BadRequest(why.to_string()), &asked(request, remote))
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
            let context = routed(route, request.method(), request.uri().path(), remote.addr);
            let response = rescue(ProxyError::ShuttingDown, &context);
            return Err((response, Some(admission)));
        }
        let settings = &route.config.settings;
        let resume_from = last_event_id(request.headers(), request.uri().query());
        let shared = settings.mode == StreamMode::Shared;
        let trusted = self.trusted_proxies();
        let from = Forwarding {
            peer: remote,
            trusted: &trusted,
            send: settings.client_headers,
        };
        let template = upstream_template(route, &request, from, shared, resume_from.as_deref());
        // The key is made of what the upstream receives: the path as normalised, the headers
        // as forwarded (a credential a client names in `Connection` is in neither).
        let key = shared.then(|| {
            stream_key(
                &route.config.path,
                &settings.stream_key,
                request.uri().path(),
                request.uri().query(),
                &template.headers,
            )
        });
        let client = ClientId::from(client_address(remote.addr.ip(), request.headers(), &trusted));
        let origin = request.headers().get(header::ORIGIN).cloned();
        let pending = match hub.join(route, key, template, client) {
            Joined::Pending(pending) => pending,
            Joined::Held(held) => {
                route.metrics.held_total.inc();
                // Answered now, as a stream whose app is down would be; joined when the
                // client's budget allows.
                let resume_from = resume_from.clone();
                let admit = async move {
                    let pending = held.admitted().await?;
                    Some(pending.attach(resume_from.as_deref(), Some(admission)).await)
                };
                let body = ProxyBody::held(HeldBody::new(admit, settings.retry, settings.heartbeat));
                let cors = route.cors_for(origin.as_ref());
                return Ok(sse_response(body, cors, route));
            }
            Joined::Full(_) => {
                route.metrics.refused.inc();
                let context = routed(route, request.method(), request.uri().path(), remote.addr);
                let response = rescue(ProxyError::TooManyStreams, &context);
                return Err((response, Some(admission)));
            }
        };
        match pending.outcome(settings.upstream_connect_timeout).await {
            Outcome::Subscribe(pending) => {
                // Until the stream's app answers (it may be down), its last CORS answer to
                // this Origin on the route, if any.
                let app = pending
                    .app_headers()
                    .unwrap_or_else(|| route.cors_for(origin.as_ref()));
                let body = ProxyBody::sse(pending.attach(resume_from.as_deref(), Some(admission)).await);
                Ok(sse_response(body, app, route))
            }
            Outcome::Answer(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                add_response_headers(&mut parts.headers, route);
                Err((
                    Response::from_parts(parts, ProxyBody::answer(body)),
                    Some(admission),
                ))
            }
            // Answered by the app alone: whatever it is (even a stream), it is this client's.
            Outcome::AskUpstream => Err((
                pass_through(route, request, remote, &trusted, true).await,
                Some(admission),
            )),
        }
    }
}

/// What a rescue's log line says of a request not routed (yet): who asked what.
fn asked<B>(request: &Request<B>, remote: SocketAddr) -> Context<'_> {
    Context {
        remote: Some(remote),
        method: Some(request.method()),
        target: Some(request.uri()),
        ..Context::default()
    }
}

/// What a rescue's log line says of a routed request: who asked for which path (not the
/// query, which may hold a token), on which route and upstream.
fn routed<'a>(route: &'a RouteEntry, method: &'a Method, path: &'a str, remote: SocketAddr) -> Context<'a> {
    Context {
        remote: Some(remote),
        method: Some(method),
        target: None,
        path: Some(path),
        route: Some(&route.config.path),
        upstream: Some(route.client.upstream()),
    }
}

/// Attaches the access log to a response.
fn finish(response: Response<ProxyBody>, log: AccessLog) -> Response<ProxyBody> {
    response.map(|body| body.log(log))
}

/// The proxy as a tower service, so layers can wrap it and the server can run it without
/// knowing it.
impl<B: RequestBody> tower::Service<Request<B>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        // Always ready: limits apply per route, after routing (`max_clients`, `max_streams`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let proxy = self.clone();
        Box::pin(async move { Ok(proxy.handle(request).await) })
    }
}

/// The request a stream sends upstream: the opening subscription's, minus its resume point in
/// shared mode (the stream's own resume point is added on reconnect). In per-client mode the
/// client's Last-Event-ID goes to the app, as a header even when it came in the query.
fn upstream_template<B>(
    route: &RouteEntry,
    request: &Request<B>,
    from: Forwarding<'_>,
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
    let UpstreamHead {
        uri: upstream_uri,
        mut headers,
    } = route
        .client
        .head(uri, request.headers().clone(), &path_and_query, from);
    // A subscription's upstream request has no body, so it announces none: a Content-Length
    // kept here would make the app read the next request on the connection as this one's body.
    headers.remove(header::CONTENT_LENGTH);
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

/// Passes a request through to the route's upstream and streams the answer back, compressed
/// when the route's `compress` and the client's `Accept-Encoding` allow.
/// `subscription`: it is one, whose stream's app answered it alone (never shared).
async fn pass_through<B: RequestBody>(
    route: &RouteEntry,
    request: Request<B>,
    remote: Peer,
    trusted: &[Cidr],
    subscription: bool,
) -> Response<ProxyBody> {
    let settings = &route.config.settings;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // What the client accepts, if the answer may be compressed: a plain request's, never a
    // subscription's, nor a HEAD's (no body, and headers as the app gave them).
    let accepted = (!subscription && method != Method::HEAD && !settings.compress.is_off())
        .then(|| compress::accepted(request.headers()));
    let from = Forwarding {
        peer: remote,
        trusted,
        send: settings.client_headers,
    };
    let response = match exchange(route, request, from, |_| {}).await {
        Ok(response) => response,
        Err(answer) => return answer,
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Never asked for (an upgrade goes through `upgrade`): following it would hand the
        // client a raw connection to the app.
        let source = "the app switched protocols (101) on a request that asked for no upgrade";
        let context = routed(route, &method, &path, remote.addr);
        return rescue(
            ProxyError::Upstream {
                timed_out: false,
                source: source.into(),
            },
            &context,
        );
    }
    if !subscription
        && route.config.sse == SseMode::Auto
        && method == Method::GET
        && is_event_stream(response.headers())
    {
        route.sse_passed_through(&path);
    }
    let response = answer_head(route, response);
    match accepted {
        Some(accepted) => compress::compress(settings.compress, accepted, response).await,
        None => response.map(ProxyBody::upstream),
    }
}

/// Sends a client's request to the route's upstream: the head as every upstream request's
/// (see `UpstreamClient::prepare`), then `adjust`ed; the body within `max_request_body`; the
/// answer's head within `upstream_response_timeout`. The app's response, or ssegate's answer
/// when there is none.
async fn exchange<B: RequestBody>(
    route: &RouteEntry,
    request: Request<B>,
    from: Forwarding<'_>,
    adjust: impl FnOnce(&mut HeaderMap),
) -> Result<Response<Incoming>, Response<ProxyBody>> {
    let settings = &route.config.settings;
    let max_body = settings.max_request_body;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let context = routed(route, &method, &path, from.peer.addr);
    if request.body().declared_len() > max_body {
        return Err(rescue(ProxyError::BodyTooLarge, &context));
    }
    // A body without a declared length is counted as it streams; past the limit the upstream
    // request fails and the client gets 413.
    let limited = usize::try_from(max_body).unwrap_or(usize::MAX);
    let mut request = route
        .client
        .prepare(request.map(|body| body.upstream(limited)), from);
    adjust(request.headers_mut());
    let sent = route.client.send(request);
    let result = match settings.upstream_response_timeout {
        Some(limit) => tokio::time::timeout(limit, sent)
            .await
            .unwrap_or(Err(UpstreamError::ResponseTimeout(limit))),
        None => sent.await,
    };
    result.map_err(|error| {
        let error = ProxyError::from(error);
        if matches!(error, ProxyError::ClientBody(_)) {
            route.metrics.all().bad_requests.inc();
        }
        rescue(error, &context)
    })
}

/// The app's response as the client gets it: hop-by-hop headers out, the route's
/// `response_headers` in, the body streamed.
fn answer(route: &RouteEntry, response: Response<Incoming>) -> Response<ProxyBody> {
    answer_head(route, response).map(ProxyBody::upstream)
}

/// The app's response with the head the client gets: hop-by-hop headers out, the route's
/// `response_headers` in.
fn answer_head(route: &RouteEntry, response: Response<Incoming>) -> Response<Incoming> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_response_headers(&mut parts.headers, route);
    Response::from_parts(parts, body)
}

/// Whether a request announces a body: a `Content-Length` other than 0 (any of them), or any
/// `Transfer-Encoding`.
fn announces_body<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|value| value.as_bytes() != b"0")
}

/// The route's `response_headers`, replacing the app's of the same name.
fn add_response_headers(headers: &mut HeaderMap, route: &RouteEntry) {
    for (name, value) in &route.config.settings.response_headers {
        headers.insert(name.clone(), value.clone());
    }
}

/// The 200 response of a subscription: the app's headers (`app`: CORS above all), the route's
/// `response_headers`, and ssegate's own, which keep every intermediary from buffering or
/// caching it. It has no Content-Length and is never compressed.
fn sse_response(body: ProxyBody, app: HeaderMap, route: &RouteEntry) -> Response<ProxyBody> {
    let mut response = Response::new(body);
    *response.headers_mut() = app;
    let headers = response.headers_mut();
    add_response_headers(headers, route);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Whether a request is an SSE subscription under the route's `sse` setting.
pub(crate) fn is_subscription<B>(mode: SseMode, request: &Request<B>) -> bool {
    if request.method() != Method::GET {
        return false;
    }
    match mode {
        SseMode::Never => false,
        SseMode::Always => true,
        SseMode::Auto => list_items(request.headers().get_all(header::ACCEPT)).any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        }),
    }
}
