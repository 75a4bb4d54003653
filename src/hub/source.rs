//! Where a stream's events come from: a source the stream's task opens, reads and reopens.
//!
//! The task holds the policy (when to reopen, backoff, what an answer means to subscribers);
//! a source only knows how to ask and how to read. Today's source is the app over HTTP
//! ([`http`]); any other (a cluster follower, a scripted one in tests) implements [`Source`].

pub(crate) mod http;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

use crate::route::RouteEntry;
use crate::upstream::BoxError;

/// The body of a definitive answer: boxed, so any source can make one.
pub(crate) type AnswerBody = UnsyncBoxBody<Bytes, BoxError>;

/// What an upstream answered when asked for a stream.
#[derive(Debug)]
pub(crate) enum Answer {
    /// An event stream follows, with these response headers (the app's, `Set-Cookie`
    /// included).
    Stream(::http::HeaderMap),
    /// Not now (unreachable, timed out, 502/503/504): subscribers are served while the task
    /// asks again. Says why, for the log.
    Transient(String),
    /// Anything else: the answer belongs to the subscription that caused the request alone.
    Definitive(::http::Response<AnswerBody>),
}

/// What happened next at a source.
#[derive(Debug)]
pub(crate) enum Step {
    /// The answer to the last [`Source::open`].
    Answer(Answer),
    /// Bytes of the event stream.
    Chunk(Bytes),
    /// The event stream ended: cleanly (`None`) or broken.
    End(Option<BoxError>),
}

/// A stream's source of events, owned by its task.
pub(crate) trait Source: Send + 'static {
    /// Asks for the stream again (dropping whatever was open), after `last_event_id` when
    /// given. The answer comes from [`Source::next`].
    fn open(&mut self, last_event_id: Option<&str>);

    /// Drops whatever is open (another instance reads the stream now); `next` pends until the
    /// next open.
    fn close(&mut self);

    /// The next step: the answer to the open, then (after a stream) chunks and the end. After
    /// an answer that is no stream, or the end, nothing is open and this pends until the next
    /// open. Cancel-safe: what is in progress is kept in `self`.
    fn next(&mut self) -> impl Future<Output = Step> + Send + '_;

    /// A reload gave the route a new version (same identity): later opens follow it.
    fn reconfigure(&mut self, route: &Arc<RouteEntry>);

    /// What the source reads from, for log lines.
    fn origin(&self) -> &dyn fmt::Display;
}
