//! A subscriber's response body: a cursor into its stream's ring, not a copy of it.
//!
//! It writes the prelude (`retry:`, the priming id or a `gap` event), then every event from its
//! cursor on (replay and live are the same read), and a heartbeat comment when the stream has
//! been quiet. Per client it holds an `Arc`, two counters and the prelude until sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};

use super::key::MAX_LAST_EVENT_ID;
use super::ring::Resume;
use super::stream::Subscriber;
use crate::config::OnGap;
use crate::sse::{encode_comment, encode_event, encode_retry, Event};

/// The comment written as a heartbeat.
const HEARTBEAT: Bytes = Bytes::from_static(b":\n");

/// The client fell so far behind that the events it still needs were evicted.
#[derive(Debug, thiserror::Error)]
#[error("client fell behind the stream's buffer; disconnected so it resumes by id")]
pub struct SlowClient;

/// The body of one SSE response.
#[derive(Debug)]
pub struct SubscriberBody {
    subscriber: Subscriber,
    /// Sequence number of the next event to send.
    cursor: u64,
    heartbeat_seen: u64,
    prelude: Option<Bytes>,
}

/// How a subscription started, for the log line and the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A new subscription.
    Fresh,
    /// Resumed exactly after the given id.
    Resumed,
    /// The id was not in the buffer.
    Gap,
}

impl SubscriberBody {
    /// Places a subscriber in its stream: after `last_event_id` when the buffer has it, else
    /// per `on_gap`; and prepares the prelude. Cursor and prelude are decided under one lock,
    /// so no event can slip between the replay and the live part.
    pub fn attach(subscriber: Subscriber, last_event_id: Option<&str>) -> (SubscriberBody, Start) {
        let stream = subscriber.stream.clone();
        let settings = &stream.route.config.settings;
        let mut prelude = BytesMut::with_capacity(64);
        let state = stream.lock();
        let retry = settings
            .retry
            .map(|retry| u64::try_from(retry.as_millis()).unwrap_or(u64::MAX))
            .or(state.upstream_retry);
        if let Some(ms) = retry {
            encode_retry(ms, &mut prelude);
        }
        let ring = &state.ring;
        let (cursor, start) = match last_event_id {
            // A private stream exists for this client only: everything in it is theirs, and
            // their Last-Event-ID went to the app.
            _ if stream.private => (ring.first_seq(), Start::Fresh),
            None => {
                if let Some(id) = ring.newest_id() {
                    prelude.extend_from_slice(b"id: ");
                    prelude.extend_from_slice(id.as_bytes());
                    prelude.extend_from_slice(b"\n");
                }
                (ring.next_seq(), Start::Fresh)
            }
            Some(id) => match (id.len() <= MAX_LAST_EVENT_ID).then(|| ring.resume(id)) {
                Some(Resume::At(cursor)) => (cursor, Start::Resumed),
                _ => match settings.on_gap {
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
        if let (Start::Gap, OnGap::Event, Some(requested)) = (&start, settings.on_gap, last_event_id) {
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
        let body = SubscriberBody {
            subscriber,
            cursor,
            heartbeat_seen,
            prelude: Some(prelude.freeze()),
        };
        (body, start)
    }
}

impl SubscriberBody {
    /// Counts and logs how the subscription started.
    pub fn log_start(&self, start: &Start, last_event_id: Option<&str>) {
        let stream = &self.subscriber.stream;
        let route = &stream.route.config.path;
        match start {
            Start::Fresh => tracing::debug!(%route, stream = %stream.digest, "subscribed"),
            Start::Resumed => {
                stream.shared.stats.resumes.inc();
                tracing::debug!(%route, stream = %stream.digest, "resumed from the buffer");
            }
            Start::Gap => {
                stream.shared.stats.gaps.inc();
                let requested = truncate(last_event_id.unwrap_or_default(), 64);
                let policy = format!("{:?}", stream.route.config.settings.on_gap).to_lowercase();
                tracing::info!(%route, stream = %stream.digest, requested, on_gap = %policy, "resume from an id not in the buffer: gap");
            }
        }
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
            return Poll::Ready(Some(Ok(Frame::data(prelude))));
        }
        let stream = &this.subscriber.stream;
        let mut state = stream.lock();
        if this.cursor < state.ring.first_seq() {
            drop(state);
            stream.shared.stats.slow_disconnects.inc();
            tracing::info!(route = %stream.route.config.path, stream = %stream.digest, "slow client disconnected: the events it still needed were evicted");
            return Poll::Ready(Some(Err(SlowClient)));
        }
        if let Some(entry) = state.ring.get(this.cursor) {
            this.cursor += 1;
            return Poll::Ready(Some(Ok(Frame::data(entry.bytes.clone()))));
        }
        if state.closing {
            return Poll::Ready(None);
        }
        if state.heartbeat_gen != this.heartbeat_seen {
            this.heartbeat_seen = state.heartbeat_gen;
            return Poll::Ready(Some(Ok(Frame::data(HEARTBEAT))));
        }
        state.wakers.register(this.subscriber.slot, cx.waker());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}
