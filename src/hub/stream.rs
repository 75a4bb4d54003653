//! One stream: its handle, the state its subscribers read (ring, wakers, headers) under one
//! lock, and a subscriber's place in it. The task that feeds it is in `hub/task.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use http::header::HeaderMap;
use http::StatusCode;
use tokio::sync::{watch, Notify};

use super::budget::Charge;
use super::key::StreamKey;
use super::ring::{Bounds, Ring};
use super::wakers::Wakers;
use super::Shared;
use crate::config::{format_duration, IdMode, Settings};
use crate::metrics::RouteMetrics;
use crate::route::RouteEntry;

// The HTTP source's request, where the proxy and held subscriptions have always found it.
pub(crate) use super::source::http::Template;

/// Where a stream's first upstream answer stands, for subscriptions waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No answer yet.
    Opening,
    /// Subscribers are served: the upstream is streaming, or down and being retried.
    Open,
    /// The upstream gave a definitive non-stream answer; each waiting subscription must ask the
    /// upstream itself, since that answer is never shared.
    Rejected,
}

/// A stream shared by the subscriptions with one key (or owned by one, in per-client mode).
#[derive(Debug)]
pub(crate) struct Stream {
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
    pub(super) control: Notify,
    pub(super) phase: watch::Sender<Phase>,
    /// Whether the upstream is streaming now, and how often it was reopened (for `/streams`).
    pub(super) connected: AtomicBool,
    pub(super) reconnects: AtomicU64,
    /// The last read of the cluster's log for resuming clients, one read at a time.
    pub(super) backfill: tokio::sync::Mutex<Option<Fetched>>,
}

/// What subscribers read, under the stream's lock (never held across an await).
#[derive(Debug)]
pub(crate) struct State {
    /// The route's current version: a reload swaps it, keeping buffer and subscribers.
    pub(super) route: Arc<RouteEntry>,
    /// A reload replaced `route`: the task must pick up the new settings.
    pub(super) route_changed: bool,
    /// A reload removed (or changed the identity of) the route: the task must end the stream.
    pub(super) retire: bool,
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
    pub(super) app_header_bytes: usize,
    /// The stream's charge on the budget of the client that opened it, until it ends.
    pub(super) charge: Option<Charge>,
    /// While ssegate stops over `drain_spread`: subscribers whose rank (0–999) is below this
    /// end, once they have what was buffered for them.
    pub(super) drain_cutoff: u16,
    /// In a cluster: the app gives its events ids (so a resume by one may be looked up in
    /// the log).
    pub(super) app_ids: bool,
    /// Its role in the cluster and the lease holder, for `/streams` (`None` outside one).
    pub(super) cluster: Option<(&'static str, Option<String>)>,
}

/// Entries read from a cluster's log for resuming clients (`hub/backfill.rs`), numbered from
/// `from`: kept for the next resumes they cover.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(super) from: u64,
    pub(super) entries: Arc<[bytes::Bytes]>,
}

impl Fetched {
    /// The number after the last entry.
    pub(super) fn end(&self) -> u64 {
        self.from + self.entries.len() as u64
    }
}

/// A place among a stream's subscribers: counted from the moment a subscription picks the
/// stream (so linger never tears down a stream someone is about to read), released on drop.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(super) stream: Arc<Stream>,
    pub(super) slot: usize,
    /// The sequence number the stream's next event had when this subscription joined: a new
    /// subscriber gets every event from there on, so the one that opens a stream gets the
    /// app's first event even when it comes with the response head.
    pub(super) joined_at: u64,
}

impl Subscriber {
    /// Its place (0–999) in the order a spread drain ends subscribers: pseudo-random, so each
    /// stream's subscribers leave a share at a time rather than in the order they came.
    pub(super) fn drain_rank(&self) -> u16 {
        let mixed = u32::try_from(self.slot % (1 << 31))
            .unwrap_or(0)
            .wrapping_mul(2_654_435_761);
        u16::try_from((mixed >> 16) % 1000).unwrap_or(0)
    }
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

/// The ring limits of a route's settings.
fn limits(settings: &Settings) -> Bounds {
    Bounds {
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
                drain_cutoff: 0,
                app_ids: false,
                cluster: None,
            }),
            control: Notify::new(),
            phase: watch::channel(Phase::Opening).0,
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            backfill: tokio::sync::Mutex::new(None),
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
                        .set_limits(limits(&new.config.settings), tokio::time::Instant::now())
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
            heartbeats: state.heartbeat_gen,
            cluster_role: state.cluster.as_ref().map(|(role, _)| *role),
            lease_holder: state.cluster.as_ref().and_then(|(_, holder)| holder.clone()),
            redis: None,
        }
    }

    /// Tells the task to look at the subscriber count and the shutdown flag.
    pub(super) fn poke(&self) {
        self.control.notify_one();
    }

    /// Wakes every waiting subscriber.
    pub(super) fn wake(&self, wakers: &mut Vec<Waker>) {
        self.lock().wakers.drain_into(wakers);
        for waker in wakers.drain(..) {
            waker.wake();
        }
    }

    /// Tells every subscriber the stream was quiet for a heartbeat interval.
    pub(super) fn heartbeat(&self, wakers: &mut Vec<Waker>) {
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
    pub(super) fn retire_if_unused(&self) -> bool {
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

    /// Takes the stream out of the hub's registry, if it is still the one registered under its
    /// key (a new stream may have taken its place).
    pub(super) fn leave_registry(&self) {
        let mut streams = self.shared.lock_streams();
        if streams
            .get(&self.key)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), self))
        {
            streams.remove(&self.key);
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

/// Why a stream ended.
#[derive(Debug)]
pub(super) enum End {
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
    /// The task panicked.
    Panicked,
}

impl Stream {
    /// Ends the stream: out of the hub, subscribers told to flush and end, the opening client's
    /// budget charge released.
    pub(super) fn finish(&self, end: End) {
        let reason = match end {
            End::Shutdown => "ssegate is stopping",
            End::Reconfigured => "the route was removed or changed by a reload",
            End::Lingered => "no subscriber within linger",
            End::DownTooLong(_) => "upstream down longer than upstream_down_grace",
            End::Rejected(_) | End::Definitive(_) => "upstream answered with a non-stream response",
            End::AppEnded => "the app's stream ended (per-client, no id to resume by)",
            End::Panicked => "the stream's task failed",
        };
        self.leave_registry();
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
            End::Panicked => {
                // Counted and logged with its message by the watcher `Stream::spawn` starts.
                tracing::debug!(%route, stream = %self.digest, subscribers, "stream ended: its task failed")
            }
        }
    }
}
