//! A subscription held for its client's stream budget (see [`super::budget`]): the wait for
//! its stream, and its response body.
//!
//! It is answered at once, as a subscription to an app that is down would be: 200, `retry:`,
//! then a heartbeat comment whenever it waited `heartbeat`. When the budget allows, it joins
//! its stream and goes on as any subscriber body (its prelude gives the priming id then). If the
//! client leaves first, nothing was opened; if ssegate stops first, the response ends cleanly.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::time::Sleep;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

use super::budget::{ClientId, Wait};
use super::key::StreamKey;
use super::stream::Template;
use super::subscriber::{SlowClient, SubscriberBody};
use super::{Hub, Joined, Pending, Shared};
use crate::route::RouteEntry;
use crate::sse::{encode_comment, encode_retry};

/// A subscription waiting for its client's budget to allow its stream; everything needed to
/// join again.
#[derive(Debug)]
pub struct Held {
    pub(super) hub: Hub,
    pub(super) route: Arc<RouteEntry>,
    pub(super) key: Option<StreamKey>,
    pub(super) template: Template,
    pub(super) client: ClientId,
    pub(super) wait: Wait,
    pub(super) counted: Counted,
}

impl Held {
    /// Waits until the client's budget allows the stream (or it is live by now, opened by
    /// someone else), then joins it. `None` when ssegate stops first.
    pub async fn admitted(self) -> Option<Pending> {
        let Held {
            hub,
            mut route,
            key,
            mut template,
            client,
            mut wait,
            counted: _counted,
        } = self;
        let mut stopping = hub.shared.stopping.subscribe();
        loop {
            tokio::select! {
                () = wait.done() => {}
                _ = stopping.wait_for(|stopping| *stopping) => return None,
            }
            loop {
                // A reload may have changed the route since: go on under its new version, or
                // end (the client comes back under the new config) if it is gone or is
                // another upstream now.
                route = hub.shared.current(&route)?;
                match hub.join(&route, key.clone(), template, client) {
                    Joined::Pending(pending) => return Some(pending),
                    Joined::Held(held) => {
                        template = held.template;
                        wait = held.wait;
                        break;
                    }
                    // `max_streams` reached: asked about again a second later.
                    Joined::Full(back) => {
                        template = back;
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stopping.wait_for(|stopping| *stopping) => return None,
                        }
                    }
                }
            }
        }
    }
}

/// Counts a held subscription in its route's gauge, and its request head in the buffered
/// bytes, while it lives.
#[derive(Debug)]
pub(super) struct Counted {
    pub(super) gauge: Gauge,
    pub(super) shared: Arc<Shared>,
    pub(super) head: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec();
        self.shared.heads.fetch_sub(self.head, Ordering::Relaxed);
        self.shared.release(self.head);
    }
}

/// The comment written while held.
const HEARTBEAT: Bytes = Bytes::from_static(b":\n");

type Admit = Pin<Box<dyn Future<Output = Option<SubscriberBody>> + Send>>;

/// A held subscription's response body.
pub struct HeldBody {
    admit: Option<Admit>,
    prelude: Option<Bytes>,
    heartbeat: Option<(Pin<Box<Sleep>>, Duration)>,
    body: Option<SubscriberBody>,
}

impl std::fmt::Debug for HeldBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldBody")
            .field("admitted", &self.body.is_some())
            .finish_non_exhaustive()
    }
}

impl HeldBody {
    /// A body that writes `retry` (if any) at once, `heartbeat` comments while `admit` runs,
    /// then the subscriber body `admit` resolves to (or ends, if it resolves to none).
    pub fn new(
        admit: impl Future<Output = Option<SubscriberBody>> + Send + 'static,
        retry: Option<Duration>,
        heartbeat: Option<Duration>,
    ) -> HeldBody {
        let mut prelude = BytesMut::with_capacity(32);
        match retry {
            Some(retry) => encode_retry(u64::try_from(retry.as_millis()).unwrap_or(u64::MAX), &mut prelude),
            None => encode_comment("", &mut prelude),
        }
        HeldBody {
            admit: Some(Box::pin(admit)),
            prelude: Some(prelude.freeze()),
            heartbeat: heartbeat.map(|every| (Box::pin(tokio::time::sleep(every)), every)),
            body: None,
        }
    }
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = SlowClient;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SlowClient>>> {
        let this = &mut *self;
        if let Some(body) = this.body.as_mut() {
            return Pin::new(body).poll_frame(cx);
        }
        if let Some(prelude) = this.prelude.take() {
            return Poll::Ready(Some(Ok(Frame::data(prelude))));
        }
        if let Some(admit) = this.admit.as_mut() {
            if let Poll::Ready(admitted) = admit.as_mut().poll(cx) {
                this.admit = None;
                this.heartbeat = None;
                return match admitted {
                    Some(body) => Pin::new(this.body.insert(body)).poll_frame(cx),
                    None => Poll::Ready(None),
                };
            }
        }
        if let Some((timer, every)) = this.heartbeat.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                let next = tokio::time::Instant::now() + *every;
                timer.as_mut().reset(next);
                return Poll::Ready(Some(Ok(Frame::data(HEARTBEAT))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}
