//! Shared SSE streams: one upstream request per stream key, fanned out to every subscriber.
//!
//! - [`ring`]: the bounded buffer of encoded events, and resume by id.
//! - [`stream`]: one stream's state and the task (an actor) that owns its upstream.
//! - [`subscriber`]: the response body of one client, a cursor into the ring.
//! - [`key`]: stream keys and `Last-Event-ID`.
//!
//! Per-event work (parse, id, encode, buffer) happens once per stream, in its task; a client
//! costs a cursor, a waker slot and a heartbeat counter.

pub mod key;
pub mod ring;
pub mod stream;
pub mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::Response;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::route::RouteEntry;
use stream::{Phase, Stream, Subscriber, Template};
pub use subscriber::{SlowClient, Start, SubscriberBody};

/// A counter for operations to read (and, later, export).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the hub has done, counted.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events received from upstreams and buffered.
    pub events_received: Counter,
    /// Upstream events dropped for exceeding `max_event_bytes`.
    pub events_dropped: Counter,
    /// Events an upstream sent again (by id) after a reconnect, dropped.
    pub repeats_dropped: Counter,
    /// Subscriptions resumed exactly from the buffer.
    pub resumes: Counter,
    /// Subscriptions whose Last-Event-ID was not in the buffer.
    pub gaps: Counter,
    /// Clients disconnected for falling behind the buffer (or not reading).
    pub slow_disconnects: Counter,
    /// Upstream streams that ended or broke and were reopened.
    pub upstream_reconnects: Counter,
    /// Failed upstream attempts (unreachable, timeout, 502/503/504).
    pub upstream_failures: Counter,
    /// Events evicted early to keep all buffers under `buffer_total_bytes`.
    pub cap_evictions: Counter,
}

/// The registry of live streams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// What streams share with the hub.
#[derive(Debug)]
pub struct Shared {
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    buffered: AtomicUsize,
    buffer_cap: usize,
    evicting: AtomicBool,
    shutting_down: AtomicBool,
    private_ids: AtomicU64,
    /// Counters.
    pub stats: Stats,
}

/// A subscription that picked (or opened) its stream, before its response is decided.
#[derive(Debug)]
pub struct Pending {
    subscriber: Subscriber,
    /// Present when this subscription opened the stream: receives a definitive first answer.
    opener: Option<oneshot::Receiver<Response<Incoming>>>,
}

enum Decided {
    Answer(Response<Incoming>),
    Refused,
    Serve,
}

/// How a pending subscription is to be answered.
#[derive(Debug)]
pub enum Outcome {
    /// Serve it from the stream (200).
    Subscribe(Pending),
    /// The upstream's definitive answer, for this subscription only (it opened the stream).
    Answer(Response<Incoming>),
    /// The upstream refused the stream this subscription waited on; ask the upstream directly.
    AskUpstream,
}

impl Hub {
    /// A hub whose buffers together hold at most `buffer_total_bytes`.
    pub fn new(buffer_total_bytes: u64) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                streams: Mutex::new(HashMap::new()),
                buffered: AtomicUsize::new(0),
                buffer_cap: usize::try_from(buffer_total_bytes).unwrap_or(usize::MAX),
                evicting: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                private_ids: AtomicU64::new(0),
                stats: Stats::default(),
            }),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
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

    /// Joins the stream with `key` on `route`, opening it (and its upstream request, built from
    /// `template`) if there is none. `key` is `None` for a private, per-client stream.
    pub fn join(
        &self,
        route: &Arc<RouteEntry>,
        key: Option<String>,
        template: impl FnOnce() -> Template,
    ) -> Pending {
        let (private, key) = match key {
            Some(key) => (false, key),
            None => {
                let n = self.shared.private_ids.fetch_add(1, Ordering::Relaxed);
                (true, format!("{}\nprivate={n}", route.config.path))
            }
        };
        let mut streams = self.shared.lock_streams();
        if let Some(stream) = streams.get(&key) {
            let mut state = stream.lock();
            if !state.closing {
                let subscriber = stream.join(&mut state);
                return Pending {
                    subscriber,
                    opener: None,
                };
            }
        }
        let stream = Stream::new(route.clone(), key.clone(), private, self.shared.clone());
        let subscriber = stream.join(&mut stream.lock());
        let (tx, rx) = oneshot::channel();
        stream.spawn(template(), Some(tx));
        streams.insert(key, stream);
        Pending {
            subscriber,
            opener: Some(rx),
        }
    }

    /// Ends every stream: subscribers get what is buffered for them, then their responses end
    /// cleanly (browsers reconnect, to another instance, with their Last-Event-ID).
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
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
    pub async fn outcome(self, limit: Duration) -> Outcome {
        let Pending { subscriber, opener } = self;
        let mut phase = subscriber.stream.phase.subscribe();
        let decided = async {
            match opener {
                // The task sends the opener a definitive answer, or drops the sender unused
                // once the stream can serve.
                Some(opener) => opener.await.ok().map(Decided::Answer).unwrap_or(Decided::Serve),
                None => match phase.wait_for(|p| *p != Phase::Opening).await.map(|p| *p) {
                    Ok(Phase::Rejected) => Decided::Refused,
                    _ => Decided::Serve,
                },
            }
        };
        match tokio::time::timeout(limit, decided).await {
            Ok(Decided::Answer(response)) => Outcome::Answer(response),
            Ok(Decided::Refused) => Outcome::AskUpstream,
            Ok(Decided::Serve) | Err(_) => Outcome::Subscribe(Pending {
                subscriber,
                opener: None,
            }),
        }
    }

    /// The response body for this subscriber, placed after `last_event_id`.
    pub fn attach(self, last_event_id: Option<&str>) -> (SubscriberBody, Start) {
        let (body, start) = SubscriberBody::attach(self.subscriber, last_event_id);
        body.log_start(&start, last_event_id);
        (body, start)
    }
}

impl Shared {
    pub(crate) fn lock_streams(&self) -> MutexGuard<'_, HashMap<String, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Records bytes added to and freed from a ring, and enforces the global cap.
    pub(crate) fn account(&self, added: usize, freed: usize) {
        if added > 0 {
            self.buffered.fetch_add(added, Ordering::Relaxed);
        }
        self.release(freed);
        if self.buffered.load(Ordering::Relaxed) > self.buffer_cap {
            self.enforce_cap();
        }
    }

    /// Records bytes freed.
    pub(crate) fn release(&self, freed: usize) {
        if freed > 0 {
            self.buffered.fetch_sub(freed, Ordering::Relaxed);
        }
    }

    /// Evicts the oldest events across all streams until the total is 5% under the cap (the
    /// margin makes the scan rare). One caller at a time; others go on.
    fn enforce_cap(&self) {
        if self.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        let streams: Vec<Arc<Stream>> = self.lock_streams().values().cloned().collect();
        let target = self.buffer_cap - self.buffer_cap / 20;
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
            self.stats.cap_evictions.add(evicted);
            tracing::warn!(
                evicted,
                cap = self.buffer_cap,
                "buffer_total_bytes reached: evicted the oldest events across streams"
            );
        }
    }
}
