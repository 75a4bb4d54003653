//! The response body type: one enum over every kind of body ssegate sends, so nothing is boxed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::hub::SubscriberBody;
use crate::upstream::BoxError;

pin_project! {
    /// A response body: streamed from the upstream, an SSE subscriber's, or a short one made by
    /// ssegate.
    #[project = Kind]
    pub struct ProxyBody {
        #[pin]
        kind: Inner,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Upstream { #[pin] body: Incoming },
        Full { #[pin] body: Full<Bytes> },
        Sse { body: SubscriberBody },
    }
}

impl ProxyBody {
    /// The upstream's body, streamed through frame by frame (trailers included).
    pub fn upstream(body: Incoming) -> Self {
        ProxyBody {
            kind: Inner::Upstream { body },
        }
    }

    /// An SSE subscriber's body.
    pub fn sse(body: SubscriberBody) -> Self {
        ProxyBody {
            kind: Inner::Sse { body },
        }
    }

    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Inner::Full {
                body: Full::new(bytes),
            },
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            InnerProj::Upstream { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            InnerProj::Sse { body } => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Inner::Upstream { body } => body.is_end_stream(),
            Inner::Full { body } => body.is_end_stream(),
            Inner::Sse { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Inner::Upstream { body } => body.size_hint(),
            Inner::Full { body } => body.size_hint(),
            Inner::Sse { body } => body.size_hint(),
        }
    }
}
