//! The body of a subscription held for its client's stream budget (see [`super::budget`]).
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

use super::subscriber::{SlowClient, SubscriberBody};
use crate::sse::{encode_comment, encode_retry};

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
