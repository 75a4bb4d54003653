//! The task that owns a stream's source: it opens it, parses what it reads, appends each event
//! once, wakes the subscribers, writes heartbeats, reopens the source with backoff, and ends the
//! stream (after `linger`, on a reload, on shutdown, when the upstream stays down, or when the
//! task itself panics).

use std::ops::ControlFlow::{self, Break, Continue};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::BytesMut;
use http::header::HeaderMap;
use tokio::sync::oneshot;
use tokio::time::{sleep, Instant, Sleep};

use super::key::is_resumable;
use super::pacer::{coalesce_window, fire, Pacer};
use super::replay::Replay;
use super::source::{Answer, Source, Step};
use super::stream::{End, Phase, Stream};
use crate::config::{format_duration, IdMode, OnGap};
use crate::error::{chain, Fault};
use crate::route::RouteEntry;
use crate::sse::{Item, Parser};
use crate::upstream::backoff::Backoff;
use crate::upstream::headers::{header_bytes, stream_headers, MAX_STREAM_HEADER_BYTES};
use crate::upstream::BoxError;

mod cluster;
mod encode;
#[cfg(test)]
mod tests;

pub(super) use cluster::{Clustered, Outgoing};
pub(super) use encode::{encode_at, push_event};

/// An upstream stream that lasted this long and gave an event is reopened at once when it ends
/// cleanly, and resets the backoff.
const SETTLED: Duration = Duration::from_secs(1);
/// Aged events are evicted at most this long after they pass `buffer_age` (the events of one
/// such interval go together, so a steady stream's upkeep runs at most once per interval).
const UPKEEP_SLACK: Duration = Duration::from_millis(250);
/// Starts the task that feeds the stream from `source`. `opener` receives the answer to
/// the first request when it is the stream (its headers, for the cookies) or definitive
/// (a transient failure never reaches it: the stream serves then); it is dropped
/// unanswered once subscribers can be served.
///
/// The task's drop guard ends the stream however the task ends; a watcher on its handle
/// says so when it panicked, with the panic's message (the guard alone cannot tell a panic
/// from a runtime dropped while its thread unwinds for another reason).
pub(super) fn spawn<S: Source>(stream: &Arc<Stream>, source: S, opener: Option<oneshot::Sender<Answer>>) {
    let task = tokio::spawn(Task::new(stream.clone(), source, opener).run());
    let (route, digest, metrics) = (
        stream.path.clone(),
        stream.digest.clone(),
        stream.shared.metrics.clone(),
    );
    tokio::spawn(async move {
        let Err(failed) = task.await else { return };
        if !failed.is_panic() {
            return;
        }
        let payload = failed.into_panic();
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        metrics.stream_task_panics.inc();
        tracing::error!(%route, stream = %digest, fault = %Fault::Internal, panic = %why, "the stream's task panicked; its clients' responses ended so they reconnect and resume by id");
    });
}

/// How often a spread drain lets another share of subscribers go: twenty steps, at most one
/// per 50 ms.
fn drain_step(spread: Duration) -> Duration {
    (spread / 20).max(Duration::from_millis(50))
}

/// The next step of a drain in progress (pends without one).
async fn drain_due(drain: &mut Option<(Instant, Pin<Box<Sleep>>)>) {
    match drain {
        Some((_, timer)) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// One stream's task: everything the loop needs between two events.
pub(super) struct Task<S> {
    stream: Arc<Stream>,
    source: S,
    /// The route's version in force (a reload swaps it).
    route: Arc<RouteEntry>,
    /// Receives the answer to the first request, for the subscription that caused it; dropped
    /// unanswered once subscribers can be served.
    opener: Option<oneshot::Sender<Answer>>,
    parser: Parser,
    backoff: Backoff,
    /// Since when the upstream has been failing, if it is.
    down_since: Option<Instant>,
    /// The upstream streamed at least once.
    was_live: bool,
    /// The upstream stream in progress.
    live: Option<Live>,
    /// The wait before opening the source again.
    retry: Option<Pin<Box<Sleep>>>,
    heartbeat: Option<Pin<Box<Sleep>>>,
    /// Runs while the stream has no subscriber.
    linger: Option<Pin<Box<Sleep>>>,
    /// While ssegate stops over `drain_spread`: since when, and the next step.
    drain: Option<(Instant, Pin<Box<Sleep>>)>,
    pacer: Pacer,
    /// When aged events are next due for eviction, or the upstream's down grace for a check:
    /// armed only while there is such a deadline (an idle stream with an empty buffer and a
    /// live upstream has no timer at all).
    upkeep: Option<Pin<Box<Sleep>>>,
    scratch: Scratch,
    /// The stream's tie to the cluster (shared streams under `[cluster]`).
    cluster: Option<Box<Clustered>>,
    // Last: dropped after the source and the live guard, as the stream's final act.
    cleanup: Cleanup,
}

/// An upstream stream in progress: counted as streaming while it lives.
struct Live {
    since: Instant,
    got_event: bool,
    _connected: Connected,
}

/// Counts an upstream stream as connected (the `upstream_streams` gauge, `/streams`) while it
/// lives.
struct Connected(Arc<Stream>);

impl Connected {
    fn new(stream: &Arc<Stream>) -> Connected {
        stream.metrics.upstream_streams.inc();
        stream.connected.store(true, Ordering::Relaxed);
        Connected(stream.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.metrics.upstream_streams.dec();
        self.0.connected.store(false, Ordering::Relaxed);
    }
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

/// Ends the stream when its task ends, however it ends: a panic too, so its clients end
/// cleanly (and resume by id elsewhere) instead of waiting on a stream nobody feeds.
struct Cleanup {
    stream: Arc<Stream>,
    /// Set when the loop ends; `None` on drop means the task panicked or was dropped.
    end: Option<End>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let end = match self.end.take() {
            Some(end) => end,
            // Tokio drops a panicking task's future while unwinding.
            None if std::thread::panicking() => End::Panicked,
            // The runtime dropped the task: it is going away.
            None => End::Shutdown,
        };
        self.stream.finish(end);
    }
}

impl<S: Source> Task<S> {
    /// The task of `stream`, reading `source`.
    pub(super) fn new(stream: Arc<Stream>, source: S, opener: Option<oneshot::Sender<Answer>>) -> Task<S> {
        let route = stream.route();
        let settings = &route.config.settings;
        let cluster = (!stream.private)
            .then(|| stream.shared.cluster.get().cloned())
            .flatten()
            .map(|cluster| Box::new(Clustered::new(cluster, &stream.key)));
        Task {
            cleanup: Cleanup {
                stream: stream.clone(),
                end: None,
            },
            stream,
            source,
            opener,
            parser: Parser::new(settings.max_event_bytes),
            backoff: Backoff::new(settings.reconnect_initial, settings.reconnect_max),
            down_since: None,
            was_live: false,
            live: None,
            retry: None,
            heartbeat: settings.heartbeat.map(|every| Box::pin(sleep(every))),
            linger: None,
            drain: None,
            pacer: Pacer::default(),
            upkeep: None,
            cluster,
            scratch: Scratch {
                items: Vec::new(),
                wakers: Vec::new(),
                encoded: BytesMut::new(),
                pending_retry: None,
                replay: None,
                told_unsendable: false,
            },
            route,
        }
    }

    /// Runs the stream until it ends; then (or if this panics) the stream is finished.
    pub(super) async fn run(mut self) {
        tracing::debug!(route = %self.stream.path, stream = %self.stream.digest, "stream opened");
        if self.cluster.is_some() {
            // Whether this instance reads the upstream is for the cluster to say.
            self.join_cluster();
        } else {
            self.source.open(None);
        }
        let end = loop {
            let flow = tokio::select! {
                biased;
                () = self.stream.control.notified() => self.on_control(),
                () = fire(&mut self.linger) => self.on_linger(),
                () = drain_due(&mut self.drain) => self.on_drain(),
                () = self.pacer.due() => {
                    self.stream.wake(&mut self.scratch.wakers);
                    Continue(())
                }
                () = fire(&mut self.heartbeat) => self.on_heartbeat(),
                () = fire(&mut self.upkeep) => self.on_upkeep(),
                () = fire(&mut self.retry) => self.on_retry(),
                step = self.source.next() => match step {
                    Step::Answer(answer) => self.on_answer(answer),
                    Step::Chunk(chunk) => self.on_chunk(&chunk),
                    Step::End(error) => self.on_end(error),
                },
                happened = cluster::next(&mut self.cluster) => self.on_cluster(happened),
            };
            if let Break(end) = flow {
                break end;
            }
            if self.upkeep.is_none() {
                self.arm_upkeep();
            }
        };
        self.leave_cluster();
        self.cleanup.end = Some(end);
    }

    /// The last subscriber left, a reload happened, or ssegate is stopping.
    fn on_control(&mut self) -> ControlFlow<End> {
        if self.stream.shared.is_shutting_down() {
            let spread = self.stream.shared.drain_spread();
            if spread.is_zero() {
                return Break(End::Shutdown);
            }
            // The subscribers end a share at a time; a cluster leader hands the stream over
            // now and follows it meanwhile.
            self.hand_over();
            if self.drain.is_none() {
                self.drain = Some((Instant::now(), Box::pin(sleep(drain_step(spread)))));
            }
            return Continue(());
        }
        let (retire, changed, subscribers) = {
            let mut state = self.stream.lock();
            (
                state.retire,
                std::mem::take(&mut state.route_changed),
                state.subscribers,
            )
        };
        if retire {
            return Break(End::Reconfigured);
        }
        if changed {
            self.reload();
        }
        if self.linger.is_none() && subscribers == 0 {
            let wait = if self.stream.private {
                Duration::ZERO
            } else {
                self.route.config.settings.linger
            };
            self.linger = Some(Box::pin(sleep(wait)));
        }
        Continue(())
    }

    /// Takes the route's reloaded settings: from the next event, timer or reconnect on.
    fn reload(&mut self) {
        self.route = self.stream.route();
        self.source.reconfigure(&self.route);
        let settings = &self.route.config.settings;
        self.parser.set_max_event_bytes(settings.max_event_bytes);
        self.backoff
            .limits(settings.reconnect_initial, settings.reconnect_max);
        self.heartbeat = settings.heartbeat.map(|every| Box::pin(sleep(every)));
        // buffer_age or upstream_down_grace may have changed.
        self.upkeep = None;
        if self.linger.is_some() {
            self.linger = Some(Box::pin(sleep(settings.linger)));
        }
        tracing::info!(route = %self.stream.path, stream = %self.stream.digest, "stream took the reloaded route settings");
    }

    /// A step of a spread drain: a larger share of the subscribers ends; at the end of
    /// `drain_spread`, the stream.
    fn on_drain(&mut self) -> ControlFlow<End> {
        let spread = self.stream.shared.drain_spread();
        let Some((since, timer)) = self.drain.as_mut() else {
            return Continue(());
        };
        let share = since.elapsed().as_secs_f64() / spread.as_secs_f64().max(0.001);
        if share >= 1.0 {
            return Break(End::Shutdown);
        }
        timer.as_mut().reset(Instant::now() + drain_step(spread));
        // Truncation intended: a share in 0..1000.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let cutoff = (share * 1000.0) as u16;
        self.stream.lock().drain_cutoff = cutoff;
        self.stream.wake(&mut self.scratch.wakers);
        Continue(())
    }

    fn on_linger(&mut self) -> ControlFlow<End> {
        self.linger = None;
        if self.stream.retire_if_unused() {
            return Break(End::Lingered);
        }
        Continue(())
    }

    fn on_heartbeat(&mut self) -> ControlFlow<End> {
        self.stream.heartbeat(&mut self.scratch.wakers);
        self.reset_heartbeat();
        Continue(())
    }

    /// The stream was just heard from: the next heartbeat is due a whole interval from now.
    fn reset_heartbeat(&mut self) {
        if let (Some(timer), Some(every)) = (self.heartbeat.as_mut(), self.route.config.settings.heartbeat) {
            timer.as_mut().reset(Instant::now() + every);
        }
    }

    /// Arms the upkeep timer for the first of: the oldest buffered event passing `buffer_age`,
    /// the upstream's `upstream_down_grace` running out. Neither due: no timer.
    fn arm_upkeep(&mut self) {
        let settings = &self.route.config.settings;
        let aged = settings.buffer_age.and_then(|age| {
            let oldest = self.stream.lock().ring.oldest_at()?;
            Some(oldest + age + UPKEEP_SLACK)
        });
        let down = self
            .down_since
            .zip(settings.upstream_down_grace)
            .map(|(since, grace)| since + grace);
        let due = match (aged, down) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        };
        self.upkeep = due.map(|at| Box::pin(tokio::time::sleep_until(at)));
    }

    /// Evicts aged events; ends the stream when its upstream has been down too long. The timer
    /// is armed again for the next deadline when the loop goes round.
    fn on_upkeep(&mut self) -> ControlFlow<End> {
        self.upkeep = None;
        let freed = self.stream.lock().ring.evict_expired(tokio::time::Instant::now());
        self.stream.shared.account(0, freed);
        if let (Some(since), Some(grace)) = (self.down_since, self.route.config.settings.upstream_down_grace)
        {
            if since.elapsed() >= grace {
                return Break(End::DownTooLong(grace));
            }
        }
        Continue(())
    }

    /// The backoff is over: ask again, resuming after the last id the upstream gave.
    fn on_retry(&mut self) -> ControlFlow<End> {
        self.retry = None;
        let last_id = self.parser.last_event_id();
        let resume = (!last_id.is_empty()).then_some(last_id);
        self.scratch.replay = resume.map(|id| Replay::new(id, self.stream.lock().ring.app_ids()));
        self.source.open(resume);
        Continue(())
    }

    fn on_answer(&mut self, answer: Answer) -> ControlFlow<End> {
        match answer {
            Answer::Stream(headers) => {
                let (route, stream) = (&self.stream.path, &self.stream.digest);
                tracing::info!(%route, %stream, upstream = %self.source.origin(), "upstream stream connected");
                let settings = &self.route.config.settings;
                if self.down_since.is_some() && self.was_live && settings.on_gap == OnGap::Event {
                    // The app was unreachable for a while: what it sent meanwhile reached no
                    // one. Say so, in order, to everyone.
                    self.announce_outage();
                }
                self.was_live = true;
                // The backoff is reset only once this stream proves it lasts (see `on_end`):
                // an endpoint that ends every stream at once is backed off like one that fails.
                self.live = Some(Live {
                    since: Instant::now(),
                    got_event: false,
                    _connected: Connected::new(&self.stream),
                });
                self.down_since = None;
                // Every subscriber from now on gets the app's latest headers; the opener also
                // its cookies (taken from the answer it is sent).
                self.keep_app_headers(&headers);
                self.share_headers();
                if let Some(tx) = self.opener.take() {
                    let _ = tx.send(Answer::Stream(headers));
                }
                self.serve();
                Continue(())
            }
            Answer::Transient(why) => {
                self.failed(&why);
                Continue(())
            }
            Answer::Definitive(response) => {
                let status = response.status();
                if self
                    .opener
                    .take()
                    .is_some_and(|tx| tx.send(Answer::Definitive(response)).is_ok())
                {
                    return Break(End::Rejected(status));
                }
                Break(End::Definitive(status))
            }
        }
    }

    /// A transient failure: serve subscribers anyway (200, heartbeats) and retry after a delay.
    fn failed(&mut self, why: &str) {
        self.down_since.get_or_insert_with(Instant::now);
        // The down grace may run out before the timer armed for aged events.
        self.upkeep = None;
        self.serve();
        self.stream.metrics.upstream_failures.inc();
        let delay = self.backoff.next_delay();
        tracing::warn!(
            route = %self.stream.path,
            stream = %self.stream.digest,
            upstream = %self.source.origin(),
            fault = %Fault::Upstream,
            "{why}; clients stay connected, retrying in {}",
            format_duration(delay)
        );
        self.retry = Some(Box::pin(sleep(delay)));
    }

    /// Subscribers can be served from now on: release the opener and everyone waiting.
    fn serve(&mut self) {
        self.opener.take();
        self.stream.phase.send_if_modified(|phase| {
            let opening = *phase == Phase::Opening;
            if opening {
                *phase = Phase::Open;
            }
            opening
        });
    }

    fn on_chunk(&mut self, chunk: &[u8]) -> ControlFlow<End> {
        let items = &mut self.scratch.items;
        self.parser.feed(chunk, |item| items.push(item));
        if let Some(subscribers) = self.append() {
            if let Some(live) = self.live.as_mut() {
                live.got_event = true;
            }
            if self
                .pacer
                .appended(coalesce_window(self.route.config.settings.coalesce, subscribers))
            {
                self.stream.wake(&mut self.scratch.wakers);
            }
            self.reset_heartbeat();
        }
        Continue(())
    }

    fn on_end(&mut self, error: Option<BoxError>) -> ControlFlow<End> {
        self.parser.finish();
        let (lasted, got_event) = self.live.take().map_or((Duration::ZERO, false), |live| {
            (live.since.elapsed(), live.got_event)
        });
        // A stream that streamed for a while ended as apps' workers do when they time out:
        // reopened at once, since a naive app loses what it sends while no connection is open.
        // One that ends sooner (a one-shot endpoint) is backed off like a failure, so the app
        // is never polled in a tight loop.
        let settled = lasted >= SETTLED && got_event;
        if settled || lasted >= self.route.config.settings.reconnect_max {
            self.backoff.reset();
        }
        let last_id = self.parser.last_event_id();
        if self.stream.private && (last_id.is_empty() || !is_resumable(last_id)) {
            // Per-client, without an id to resume by: a new request would replay the app's
            // beginning to this client as duplicates. Its response ends as the app's did; the
            // browser reconnects per its retry, as it would directly.
            return Break(End::AppEnded);
        }
        let delay = if error.is_none() && settled {
            Duration::ZERO
        } else {
            self.backoff.next_delay()
        };
        self.stream.metrics.upstream_reconnects.inc();
        self.stream.reconnects.fetch_add(1, Ordering::Relaxed);
        let (route, stream) = (&self.stream.path, &self.stream.digest);
        match error {
            Some(error) => {
                tracing::warn!(%route, %stream, error = %chain(error.as_ref()), "upstream stream broke; reconnecting in {}", format_duration(delay))
            }
            None => {
                tracing::info!(%route, %stream, "upstream stream ended; reconnecting in {}", format_duration(delay))
            }
        }
        self.retry = Some(Box::pin(sleep(delay)));
        Continue(())
    }

    /// Keeps the headers of the app's latest event-stream response for every subscriber from
    /// now on, counted in the buffered bytes.
    fn keep_app_headers(&self, app: &HeaderMap) {
        let (headers, dropped) = stream_headers(app);
        if dropped > 0 {
            tracing::warn!(route = %self.stream.path, stream = %self.stream.digest, dropped, limit = MAX_STREAM_HEADER_BYTES, "the app's response headers are larger than subscribers are given; the last ones are left out");
        }
        let bytes = header_bytes(&headers);
        let before = {
            let mut state = self.stream.lock();
            state.app_headers = Some(Arc::new(headers));
            std::mem::replace(&mut state.app_header_bytes, bytes)
        };
        self.stream.shared.account(bytes, before);
    }

    /// Encodes each item of `scratch.items` once and appends the events to the ring (a cluster
    /// leader queues them for the log instead: they reach the ring once Redis has them). When
    /// anything was appended, returns the number of subscribers (to be woken).
    fn append(&mut self) -> Option<usize> {
        let scratch = &mut self.scratch;
        if scratch.items.is_empty() {
            return None;
        }
        let stream = &self.stream;
        let settings = &self.route.config.settings;
        let inject = settings.ids == IdMode::Inject;
        let mut outbox = self.cluster.as_mut().and_then(|c| c.outbox());
        let now = tokio::time::Instant::now();
        let (mut added, mut freed, mut events, mut dropped, mut repeats) = (0, 0, 0u64, 0u64, 0u64);
        let mut unsendable = 0u64;
        let subscribers = {
            let mut state = stream.lock();
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
                        events += 1;
                        let retry = scratch.pending_retry.take();
                        if let Some(outbox) = outbox.as_mut() {
                            outbox.push(Outgoing { event, retry });
                            continue;
                        }
                        let (bytes, evicted) =
                            push_event(&mut state.ring, &mut scratch.encoded, &event, retry, inject, now);
                        added += bytes;
                        freed += evicted;
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
        let metrics = &stream.metrics;
        metrics.events_received.inc_by(events);
        if dropped > 0 {
            metrics.events_dropped.inc_by(dropped);
            tracing::warn!(route = %stream.path, stream = %stream.digest, dropped, limit = settings.max_event_bytes, "dropped upstream events larger than max_event_bytes");
        }
        if unsendable > 0 && !std::mem::replace(&mut scratch.told_unsendable, true) {
            tracing::warn!(route = %stream.path, stream = %stream.digest, events = unsendable, ids = ?settings.ids, "the app gave ids a client could not send back as Last-Event-ID (control characters, edge whitespace or over 1 KiB): replaced by ssegate's own (inject) or left out (passthrough)");
        }
        metrics.unsendable_ids.inc_by(unsendable);
        if repeats > 0 {
            metrics.repeats_dropped.inc_by(repeats);
            tracing::debug!(route = %stream.path, stream = %stream.digest, repeats, "dropped events the upstream sent again");
        }
        stream.shared.account(added, freed);
        if outbox.is_some() {
            self.flush_outbox();
        }
        (added > 0).then_some(subscribers)
    }

    /// Appends a `gap` event whose data is the id of the last event before an upstream outage.
    fn announce_outage(&mut self) {
        let last = self.stream.lock().ring.newest_id().unwrap_or_default();
        tracing::info!(route = %self.stream.path, stream = %self.stream.digest, last_id = %last, "upstream back after an outage: gap event sent");
        self.stream.metrics.outage_gaps.inc();
        self.scratch.items.push(Item::Event(crate::sse::Event {
            event: Some("gap".to_owned()),
            data: last,
            id: None,
        }));
        // ssegate's own event is no part of the app's replay.
        let replay = self.scratch.replay.take();
        let appended = self.append();
        self.scratch.replay = replay;
        if appended.is_some() {
            self.stream.wake(&mut self.scratch.wakers);
        }
    }
}
