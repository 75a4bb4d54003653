//! One stream: the state its subscribers read (ring, wakers) and the task that owns its
//! upstream request, parses it, and appends each event once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, ORIGIN, SET_COOKIE};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::{sleep, Sleep};

use prometheus_client::metrics::gauge::Gauge;

use super::budget::Charge;
use super::key::{is_resumable, StreamKey};
use super::pacer::{coalesce_window, fire, Pacer};
use super::replay::Replay;
use super::ring::{Limits, Ring};
use super::wakers::Wakers;
use super::Shared;
use crate::config::{format_duration, IdMode, OnGap, Settings};
use crate::metrics::RouteMetrics;
use crate::route::RouteEntry;
use crate::sse::{encode_event, encode_retry, Item, Parser};
use crate::upstream::backoff::Backoff;
use crate::upstream::headers::{header_bytes, is_event_stream, stream_headers, MAX_STREAM_HEADER_BYTES};
use crate::upstream::{chain, UpstreamError};

/// An upstream stream that lasted this long and gave an event is reopened at once when it ends
/// cleanly, and resets the backoff.
const SETTLED: Duration = Duration::from_secs(1);
/// How often a stream evicts aged events and checks how long its upstream has been down.
const UPKEEP: Duration = Duration::from_millis(250);
/// Encoded events are carved out of blocks this large, so most events cost no allocation.
const ENCODE_BLOCK: usize = 16 * 1024;

/// Where a stream's first upstream answer stands, for subscriptions waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No answer yet.
    Opening,
    /// Subscribers are served: the upstream is streaming, or down and being retried.
    Open,
    /// The upstream gave a definitive non-stream answer; each waiting subscription must ask the
    /// upstream itself, since that answer is never shared.
    Rejected,
}

/// The first answer to a stream's upstream request, for the subscription that caused it.
#[derive(Debug)]
pub enum First {
    /// A definitive (non-stream) answer: that subscription's alone, passed on as is.
    Definitive(Response<Incoming>),
    /// An event stream: its `Set-Cookie` fields, for that subscription only.
    Stream(Vec<HeaderValue>),
}

/// The request a stream sends upstream (and again on every reconnect).
#[derive(Debug, Clone)]
pub struct Template {
    /// Upstream URL.
    pub uri: Uri,
    /// Headers of the subscription that opened the stream, ready for the upstream.
    pub headers: HeaderMap,
}

impl Template {
    /// About the bytes this request head holds, for `buffer_total_bytes`.
    pub fn size(&self) -> usize {
        let target = self.uri.path_and_query().map_or(1, |pq| pq.as_str().len());
        let authority = self.uri.authority().map_or(0, |a| a.as_str().len());
        target + authority + header_bytes(&self.headers) + 64
    }
}

/// A stream shared by the subscriptions with one key (or owned by one, in per-client mode).
#[derive(Debug)]
pub struct Stream {
    /// The route's path: fixed for the stream's life (a reload that removes the route ends it).
    pub(super) path: String,
    /// The route's metric handles (the same series for every version of the route).
    pub(super) metrics: RouteMetrics,
    pub(super) key: StreamKey,
    /// Bytes of the request head kept for reconnects, counted in the hub's total.
    head: usize,
    /// Digest of the key, for logs.
    pub(super) digest: String,
    /// Per-client mode: one subscriber, no priming, no resume from the buffer.
    pub(super) private: bool,
    pub(super) shared: Arc<Shared>,
    state: Mutex<State>,
    /// Tells the task that the last subscriber left, or that ssegate is stopping.
    control: Notify,
    pub(super) phase: watch::Sender<Phase>,
    /// Whether the upstream is streaming now, and how often it was reopened (for `/streams`).
    connected: AtomicBool,
    reconnects: AtomicU64,
}

/// What subscribers read, under the stream's lock (never held across an await).
#[derive(Debug)]
pub struct State {
    /// The route's current version: a reload swaps it, keeping buffer and subscribers.
    pub(super) route: Arc<RouteEntry>,
    /// A reload replaced `route`: the task must pick up the new settings.
    route_changed: bool,
    /// A reload removed (or changed the identity of) the route: the task must end the stream.
    retire: bool,
    /// Why the stream ended, for the subscribers' access log lines.
    pub(super) end_reason: &'static str,
    pub(super) ring: Ring,
    pub(super) wakers: Wakers,
    pub(super) subscribers: usize,
    /// Bumped when the stream has been quiet for a heartbeat interval.
    pub(super) heartbeat_gen: u64,
    /// No more events will come: subscribers flush what they have, then end.
    pub(super) closing: bool,
    /// The upstream's own `retry:`, used when the route sets none.
    pub(super) upstream_retry: Option<u64>,
    /// The end-to-end headers of the latest upstream response (no `Set-Cookie`): every
    /// subscriber's response carries them. `None` until the app first answers.
    pub(super) app_headers: Option<Arc<HeaderMap>>,
    /// Their size, counted in the hub's buffered bytes.
    app_header_bytes: usize,
    /// The stream's charge on the budget of the client that opened it, until it ends.
    charge: Option<Charge>,
}

/// A place among a stream's subscribers: counted from the moment a subscription picks the
/// stream (so linger never tears down a stream someone is about to read), released on drop.
#[derive(Debug)]
pub struct Subscriber {
    pub(super) stream: Arc<Stream>,
    pub(super) slot: usize,
    /// The sequence number the stream's next event had when this subscription joined: a new
    /// subscriber gets every event from there on, so the one that opens a stream gets the
    /// app's first event even when it comes with the response head.
    pub(super) joined_at: u64,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let last = {
            let mut state = self.stream.lock();
            state.wakers.remove(self.slot);
            state.subscribers -= 1;
            state.subscribers == 0
        };
        self.stream.metrics.subscriptions.dec();
        if last {
            self.stream.control.notify_one();
        }
    }
}

/// How a stream's task ended.
#[derive(Debug)]
enum End {
    Shutdown,
    /// A reload removed the route or changed what identifies its streams.
    Reconfigured,
    Lingered,
    DownTooLong(Duration),
    /// A definitive answer went to the subscription that opened the stream.
    Rejected(StatusCode),
    /// A definitive answer came on a reconnect (or after the opener stopped waiting).
    Definitive(StatusCode),
    /// Per-client, the app's stream ended (or broke) and gave no id to resume by.
    AppEnded,
}

/// Reusable buffers of the task, so steady-state ingestion allocates nothing but events.
struct Scratch {
    items: Vec<Item>,
    wakers: Vec<Waker>,
    encoded: BytesMut,
    pending_retry: Option<u64>,
    /// The upstream was reopened with Last-Event-ID and may be replaying events it sent before.
    replay: Option<Replay>,
    /// The log said once that this stream's app gives ids a client cannot send back.
    told_unsendable: bool,
}

type Head = Pin<Box<dyn Future<Output = Result<Response<Incoming>, UpstreamError>> + Send>>;

/// The upstream side of the task.
enum Conn {
    Connecting(Head),
    // The guard is only held: it counts the upstream as connected while the body is read.
    Reading(Incoming, #[allow(dead_code)] Connected),
    Waiting(Pin<Box<Sleep>>),
}

/// Counts an upstream stream as connected while it lives.
struct Connected(Gauge);

impl Connected {
    fn new(gauge: &Gauge) -> Connected {
        gauge.inc();
        Connected(gauge.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

enum Step {
    Head(Result<Response<Incoming>, UpstreamError>),
    Chunk(Bytes),
    End(Option<hyper::Error>),
    Retry,
}

impl Conn {
    /// The next thing that happens upstream. Cancel-safe: the state lives in `self`.
    async fn step(&mut self) -> Step {
        match self {
            Conn::Connecting(head) => Step::Head(head.as_mut().await),
            Conn::Reading(body, _) => loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Step::Chunk(data);
                        }
                    }
                    Some(Err(error)) => return Step::End(Some(error)),
                    None => return Step::End(None),
                }
            },
            Conn::Waiting(delay) => {
                delay.as_mut().await;
                Step::Retry
            }
        }
    }
}

/// What an upstream's answer to a subscription means.
enum Answer {
    Stream,
    Transient,
    Definitive,
}

fn classify(response: &Response<Incoming>) -> Answer {
    match response.status() {
        StatusCode::OK if is_event_stream(response.headers()) => Answer::Stream,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            Answer::Transient
        }
        _ => Answer::Definitive,
    }
}

/// The ring limits of a route's settings.
fn limits(settings: &Settings) -> Limits {
    Limits {
        events: settings.buffer_events,
        bytes: settings.buffer_bytes,
        age: settings.buffer_age,
    }
}

/// Whether a stream of route `old` can go on under route `new`: same upstream, and the same
/// rules for what a stream is and how its ids work.
pub(super) fn same_identity(old: &RouteEntry, new: &RouteEntry) -> bool {
    let (a, b) = (&old.config, &new.config);
    a.upstream == b.upstream
        && a.settings.mode == b.settings.mode
        && a.settings.ids == b.settings.ids
        && a.settings.stream_key == b.settings.stream_key
}

impl Stream {
    pub(super) fn new(
        route: Arc<RouteEntry>,
        key: StreamKey,
        private: bool,
        head: usize,
        charge: Charge,
        shared: Arc<Shared>,
    ) -> Arc<Stream> {
        let settings = &route.config.settings;
        let ring = Ring::new(limits(settings), settings.ids == IdMode::Inject);
        let digest = super::key::digest(&key);
        let metrics = route.metrics.clone();
        metrics.streams.inc();
        Arc::new(Stream {
            path: route.config.path.clone(),
            metrics,
            key,
            head,
            digest,
            private,
            shared,
            state: Mutex::new(State {
                route,
                route_changed: false,
                retire: false,
                end_reason: "",
                ring,
                wakers: Wakers::default(),
                subscribers: 0,
                heartbeat_gen: 0,
                closing: false,
                upstream_retry: None,
                app_headers: None,
                app_header_bytes: 0,
                charge: Some(charge),
            }),
            control: Notify::new(),
            phase: watch::channel(Phase::Opening).0,
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        })
    }

    /// The route's current version.
    pub(super) fn route(&self) -> Arc<RouteEntry> {
        self.lock().route.clone()
    }

    /// Applies a reloaded route: keeps buffer, ids and subscribers when the route's upstream and
    /// what identifies its streams are unchanged; otherwise ends the stream cleanly (its clients
    /// reconnect and resume under the new config).
    pub(super) fn reconfigure(&self, new: Option<&Arc<RouteEntry>>) {
        let freed = {
            let mut state = self.lock();
            match new {
                Some(new) if same_identity(&state.route, new) => {
                    state.route = new.clone();
                    state.route_changed = true;
                    state
                        .ring
                        .set_limits(limits(&new.config.settings), Instant::now())
                }
                _ => {
                    state.retire = true;
                    0
                }
            }
        };
        self.shared.account(0, freed);
        self.poke();
    }

    /// The stream's state. A panic elsewhere cannot leave it half-written (every critical
    /// section is a few plain assignments), so a poisoned lock is used as is.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a subscriber; the caller holds the stream's lock (and the hub's, so the stream
    /// cannot retire in between).
    pub(super) fn join(self: &Arc<Self>, state: &mut State) -> Subscriber {
        state.subscribers += 1;
        self.metrics.subscriptions.inc();
        Subscriber {
            stream: self.clone(),
            slot: state.wakers.insert(),
            joined_at: state.ring.next_seq(),
        }
    }

    /// What `/streams` shows of this stream.
    pub(super) fn info(&self) -> super::StreamInfo {
        let state = self.lock();
        let ring = &state.ring;
        let first_id = ring.get(ring.first_seq()).map(|e| ring.id_of(e));
        let upstream = if state.closing {
            "closing"
        } else {
            match *self.phase.borrow() {
                Phase::Opening => "opening",
                _ if self.connected.load(Ordering::Relaxed) => "streaming",
                _ => "reconnecting",
            }
        };
        super::StreamInfo {
            route: self.path.clone(),
            key: self.digest.clone(),
            private: self.private,
            clients: state.subscribers,
            buffered_events: ring.len(),
            buffered_bytes: ring.bytes(),
            first_id: first_id.flatten(),
            last_id: ring.newest_id(),
            upstream,
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Tells the task to look at the subscriber count and the shutdown flag.
    pub(super) fn poke(&self) {
        self.control.notify_one();
    }

    /// Starts the task that owns the upstream. `opener` receives a definitive (non-stream)
    /// first answer; it is dropped unanswered once subscribers can be served.
    pub(super) fn spawn(self: &Arc<Self>, template: Template, opener: Option<oneshot::Sender<First>>) {
        let stream = self.clone();
        tokio::spawn(async move { stream.run(template, opener).await });
    }

    async fn run(self: Arc<Self>, template: Template, mut opener: Option<oneshot::Sender<First>>) {
        let mut route = self.route();
        let mut parser = Parser::new(route.config.settings.max_event_bytes);
        let mut backoff = Backoff::new(
            route.config.settings.reconnect_initial,
            route.config.settings.reconnect_max,
        );
        let mut conn = Conn::Connecting(self.connect(&route, &template, None));
        let mut down_since: Option<Instant> = None;
        let mut was_live = false;
        // When the upstream stream in progress started, and whether it gave an event yet.
        let mut streaming: Option<(Instant, bool)> = None;
        let mut heartbeat = route
            .config
            .settings
            .heartbeat
            .map(|every| Box::pin(sleep(every)));
        let mut linger: Option<Pin<Box<Sleep>>> = None;
        let mut pacer = Pacer::default();
        let mut upkeep = tokio::time::interval(UPKEEP);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scratch = Scratch {
            items: Vec::new(),
            wakers: Vec::new(),
            encoded: BytesMut::new(),
            pending_retry: None,
            replay: None,
            told_unsendable: false,
        };
        let path = &self.path;
        tracing::debug!(route = %path, stream = %self.digest, "stream opened");
        let end = loop {
            tokio::select! {
                biased;
                () = self.control.notified() => {
                    if self.shared.is_shutting_down() {
                        break End::Shutdown;
                    }
                    let (retire, changed, subscribers) = {
                        let mut state = self.lock();
                        (state.retire, std::mem::take(&mut state.route_changed), state.subscribers)
                    };
                    if retire {
                        break End::Reconfigured;
                    }
                    if changed {
                        route = self.route();
                        let settings = &route.config.settings;
                        parser.set_max_event_bytes(settings.max_event_bytes);
                        backoff.limits(settings.reconnect_initial, settings.reconnect_max);
                        heartbeat = settings.heartbeat.map(|every| Box::pin(sleep(every)));
                        if linger.is_some() {
                            linger = Some(Box::pin(sleep(settings.linger)));
                        }
                        tracing::info!(route = %path, stream = %self.digest, "stream took the reloaded route settings");
                    }
                    if linger.is_none() && subscribers == 0 {
                        let wait = if self.private { Duration::ZERO } else { route.config.settings.linger };
                        linger = Some(Box::pin(sleep(wait)));
                    }
                }
                () = fire(&mut linger) => {
                    linger = None;
                    if self.retire_if_unused() {
                        break End::Lingered;
                    }
                }
                () = pacer.due() => self.wake(&mut scratch.wakers),
                () = fire(&mut heartbeat) => {
                    self.heartbeat(&mut scratch.wakers);
                    if let (Some(timer), Some(every)) = (heartbeat.as_mut(), route.config.settings.heartbeat) {
                        timer.as_mut().reset(tokio::time::Instant::now() + every);
                    }
                }
                _ = upkeep.tick() => {
                    let freed = self.lock().ring.evict_expired(Instant::now());
                    self.shared.account(0, freed);
                    if let (Some(since), Some(grace)) = (down_since, route.config.settings.upstream_down_grace) {
                        if since.elapsed() >= grace {
                            break End::DownTooLong(grace);
                        }
                    }
                }
                step = conn.step() => match step {
                    Step::Head(Ok(response)) => match classify(&response) {
                        Answer::Stream => {
                            tracing::info!(route = %path, stream = %self.digest, upstream = %route.client.upstream(), "upstream stream connected");
                            if down_since.is_some() && was_live && route.config.settings.on_gap == OnGap::Event {
                                // The app was unreachable for a while: what it sent meanwhile
                                // reached no one. Say so, in order, to everyone.
                                self.announce_outage(&route, &mut scratch);
                            }
                            was_live = true;
                            let (head, body) = response.into_parts();
                            conn = Conn::Reading(body, Connected::new(&self.metrics.upstream_streams));
                            self.connected.store(true, Ordering::Relaxed);
                            // The backoff is reset only once this stream proves it lasts (see
                            // Step::End): an endpoint that ends every stream at once is backed
                            // off like one that fails.
                            streaming = Some((Instant::now(), false));
                            down_since = None;
                            // Every subscriber from now on gets the app's latest headers; its
                            // cookies go to the subscription that caused this request, if any.
                            self.keep_app_headers(&head.headers, &route);
                            route.remember_cors(template.headers.get(ORIGIN), &head.headers);
                            if let Some(tx) = opener.take() {
                                let cookies = head.headers.get_all(SET_COOKIE).iter().cloned().collect();
                                let _ = tx.send(First::Stream(cookies));
                            }
                            self.open(&mut opener);
                        }
                        Answer::Transient => {
                            let status = response.status();
                            conn = self.failed(&route, &mut backoff, &mut down_since, &mut opener, &format!("upstream answered {status}"));
                        }
                        Answer::Definitive => {
                            let status = response.status();
                            if opener.take().is_some_and(|tx| tx.send(First::Definitive(response)).is_ok()) {
                                break End::Rejected(status);
                            }
                            break End::Definitive(status);
                        }
                    },
                    Step::Head(Err(error)) => {
                        conn = self.failed(&route, &mut backoff, &mut down_since, &mut opener, &error.to_string());
                    }
                    Step::Chunk(chunk) => {
                        if let Some(subscribers) = self.ingest(&route, &mut parser, &chunk, &mut scratch) {
                            if let Some((_, got_event)) = streaming.as_mut() {
                                *got_event = true;
                            }
                            if pacer.appended(coalesce_window(route.config.settings.coalesce, subscribers)) {
                                self.wake(&mut scratch.wakers);
                            }
                            if let (Some(timer), Some(every)) = (heartbeat.as_mut(), route.config.settings.heartbeat) {
                                timer.as_mut().reset(tokio::time::Instant::now() + every);
                            }
                        }
                    }
                    Step::End(error) => {
                        parser.finish();
                        let (lasted, got_event) = streaming
                            .take()
                            .map_or((Duration::ZERO, false), |(since, got)| (since.elapsed(), got));
                        // A stream that streamed for a while ended as apps' workers do when they
                        // time out: reopened at once, since a naive app loses what it sends while
                        // no connection is open. One that ends sooner (a one-shot endpoint) is
                        // backed off like a failure, so the app is never polled in a tight loop.
                        let settled = lasted >= SETTLED && got_event;
                        if settled || lasted >= route.config.settings.reconnect_max {
                            backoff.reset();
                        }
                        let last_id = parser.last_event_id();
                        if self.private && (last_id.is_empty() || !is_resumable(last_id)) {
                            // Per-client, without an id to resume by: a new request would
                            // replay the app's beginning to this client as duplicates. Its
                            // response ends as the app's did; the browser reconnects per its
                            // retry, as it would directly.
                            break End::AppEnded;
                        }
                        let delay = if error.is_none() && settled {
                            Duration::ZERO
                        } else {
                            backoff.next()
                        };
                        self.metrics.upstream_reconnects.inc();
                        self.connected.store(false, Ordering::Relaxed);
                        self.reconnects.fetch_add(1, Ordering::Relaxed);
                        match error {
                            Some(error) => tracing::warn!(route = %path, stream = %self.digest, error = %chain(&error), "upstream stream broke; reconnecting in {}", format_duration(delay)),
                            None => tracing::info!(route = %path, stream = %self.digest, "upstream stream ended; reconnecting in {}", format_duration(delay)),
                        }
                        conn = Conn::Waiting(Box::pin(sleep(delay)));
                    }
                    Step::Retry => {
                        let last_id = parser.last_event_id();
                        scratch.replay = (!last_id.is_empty())
                            .then(|| Replay::new(last_id, self.lock().ring.app_ids()));
                        conn = Conn::Connecting(self.connect(&route, &template, (!last_id.is_empty()).then_some(last_id)));
                    }
                },
            }
        };
        drop(conn);
        self.connected.store(false, Ordering::Relaxed);
        self.finish(end);
    }

    /// Keeps the headers of the app's latest event-stream response for every subscriber from
    /// now on, counted in the buffered bytes.
    fn keep_app_headers(&self, app: &HeaderMap, route: &RouteEntry) {
        let (headers, dropped) = stream_headers(app);
        if dropped > 0 {
            tracing::warn!(route = %route.config.path, stream = %self.digest, dropped, limit = MAX_STREAM_HEADER_BYTES, "the app's response headers are larger than subscribers are given; the last ones are left out");
        }
        let bytes = header_bytes(&headers);
        let before = {
            let mut state = self.lock();
            state.app_headers = Some(Arc::new(headers));
            std::mem::replace(&mut state.app_header_bytes, bytes)
        };
        self.shared.account(bytes, before);
    }

    /// Subscribers can be served from now on: release the opener and everyone waiting.
    fn open(&self, opener: &mut Option<oneshot::Sender<First>>) {
        opener.take();
        self.phase.send_if_modified(|phase| {
            let opening = *phase == Phase::Opening;
            if opening {
                *phase = Phase::Open;
            }
            opening
        });
    }

    /// A transient failure: serve subscribers anyway (200, heartbeats) and retry after a delay.
    fn failed(
        &self,
        route: &RouteEntry,
        backoff: &mut Backoff,
        down_since: &mut Option<Instant>,
        opener: &mut Option<oneshot::Sender<First>>,
        why: &str,
    ) -> Conn {
        down_since.get_or_insert_with(Instant::now);
        self.open(opener);
        self.metrics.upstream_failures.inc();
        let delay = backoff.next();
        tracing::warn!(
            route = %self.path,
            stream = %self.digest,
            upstream = %route.client.upstream(),
            fault = "upstream",
            "{why}; clients stay connected, retrying in {}",
            format_duration(delay)
        );
        Conn::Waiting(Box::pin(sleep(delay)))
    }

    /// The upstream request: the template, plus `Last-Event-ID` when the upstream gave ids.
    fn connect(&self, route: &RouteEntry, template: &Template, last_id: Option<&str>) -> Head {
        let mut request = Request::new(Either::Right(Empty::<Bytes>::new()));
        *request.uri_mut() = template.uri.clone();
        *request.headers_mut() = template.headers.clone();
        if let Some(value) = last_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            request.headers_mut().insert("last-event-id", value);
        }
        let client = route.client.clone();
        // The connect timeout also bounds the wait for the response head: an SSE endpoint
        // answers at once, and a subscription must not hang on one that does not.
        let limit = route.config.settings.upstream_connect_timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, client.send(request)).await {
                Ok(result) => result,
                Err(_) => Err(UpstreamError::ResponseTimeout(limit)),
            }
        })
    }

    /// Parses a chunk, encodes each new event once and appends it. When anything was appended,
    /// returns the number of subscribers (to be woken).
    fn ingest(
        &self,
        route: &RouteEntry,
        parser: &mut Parser,
        chunk: &[u8],
        scratch: &mut Scratch,
    ) -> Option<usize> {
        parser.feed(chunk, |item| scratch.items.push(item));
        self.append(route, scratch)
    }

    /// Encodes each item of `scratch.items` once and appends the events to the ring. When
    /// anything was appended, returns the number of subscribers (to be woken).
    fn append(&self, route: &RouteEntry, scratch: &mut Scratch) -> Option<usize> {
        if scratch.items.is_empty() {
            return None;
        }
        let settings = &route.config.settings;
        let inject = settings.ids == IdMode::Inject;
        let now = Instant::now();
        let (mut added, mut freed, mut events, mut dropped, mut repeats) = (0, 0, 0u64, 0u64, 0u64);
        let mut unsendable = 0u64;
        let subscribers = {
            let mut state = self.lock();
            for item in scratch.items.drain(..) {
                match item {
                    Item::Event(mut event) => {
                        if let Some(replay) = scratch.replay.as_mut() {
                            let id = event.id.as_deref().filter(|id| !id.is_empty());
                            let (repeat, over) = replay.check(id);
                            if over {
                                scratch.replay = None;
                            }
                            if repeat {
                                // Replayed after the reconnect: already buffered and sent.
                                repeats += 1;
                                continue;
                            }
                        }
                        if event
                            .id
                            .as_deref()
                            .is_some_and(|id| !id.is_empty() && !is_resumable(id))
                        {
                            // A client could not send this id back: in inject mode the event
                            // gets ssegate's id instead, in passthrough mode none.
                            event.id = None;
                            unsendable += 1;
                        }
                        let app_id = event.id.as_deref().filter(|id| !id.is_empty());
                        if scratch.encoded.capacity() < event.data.len() + 256 {
                            scratch.encoded.reserve(ENCODE_BLOCK.max(event.data.len() + 256));
                        }
                        if let Some(ms) = scratch.pending_retry.take() {
                            encode_retry(ms, &mut scratch.encoded);
                        }
                        let injected = (inject && app_id.is_none())
                            .then(|| state.ring.injected_id(state.ring.next_seq()));
                        encode_event(&event, injected.as_deref(), &mut scratch.encoded);
                        let bytes = scratch.encoded.split().freeze();
                        added += bytes.len();
                        events += 1;
                        freed += state.ring.push(app_id.map(Box::from), bytes, now).1;
                    }
                    Item::Retry(ms) => {
                        // The route's retry, when set, overrides the app's.
                        if settings.retry.is_none() {
                            state.upstream_retry = Some(ms);
                            scratch.pending_retry = Some(ms);
                        }
                    }
                    Item::Dropped => dropped += 1,
                }
            }
            state.subscribers
        };
        let metrics = &self.metrics;
        metrics.events_received.inc_by(events);
        if dropped > 0 {
            metrics.events_dropped.inc_by(dropped);
            tracing::warn!(route = %self.path, stream = %self.digest, dropped, limit = settings.max_event_bytes, "dropped upstream events larger than max_event_bytes");
        }
        if unsendable > 0 && !std::mem::replace(&mut scratch.told_unsendable, true) {
            tracing::warn!(route = %self.path, stream = %self.digest, events = unsendable, ids = ?settings.ids, "the app gave ids a client could not send back as Last-Event-ID (control characters, edge whitespace or over 1 KiB): replaced by ssegate's own (inject) or left out (passthrough)");
        }
        metrics.unsendable_ids.inc_by(unsendable);
        if repeats > 0 {
            metrics.repeats_dropped.inc_by(repeats);
            tracing::debug!(route = %self.path, stream = %self.digest, repeats, "dropped events the upstream sent again");
        }
        self.shared.account(added, freed);
        (added > 0).then_some(subscribers)
    }

    /// Appends a `gap` event whose data is the id of the last event before an upstream outage.
    fn announce_outage(&self, route: &RouteEntry, scratch: &mut Scratch) {
        let last = self.lock().ring.newest_id().unwrap_or_default();
        tracing::info!(route = %self.path, stream = %self.digest, last_id = %last, "upstream back after an outage: gap event sent");
        self.metrics.outage_gaps.inc();
        scratch.items.push(Item::Event(crate::sse::Event {
            event: Some("gap".to_owned()),
            data: last,
            id: None,
        }));
        // ssegate's own event is no part of the app's replay.
        let replay = scratch.replay.take();
        let appended = self.append(route, scratch);
        scratch.replay = replay;
        if appended.is_some() {
            self.wake(&mut scratch.wakers);
        }
    }

    /// Wakes every waiting subscriber.
    fn wake(&self, wakers: &mut Vec<Waker>) {
        self.lock().wakers.drain_into(wakers);
        for waker in wakers.drain(..) {
            waker.wake();
        }
    }

    fn heartbeat(&self, wakers: &mut Vec<Waker>) {
        {
            let mut state = self.lock();
            state.heartbeat_gen += 1;
            state.wakers.drain_into(wakers);
        }
        for waker in wakers.drain(..) {
            waker.wake();
        }
    }

    /// Retires the stream if nobody subscribes to it; under the hub's lock, so a subscription
    /// either joins before (and the stream lives on) or finds it gone and opens a new one.
    fn retire_if_unused(&self) -> bool {
        let mut streams = self.shared.lock_streams();
        let mut state = self.lock();
        if state.subscribers > 0 {
            return false;
        }
        state.closing = true;
        state.end_reason = "no subscriber within linger";
        if streams
            .get(&self.key)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), self))
        {
            streams.remove(&self.key);
        }
        true
    }

    /// Ends the stream: out of the hub, subscribers told to flush and end.
    fn finish(&self, end: End) {
        let reason = match end {
            End::Shutdown => "ssegate is stopping",
            End::Reconfigured => "the route was removed or changed by a reload",
            End::Lingered => "no subscriber within linger",
            End::DownTooLong(_) => "upstream down longer than upstream_down_grace",
            End::Rejected(_) | End::Definitive(_) => "upstream answered with a non-stream response",
            End::AppEnded => "the app's stream ended (per-client, no id to resume by)",
        };
        {
            let mut streams = self.shared.lock_streams();
            if streams
                .get(&self.key)
                .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), self))
            {
                streams.remove(&self.key);
            }
        }
        let mut wakers = Vec::new();
        let (subscribers, charge) = {
            let mut state = self.lock();
            state.closing = true;
            state.end_reason = reason;
            state.wakers.drain_into(&mut wakers);
            (state.subscribers, state.charge.take())
        };
        // The client that opened the stream may open another.
        drop(charge);
        for waker in wakers {
            waker.wake();
        }
        let rejected = matches!(end, End::Rejected(_) | End::Definitive(_));
        self.phase.send_modify(|phase| {
            if rejected {
                *phase = Phase::Rejected;
            } else if *phase == Phase::Opening {
                *phase = Phase::Open;
            }
        });
        let route = &self.path;
        match end {
            End::Reconfigured => {
                tracing::info!(%route, stream = %self.digest, subscribers, "stream ended: {reason}")
            }
            End::Shutdown => {
                tracing::debug!(%route, stream = %self.digest, subscribers, "stream closed for shutdown")
            }
            End::Lingered => {
                tracing::debug!(%route, stream = %self.digest, "stream closed: no subscriber within linger")
            }
            End::DownTooLong(grace) => {
                tracing::warn!(%route, stream = %self.digest, subscribers, "upstream down for {}; ending the stream so clients reconnect later", format_duration(grace))
            }
            End::Rejected(status) => {
                tracing::info!(%route, stream = %self.digest, %status, "upstream answered the subscription with a non-stream response; passed to that client")
            }
            End::AppEnded => {
                tracing::debug!(%route, stream = %self.digest, "the app ended its per-client stream without ids; the client's response ends too")
            }
            End::Definitive(status) => {
                tracing::warn!(%route, stream = %self.digest, subscribers, %status, "upstream answered a reconnect with a non-stream response; ending the stream so clients ask again")
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.shared.heads.fetch_sub(self.head, Ordering::Relaxed);
        self.shared
            .release(state.ring.bytes() + self.head + state.app_header_bytes);
        self.metrics.streams.dec();
    }
}
