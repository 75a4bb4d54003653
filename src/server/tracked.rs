//! The server's own response body: whatever body the service answers with, holding the
//! request's place on its connection (its [`InFlight`]) until the body ends. The connection's
//! deadlines are off while a request is in flight, so this is what keeps a watchdog from
//! cutting an SSE response that lasts for hours, whichever service made it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{BoxError, InFlight};

pin_project! {
    /// A response body that keeps its request counted on the connection until it ends.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> Tracked<B> {
    /// `body`, counted on its connection by `in_flight`.
    pub(crate) fn new(body: B, in_flight: InFlight) -> Self {
        Tracked {
            body,
            in_flight: Some(in_flight),
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx).map_err(Into::into);
        // The response is over: the connection is idle from now, not from when hyper (or the
        // lean writer) drops the body.
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            this.in_flight.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
