//! The response body type: one enum over every kind of body ssegate sends, so nothing is boxed;
//! it also carries what must live exactly as long as the response (the request's place on its
//! route, and the access log line written when it ends).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower_http::compression::CompressionBody;

use crate::hub::source::AnswerBody;
use crate::hub::{HeldBody, SubscriberBody};
use crate::metrics::RouteMetrics;
use crate::route::Admission;
use crate::upstream::BoxError;

pin_project! {
    /// A response body: streamed from the upstream, an SSE subscriber's, or a short one made by
    /// ssegate.
    pub struct ProxyBody {
        #[pin]
        kind: Inner,
        log: Option<Box<AccessLog>>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Upstream { #[pin] body: Incoming },
        // Boxed: an encoder's state is large, and only compressed responses pay for it.
        Compressed { body: Pin<Box<CompressionBody<Incoming>>> },
        // Already boxed (a pointer): an upstream's definitive answer to a subscription.
        Answer { body: AnswerBody },
        Full { #[pin] body: Full<Bytes> },
        Sse { body: SubscriberBody },
        // Boxed: held subscriptions are rare, and the enum is as large as its largest variant,
        // which every idle SSE client pays for.
        Held { body: Box<HeldBody> },
    }
}

/// The access log line of a pass-through request, written (and its metrics recorded) when the
/// response body ends or is dropped.
#[derive(Debug)]
pub struct AccessLog {
    /// Request method.
    pub method: Method,
    /// Request path.
    pub path: String,
    /// Response status.
    pub status: StatusCode,
    /// The upstream base URL, or "-" for answers ssegate made itself.
    pub upstream: String,
    /// When the request arrived.
    pub started: Instant,
    /// Body bytes sent so far.
    pub bytes: u64,
    /// The route's metrics, if a route matched.
    pub metrics: Option<RouteMetrics>,
    /// The request's place among the route's `max_clients`.
    pub admission: Option<Admission>,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let route = self.metrics.as_ref().map_or("-", |m| m.route.as_str());
        tracing::info!(
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            bytes = self.bytes,
            duration_ms = (seconds * 1000.0).round() as u64,
            route,
            upstream = %self.upstream,
            "request"
        );
        if let Some(metrics) = &self.metrics {
            metrics.request(self.status, seconds);
        }
    }
}

/// A complete body, as [`crate::error::rescue`] makes them.
impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::full(bytes)
    }
}

impl ProxyBody {
    /// The upstream's body, streamed through frame by frame (trailers included).
    pub fn upstream(body: Incoming) -> Self {
        ProxyBody::of(Inner::Upstream { body })
    }

    /// The upstream's body, compressed as it streams (a route's `compress`).
    pub fn compressed(body: CompressionBody<Incoming>) -> Self {
        ProxyBody::of(Inner::Compressed { body: Box::pin(body) })
    }

    /// The body of an upstream's definitive answer to a subscription.
    pub fn answer(body: AnswerBody) -> Self {
        ProxyBody::of(Inner::Answer { body })
    }

    /// An SSE subscriber's body.
    pub fn sse(body: SubscriberBody) -> Self {
        ProxyBody::of(Inner::Sse { body })
    }

    /// A subscription held for its client's stream budget.
    pub fn held(body: HeldBody) -> Self {
        ProxyBody::of(Inner::Held { body: Box::new(body) })
    }

    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        ProxyBody::of(Inner::Full {
            body: Full::new(bytes),
        })
    }

    fn of(kind: Inner) -> Self {
        ProxyBody { kind, log: None }
    }

    /// Writes `log` when this body ends.
    pub fn log(mut self, log: AccessLog) -> Self {
        self.log = Some(Box::new(log));
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = match this.kind.project() {
            InnerProj::Upstream { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Compressed { body } => body.as_mut().poll_frame(cx),
            InnerProj::Answer { body } => Pin::new(body).poll_frame(cx),
            InnerProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            InnerProj::Sse { body } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            InnerProj::Held { body } => Pin::new(&mut **body).poll_frame(cx).map_err(Into::into),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(log), Some(data)) = (this.log.as_mut(), frame.data_ref()) {
                    log.bytes += data.len() as u64;
                }
            }
            // The response is over: log it and free its places now, not when hyper drops it.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.log.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Inner::Upstream { body } => body.is_end_stream(),
            Inner::Compressed { body } => body.is_end_stream(),
            Inner::Answer { body } => body.is_end_stream(),
            Inner::Full { body } => body.is_end_stream(),
            Inner::Sse { body } => body.is_end_stream(),
            Inner::Held { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Inner::Upstream { body } => body.size_hint(),
            Inner::Compressed { body } => body.size_hint(),
            Inner::Answer { body } => body.size_hint(),
            Inner::Full { body } => body.size_hint(),
            Inner::Sse { body } => body.size_hint(),
            Inner::Held { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_sse_client_pays_for_no_other_kind_of_body() {
        // What the lean writer holds per idle client: the response body. The SSE variant must be
        // the largest, so rarer kinds (held subscriptions) cost nothing to the others.
        assert!(
            std::mem::size_of::<Inner>() <= std::mem::size_of::<SubscriberBody>() + 16,
            "{} vs {}",
            std::mem::size_of::<Inner>(),
            std::mem::size_of::<SubscriberBody>()
        );
    }
}
