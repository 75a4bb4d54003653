//! A subscriber's response body: a cursor into its stream's ring, not a copy of it.
//!
//! It writes the prelude (`retry:`, the priming id or a `gap` event), then every event from its
//! cursor on (replay and live are the same read), and a heartbeat comment when the stream has
//! been quiet. Per client it holds an `Arc`, a few counters and the prelude until sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};

use super::backfill::Backlog;
use super::key::MAX_LAST_EVENT_ID;
use super::ring::Resume;
use super::stream::Subscriber;
use crate::config::OnGap;
use crate::route::Admission;
use crate::sse::{encode_comment, encode_event, encode_retry, Event};

/// Most bytes of consecutive events copied into one frame.
const COPY_BATCH_BYTES: usize = 16 * 1024;

/// The comment written as a heartbeat.
const HEARTBEAT: Bytes = Bytes::from_static(b":\n");

/// The client fell so far behind that the events it still needs were evicted.
#[derive(Debug, thiserror::Error)]
#[error("client fell behind the stream's buffer; disconnected so it resumes by id")]
pub struct SlowClient;

/// How a subscription started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new subscription (or a private, per-client stream).
    Fresh,
    /// Resumed exactly after the given id.
    Resumed,
    /// The id was not in the buffer.
    Gap,
}

/// The body of one SSE response.
#[derive(Debug)]
pub struct SubscriberBody {
    subscriber: Subscriber,
    /// Sequence number of the next event to send.
    cursor: u64,
    heartbeat_seen: u64,
    prelude: Option<Bytes>,
    /// Events it missed, from the cluster's log, written after the prelude.
    backlog: Option<Box<Backlog>>,
    start: Start,
    /// The Last-Event-ID it came with, for the access log (bounded to 64 bytes).
    resumed_from: Option<Box<str>>,
    /// Events and bytes sent, and those not yet added to the route's counters (which are
    /// updated when the body catches up, not once per event).
    events_sent: u64,
    unflushed_events: u64,
    unflushed_bytes: u64,
    ended: Option<&'static str>,
    _admission: Option<Admission>,
}

impl SubscriberBody {
    /// Places a subscriber in its stream: after `last_event_id` when the buffer has it, else
    /// per `on_gap`; and prepares the prelude. Cursor and prelude are decided under one lock,
    /// so no event can slip between the replay and the live part.
    pub(crate) fn attach(
        subscriber: Subscriber,
        last_event_id: Option<&str>,
        admission: Option<Admission>,
        backlog: Option<Backlog>,
    ) -> SubscriberBody {
        let stream = subscriber.stream.clone();
        let mut prelude = BytesMut::with_capacity(64);
        let state = stream.lock();
        let settings = &state.route.config.settings;
        let on_gap = settings.on_gap;
        let retry = settings
            .retry
            .map(|retry| u64::try_from(retry.as_millis()).unwrap_or(u64::MAX))
            .or(state.upstream_retry);
        if let Some(ms) = retry {
            encode_retry(ms, &mut prelude);
        }
        let ring = &state.ring;
        // The log's events bridge to the buffer: the client gets them, then the buffer's.
        let backlog = backlog.filter(|b| b.next >= ring.log_first() && b.next <= ring.log_next());
        let (cursor, start) = match last_event_id {
            _ if backlog.is_some() => (
                backlog.as_ref().map_or(ring.next_seq(), |b| ring.seq_of(b.next)),
                Start::Resumed,
            ),
            // A private stream exists for this client only: everything in it is theirs, and
            // their Last-Event-ID went to the app.
            _ if stream.private => (ring.first_seq(), Start::Fresh),
            None => {
                // Everything since it joined (for the subscription that opened the stream: the
                // app's first event), primed with the id just before, so a client that drops
                // before its first event resumes from exactly there.
                let cursor = subscriber.joined_at.max(ring.first_seq());
                if let Some(id) = ring.id_before(cursor) {
                    prelude.extend_from_slice(b"id: ");
                    prelude.extend_from_slice(id.as_bytes());
                    prelude.extend_from_slice(b"\n");
                }
                (cursor, Start::Fresh)
            }
            Some(id) => match (id.len() <= MAX_LAST_EVENT_ID).then(|| ring.resume(id)) {
                Some(Resume::At(cursor)) => (cursor, Start::Resumed),
                _ => match on_gap {
                    OnGap::Replay => (ring.first_seq(), Start::Gap),
                    OnGap::Live | OnGap::Event => (ring.next_seq(), Start::Gap),
                },
            },
        };
        if prelude.is_empty() {
            // Something must go out at once, so intermediaries see the stream open.
            encode_comment("", &mut prelude);
        }
        prelude.extend_from_slice(b"\n");
        if let (Start::Gap, OnGap::Event, Some(requested)) = (start, on_gap, last_event_id) {
            // The gap event carries the newest id, so a reconnect after it resumes from here.
            let event = Event {
                event: Some("gap".to_owned()),
                data: truncate(requested, MAX_LAST_EVENT_ID).to_owned(),
                id: ring.newest_id(),
            };
            encode_event(&event, None, &mut prelude);
        }
        let heartbeat_seen = state.heartbeat_gen;
        drop(state);
        let metrics = &stream.metrics;
        let route = &stream.path;
        let resumed_from = last_event_id.map(|id| Box::from(truncate(id, 64)));
        match start {
            Start::Fresh => tracing::debug!(%route, stream = %stream.digest, "subscribed"),
            Start::Resumed => {
                metrics.resumes.inc();
                tracing::debug!(%route, stream = %stream.digest, "resumed from the buffer");
            }
            Start::Gap => {
                metrics.resume_gaps.inc();
                let policy = format!("{on_gap:?}").to_lowercase();
                tracing::info!(%route, stream = %stream.digest, requested = resumed_from.as_deref().unwrap_or(""), on_gap = %policy, "resume from an id not in the buffer: gap");
            }
        }
        SubscriberBody {
            subscriber,
            cursor,
            heartbeat_seen,
            prelude: Some(prelude.freeze()),
            backlog: backlog.map(Box::new),
            start,
            resumed_from,
            events_sent: 0,
            unflushed_events: 0,
            unflushed_bytes: 0,
            ended: None,
            _admission: admission,
        }
    }

    /// How the subscription started.
    pub fn start(&self) -> Start {
        self.start
    }

    /// Adds what was sent since the last time to the route's counters.
    fn flush_counts(&mut self) {
        let metrics = &self.subscriber.stream.metrics;
        if self.unflushed_events > 0 {
            metrics
                .events_delivered
                .inc_by(std::mem::take(&mut self.unflushed_events));
        }
        if self.unflushed_bytes > 0 {
            metrics
                .bytes_out
                .inc_by(std::mem::take(&mut self.unflushed_bytes));
        }
    }

    fn send(&mut self, bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, SlowClient>>> {
        self.unflushed_bytes += bytes.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl Drop for SubscriberBody {
    fn drop(&mut self) {
        self.flush_counts();
        let stream = &self.subscriber.stream;
        // The access log line of a subscription.
        tracing::info!(
            route = %stream.path,
            stream = %stream.digest,
            events = self.events_sent,
            resumed_from = self.resumed_from.as_deref().unwrap_or(""),
            gap = self.start == Start::Gap,
            ended = self.ended.unwrap_or("client disconnected"),
            "sse subscription ended"
        );
    }
}

/// The longest prefix of `text` within `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Body for SubscriberBody {
    type Data = Bytes;
    type Error = SlowClient;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SlowClient>>> {
        let this = self.get_mut();
        if let Some(prelude) = this.prelude.take() {
            return this.send(prelude);
        }
        if let Some(backlog) = this.backlog.as_mut() {
            let rest = backlog.rest();
            let (mut count, mut size) = (0, 0);
            for entry in rest {
                if count > 0 && size + entry.len() > COPY_BATCH_BYTES {
                    break;
                }
                count += 1;
                size += entry.len();
            }
            let bytes = match rest {
                [] => Bytes::new(),
                [one, ..] if count == 1 => one.clone(),
                _ => {
                    let mut batch = BytesMut::with_capacity(size);
                    for entry in rest.iter().take(count) {
                        batch.extend_from_slice(entry);
                    }
                    batch.freeze()
                }
            };
            backlog.index += count;
            if backlog.rest().is_empty() {
                this.backlog = None;
            }
            if !bytes.is_empty() {
                this.events_sent += count as u64;
                this.unflushed_events += count as u64;
                return this.send(bytes);
            }
        }
        let stream = this.subscriber.stream.clone();
        let mut state = stream.lock();
        if this.cursor < state.ring.first_seq() {
            drop(state);
            stream.metrics.slow_disconnects.inc();
            this.ended = Some("slow client: the events it still needed were evicted");
            this.flush_counts();
            tracing::info!(route = %stream.path, stream = %stream.digest, "slow client disconnected: the events it still needed were evicted");
            return Poll::Ready(Some(Err(SlowClient)));
        }
        // The events ready for this client, as many as fit one frame (at least one).
        let (mut first, mut sent, mut size) = (None, 0u64, 0);
        for entry in state.ring.since(this.cursor) {
            if sent > 0 && size + entry.bytes.len() > COPY_BATCH_BYTES {
                break;
            }
            first.get_or_insert(&entry.bytes);
            sent += 1;
            size += entry.bytes.len();
        }
        if let Some(first) = first {
            let bytes = if sent == 1 {
                // One event: the buffered bytes themselves.
                first.clone()
            } else {
                // Several (a client catching up, or a held batch): copied into one buffer under
                // one lock, rather than a lock and a shared reference count per event.
                let mut batch = BytesMut::with_capacity(size);
                for entry in state.ring.since(this.cursor).take(sent as usize) {
                    batch.extend_from_slice(&entry.bytes);
                }
                batch.freeze()
            };
            drop(state);
            this.cursor += sent;
            this.events_sent += sent;
            this.unflushed_events += sent;
            return this.send(bytes);
        }
        if state.closing {
            this.ended = Some(state.end_reason);
            drop(state);
            this.flush_counts();
            return Poll::Ready(None);
        }
        if state.drain_cutoff > this.subscriber.drain_rank() {
            // ssegate is stopping, and this subscriber's turn in the spread drain came.
            this.ended = Some("ssegate is stopping");
            drop(state);
            this.flush_counts();
            return Poll::Ready(None);
        }
        if state.heartbeat_gen != this.heartbeat_seen {
            this.heartbeat_seen = state.heartbeat_gen;
            drop(state);
            return this.send(HEARTBEAT);
        }
        state.wakers.register(this.subscriber.slot, cx.waker());
        drop(state);
        // Caught up: a good moment to publish the counts.
        this.flush_counts();
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}
