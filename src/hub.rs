//! Shared SSE streams: one upstream request per stream key, fanned out to every subscriber.
//!
//! - [`ring`]: the bounded buffer of encoded events, and resume by id.
//! - [`stream`]: one stream's handle and the state its subscribers read.
//! - `task`: the task (an actor) that owns a stream's source and feeds the stream.
//! - [`source`]: where events come from (the app over HTTP), behind a trait.
//! - [`subscriber`]: the response body of one client, a cursor into the ring.
//! - [`key`]: stream keys and `Last-Event-ID`.
//! - [`budget`]: how many streams one client may open, and how fast.
//! - [`held`]: a subscription held until its client's budget allows its stream, and its body.
//! - [`replay`]: telling an app's replay after a reconnect from new events.
//!
//! Per-event work (parse, id, encode, buffer) happens once per stream, in its task; a client
//! costs a cursor, a waker slot and a few counters.

pub(crate) mod backfill;
pub(crate) mod budget;
pub(crate) mod held;
pub(crate) mod key;
mod pacer;
pub(crate) mod replay;
pub(crate) mod ring;
pub(crate) mod source;
pub(crate) mod stream;
pub(crate) mod subscriber;
mod task;
mod wakers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, SET_COOKIE};
use http::Response;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::route::{Admission, RouteEntry, Router};
use budget::{Budgets, ClientId, Grant};
use held::Counted;
pub(crate) use held::{Held, HeldBody};
use key::StreamKey;
use source::http::HttpSource;
use source::{Answer, AnswerBody, Source};
use stream::{Phase, Stream, Subscriber, Template};
pub(crate) use subscriber::SubscriberBody;

/// The registry of live streams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// What streams share with the hub.
#[derive(Debug)]
pub(crate) struct Shared {
    streams: Mutex<HashMap<StreamKey, Arc<Stream>>>,
    buffered: AtomicUsize,
    /// Bytes of the request heads streams keep (counted in `buffered` too).
    heads: AtomicUsize,
    buffer_cap: AtomicUsize,
    max_streams: AtomicUsize,
    evicting: AtomicBool,
    shutting_down: AtomicBool,
    /// Over how long a stop ends the subscriptions (`drain_spread`), in milliseconds.
    drain_spread_ms: AtomicU64,
    private_ids: AtomicU64,
    /// The routes of the last reload (none before one): held subscriptions take their route's
    /// new version from here, or end if it is gone.
    router: std::sync::RwLock<Option<Arc<Router<RouteEntry>>>>,
    /// Turns true when ssegate stops: held subscriptions end.
    stopping: tokio::sync::watch::Sender<bool>,
    budgets: Arc<Budgets>,
    metrics: Arc<Metrics>,
    /// The cluster shared streams belong to, under `[cluster]`.
    pub(crate) cluster: std::sync::OnceLock<crate::cluster::Cluster>,
}

/// A subscription that picked (or opened) its stream, before its response is decided.
#[derive(Debug)]
pub struct Pending {
    subscriber: Subscriber,
    /// Present when this subscription opened the stream: receives the answer to its request.
    opener: Option<oneshot::Receiver<Answer>>,
    /// The `Set-Cookie` fields of the answer to the upstream request this subscription caused:
    /// a cookie is set for one client, so no other subscriber gets them.
    cookies: Vec<HeaderValue>,
}

/// What [`Hub::join`] did with a subscription.
#[derive(Debug)]
pub enum Joined {
    /// It picked (or opened) its stream.
    Pending(Pending),
    /// Its stream would be new, and its client's budget does not allow one now.
    Held(Held),
    /// Its stream would be new, and `max_streams` streams are live (or their request heads
    /// fill `buffer_total_bytes`). The template comes back.
    Full(Template),
}

/// How a pending subscription is to be answered.
#[derive(Debug)]
pub enum Outcome {
    /// Serve it from the stream (200).
    Subscribe(Pending),
    /// The upstream's definitive answer, for this subscription only (it opened the stream).
    Answer(Response<AnswerBody>),
    /// The upstream refused the stream this subscription waited on; ask the upstream directly.
    AskUpstream,
}

/// One live stream, as `/streams` on the admin port shows it. Never the raw key: it may hold
/// credentials.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    /// The route's path.
    pub route: String,
    /// A digest of the stream key.
    pub key: String,
    /// Per-client (private) stream or shared.
    pub private: bool,
    /// Subscribers.
    pub clients: usize,
    /// Events buffered.
    pub buffered_events: usize,
    /// Bytes buffered.
    pub buffered_bytes: usize,
    /// Id of the oldest buffered event.
    pub first_id: Option<String>,
    /// Id of the newest event.
    pub last_id: Option<String>,
    /// `opening`, `streaming`, `reconnecting` or `closing`.
    pub upstream: &'static str,
    /// Times the upstream stream was reopened.
    pub reconnects: u64,
    /// Heartbeats sent: times the stream was quiet for a heartbeat interval.
    pub heartbeats: u64,
    /// In a cluster: `leader` (this instance reads the upstream), `follower` (it reads the
    /// stream from Redis), `local` (Redis is unavailable) or `claiming`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_role: Option<&'static str>,
    /// In a cluster: the instance that reads the upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
    /// In a cluster: whether Redis answers this instance (`up` or `down`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<&'static str>,
}

impl Hub {
    /// A hub under the limits of `config`: `buffer_total_bytes`, `max_streams` and the
    /// per-client budgets.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                streams: Mutex::new(HashMap::new()),
                buffered: AtomicUsize::new(0),
                heads: AtomicUsize::new(0),
                buffer_cap: AtomicUsize::new(
                    usize::try_from(config.buffer_total_bytes).unwrap_or(usize::MAX),
                ),
                max_streams: AtomicUsize::new(config.max_streams),
                evicting: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                drain_spread_ms: AtomicU64::new(0),
                private_ids: AtomicU64::new(0),
                router: std::sync::RwLock::new(None),
                stopping: tokio::sync::watch::Sender::new(false),
                budgets: Budgets::new(config),
                metrics,
                cluster: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Makes shared streams opened from now on part of `cluster`.
    pub(crate) fn join_cluster(&self, cluster: crate::cluster::Cluster) {
        let _ = self.shared.cluster.set(cluster);
    }

    /// The cluster, under `[cluster]`.
    pub(crate) fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.shared.cluster.get()
    }

    /// Streams alive now.
    pub fn live_streams(&self) -> usize {
        self.shared.lock_streams().len()
    }

    /// Bytes buffered across all streams.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.buffered.load(Ordering::Relaxed)
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.is_shutting_down()
    }

    /// Joins the stream with `key` on `route`, opening it (and its upstream request, from
    /// `template`) if there is none and `client`'s budget allows. `key` is `None` for a
    /// private, per-client stream.
    pub fn join(
        &self,
        route: &Arc<RouteEntry>,
        key: Option<StreamKey>,
        template: Template,
        client: ClientId,
    ) -> Joined {
        self.join_with(route, key, template, client, HttpSource::new)
    }

    /// [`Hub::join`], with the source a new stream reads made by `source` from the route and
    /// the template.
    pub(crate) fn join_with<S: Source>(
        &self,
        route: &Arc<RouteEntry>,
        key: Option<StreamKey>,
        template: Template,
        client: ClientId,
        source: impl FnOnce(Arc<RouteEntry>, Template) -> S,
    ) -> Joined {
        let (private, stream_key) = match &key {
            Some(key) => (false, key.clone()),
            None => {
                let n = self.shared.private_ids.fetch_add(1, Ordering::Relaxed);
                (true, key::private_key(&route.config.path, n))
            }
        };
        let mut streams = self.shared.lock_streams();
        if let Some(stream) = streams.get(&stream_key) {
            let mut state = stream.lock();
            if !state.closing {
                let subscriber = stream.join(&mut state);
                return Joined::Pending(Pending {
                    subscriber,
                    opener: None,
                    cookies: Vec::new(),
                });
            }
        }
        // Every stream holds an upstream request (and lingers after its last client), and
        // keeps its request head: their number and their heads are bounded like everything.
        let head = template.size();
        let cap = self.shared.buffer_cap.load(Ordering::Relaxed);
        if streams.len() >= self.shared.max_streams.load(Ordering::Relaxed)
            || self.shared.heads.load(Ordering::Relaxed) + head > cap
        {
            return Joined::Full(template);
        }
        let charge = match self.shared.budgets.take(client) {
            Grant::Granted(charge) => charge,
            Grant::Wait(wait, first) => {
                drop(streams);
                // A held subscription keeps its request head too: counted like a stream's.
                self.shared.heads.fetch_add(head, Ordering::Relaxed);
                self.shared.account(head, 0);
                route.metrics.held.inc();
                if first {
                    tracing::warn!(route = %route.config.path, %client, limit = wait.reason, fault = %crate::error::Fault::Client, "client over its budget of new streams: its subscriptions are held (200, heartbeats) until it may open more");
                } else {
                    tracing::debug!(route = %route.config.path, %client, limit = wait.reason, "subscription held for its client's stream budget");
                }
                return Joined::Held(Held {
                    hub: self.clone(),
                    route: route.clone(),
                    key,
                    template,
                    client,
                    wait,
                    counted: Counted {
                        gauge: route.metrics.held.clone(),
                        shared: self.shared.clone(),
                        head,
                    },
                });
            }
        };
        self.shared.heads.fetch_add(head, Ordering::Relaxed);
        self.shared.account(head, 0);
        let stream = Stream::new(
            route.clone(),
            stream_key.clone(),
            private,
            head,
            charge,
            self.shared.clone(),
        );
        let subscriber = stream.join(&mut stream.lock());
        let (tx, rx) = oneshot::channel();
        streams.insert(stream_key, stream.clone());
        // Spawned after the map's lock is released: a runtime that is shutting down drops the
        // task at once, and its cleanup takes that lock.
        drop(streams);
        task::spawn(&stream, source(route.clone(), template), Some(tx));
        Joined::Pending(Pending {
            subscriber,
            opener: Some(rx),
            cookies: Vec::new(),
        })
    }

    /// Applies a reloaded config to the live streams: each goes on under its route's new
    /// version, or ends cleanly when its route is gone or its identity changed.
    pub fn reconfigure(&self, router: &Arc<Router<RouteEntry>>, config: &Config) {
        *self.shared.router.write().unwrap_or_else(PoisonError::into_inner) = Some(router.clone());
        self.shared
            .max_streams
            .store(config.max_streams, Ordering::Relaxed);
        self.shared.buffer_cap.store(
            usize::try_from(config.buffer_total_bytes).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
        self.shared.budgets.reconfigure(config);
        let streams: Vec<Arc<Stream>> = self.shared.lock_streams().values().cloned().collect();
        for stream in streams {
            stream.reconfigure(router.get(&stream.path));
        }
        self.shared.account(0, 0);
    }

    /// The live streams, for the admin port.
    pub fn snapshot(&self) -> Vec<StreamInfo> {
        let streams: Vec<Arc<Stream>> = self.shared.lock_streams().values().cloned().collect();
        let mut infos: Vec<StreamInfo> = streams.iter().map(|stream| stream.info()).collect();
        if let Some(cluster) = self.cluster() {
            let redis = if cluster.is_up() { "up" } else { "down" };
            for info in infos.iter_mut().filter(|info| !info.private) {
                info.redis = Some(redis);
            }
        }
        infos.sort_by(|a, b| (&a.route, &a.key).cmp(&(&b.route, &b.key)));
        infos
    }

    /// Ends every stream: subscribers get what is buffered for them, then their responses end
    /// cleanly (browsers reconnect, to another instance, with their Last-Event-ID); spread
    /// over `spread`, a random share of each stream's subscribers at a time, so they do not
    /// all reconnect at once. A cluster leader hands its streams over at once and follows
    /// them from Redis meanwhile.
    pub fn shutdown(&self, spread: Duration) {
        self.shared.drain_spread_ms.store(
            u64::try_from(spread.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.stopping.send_replace(true);
        let streams: Vec<Arc<Stream>> = self.shared.lock_streams().values().cloned().collect();
        for stream in streams {
            stream.poke();
        }
    }
}

impl Pending {
    /// Waits (at most `limit`) for the stream's first upstream answer and says how to answer
    /// this subscription. Subscriptions never hang: past `limit` they are served from the
    /// stream (with heartbeats) while its task keeps trying.
    pub async fn outcome(mut self, limit: Duration) -> Outcome {
        let opener = self.opener.take();
        let mut phase = self.subscriber.stream.phase.subscribe();
        let cookies = &mut self.cookies;
        let decided = async move {
            match opener {
                // The task sends the opener the answer to its request when it is the stream
                // (for its cookies) or definitive, or drops the sender unused once the stream
                // can serve.
                Some(opener) => match opener.await {
                    Ok(Answer::Definitive(response)) => Some(Outcome::Answer(response)),
                    Ok(Answer::Stream(head)) => {
                        *cookies = head.get_all(SET_COOKIE).iter().cloned().collect();
                        None
                    }
                    Ok(Answer::Transient(_)) | Err(_) => None,
                },
                None => match phase.wait_for(|p| *p != Phase::Opening).await.map(|p| *p) {
                    Ok(Phase::Rejected) => Some(Outcome::AskUpstream),
                    _ => None,
                },
            }
        };
        // Undecided (served, or still waiting past `limit`): subscribed.
        match tokio::time::timeout(limit, decided).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) | Err(_) => Outcome::Subscribe(self),
        }
    }

    /// The app's headers for this subscriber's response: those of the stream's latest upstream
    /// response, and the cookies of the answer to the upstream request this subscription
    /// caused. `None` before the app ever answered the stream.
    pub fn app_headers(&self) -> Option<HeaderMap> {
        let mut headers = self.subscriber.stream.lock().app_headers.as_deref().cloned()?;
        for cookie in &self.cookies {
            headers.append(SET_COOKIE, cookie.clone());
        }
        Some(headers)
    }

    /// The response body for this subscriber, placed after `last_event_id`; it holds
    /// `admission` (the route's `max_clients` place) until it ends. In a cluster, events older
    /// than this instance's buffer come from Redis first.
    pub async fn attach(self, last_event_id: Option<&str>, admission: Option<Admission>) -> SubscriberBody {
        let backlog = match last_event_id {
            Some(id) => backfill::fetch(&self.subscriber.stream, id).await,
            None => None,
        };
        SubscriberBody::attach(self.subscriber, last_event_id, admission, backlog)
    }
}

impl Shared {
    /// The version of `route` in force: itself before any reload; `None` when a reload removed
    /// it or changed what identifies its streams.
    fn current(&self, route: &Arc<RouteEntry>) -> Option<Arc<RouteEntry>> {
        let router = self.router.read().unwrap_or_else(PoisonError::into_inner);
        match router.as_ref() {
            None => Some(route.clone()),
            Some(router) => router
                .get(&route.config.path)
                .filter(|new| stream::same_identity(route, new))
                .cloned(),
        }
    }

    pub(crate) fn lock_streams(&self) -> MutexGuard<'_, HashMap<StreamKey, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Over how long a stop ends the subscriptions.
    pub(crate) fn drain_spread(&self) -> Duration {
        Duration::from_millis(self.drain_spread_ms.load(Ordering::SeqCst))
    }

    /// Records bytes added to and freed from a ring, and enforces the global cap.
    pub(crate) fn account(&self, added: usize, freed: usize) {
        if added > 0 {
            self.buffered.fetch_add(added, Ordering::Relaxed);
        }
        self.release(freed);
        if self.buffered.load(Ordering::Relaxed) > self.buffer_cap.load(Ordering::Relaxed) {
            self.enforce_cap();
        }
    }

    /// Records bytes freed.
    pub(crate) fn release(&self, freed: usize) {
        if freed > 0 {
            self.buffered.fetch_sub(freed, Ordering::Relaxed);
        }
        self.metrics
            .buffer_bytes
            .set(i64::try_from(self.buffered.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    }

    /// Evicts the oldest events across all streams until the total is 5% under the cap (the
    /// margin makes the scan rare). One caller at a time; others go on.
    fn enforce_cap(&self) {
        if self.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        let streams: Vec<Arc<Stream>> = self.lock_streams().values().cloned().collect();
        let cap = self.buffer_cap.load(Ordering::Relaxed);
        let target = cap - cap / 20;
        let mut evicted = 0u64;
        while self.buffered.load(Ordering::Relaxed) > target {
            let oldest = streams
                .iter()
                .filter_map(|stream| stream.lock().ring.oldest_at().map(|at| (at, stream)))
                .min_by_key(|(at, _)| *at);
            let Some((_, stream)) = oldest else { break };
            let freed = stream.lock().ring.pop_oldest();
            self.release(freed);
            evicted += 1;
        }
        self.evicting.store(false, Ordering::Release);
        if evicted > 0 {
            self.metrics.cap_evictions.inc_by(evicted);
            tracing::warn!(
                evicted,
                cap,
                "buffer_total_bytes reached: evicted the oldest events across streams"
            );
        }
    }
}
