//! The writer of a lean subscription's response: the task an idle SSE client costs.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::BoxError;

/// Most bytes gathered into one write while a client catches up. Several events a subscriber
/// has ready come as one copied frame, so this is also about what a client whose socket is
/// full holds beyond the shared buffer.
const MAX_BATCH_BYTES: usize = 16 * 1024;

pin_project! {
    /// Writes a response as HTTP/1.1 (chunked body, `Connection: close`), then ends the
    /// connection. Frames the body has ready go out together in one write; each is written as
    /// soon as it exists.
    ///
    /// While it waits for the body, it watches the client's side of the connection: a client
    /// that hangs up is noticed at once (its subscription ends now, not at the next failed
    /// write).
    ///
    /// A plain struct rather than an `async fn`, so that what an idle SSE client costs is
    /// exactly these fields: the socket, the body (a cursor into its stream) and the pending
    /// buffers. The body is pinned in place (the writer is its task's future), so any body will
    /// do, `Unpin` or not, without a box.
    pub struct Writer<IO, B> {
        out: Output<IO>,
        #[pin]
        body: Option<B>,
        // Once the batch is written: shut the connection down.
        finishing: bool,
        writing: bool,
    }
}

/// The socket and what is still to be written to it.
struct Output<IO> {
    io: IO,
    /// Buffers to write, from `first` on.
    batch: Vec<Bytes>,
    first: usize,
}

impl<IO, B> Writer<IO, B>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// A writer of `response` on `io`.
    pub(crate) fn new(io: IO, response: Response<B>) -> Writer<IO, B> {
        let (parts, body) = response.into_parts();
        let bodyless = parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED;
        let mut batch = Vec::with_capacity(4);
        batch.push(head(parts.status, &parts.headers, bodyless));
        Writer {
            out: Output { io, batch, first: 0 },
            body: (!bodyless).then_some(body),
            finishing: bodyless,
            writing: true,
        }
    }

    /// Moves every frame the body has ready into the batch as one chunk (plus the last chunk
    /// and trailers when the body ends). Pending while there is nothing to write.
    fn poll_body(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let out = this.out;
        if let Poll::Ready(gone) = poll_hang_up(Pin::new(&mut out.io), cx) {
            return Poll::Ready(Err(gone));
        }
        let Some(mut body) = this.body.as_mut().as_pin_mut() else {
            *this.finishing = true;
            return Poll::Ready(Ok(()));
        };
        // A slot for the chunk size, filled in once the chunk's frames are known.
        let slot = out.batch.len();
        out.batch.push(Bytes::new());
        let mut size = 0;
        let mut trailers = None;
        let mut ended = false;
        loop {
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        size += data.len();
                        out.batch.push(data);
                        if size >= MAX_BATCH_BYTES {
                            break;
                        }
                    }
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                // The client is cut off without a final chunk: it sees an incomplete response.
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(io::Error::other(error.into()))),
                Poll::Pending => break,
            }
        }
        if size > 0 {
            let mut line = BytesMut::with_capacity(10);
            let _ = write!(line, "{size:x}\r\n");
            out.batch[slot] = line.freeze();
            out.batch.push(Bytes::from_static(b"\r\n"));
        } else {
            out.batch.truncate(slot);
        }
        if ended {
            let mut last = BytesMut::from(&b"0\r\n"[..]);
            for (name, value) in trailers.iter().flatten() {
                last.extend_from_slice(name.as_str().as_bytes());
                last.extend_from_slice(b": ");
                last.extend_from_slice(value.as_bytes());
                last.extend_from_slice(b"\r\n");
            }
            last.extend_from_slice(b"\r\n");
            out.batch.push(last.freeze());
            this.body.set(None);
            *this.finishing = true;
        }
        if out.batch.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

impl<IO: AsyncWrite + Unpin> Output<IO> {
    /// Writes what is in the batch; ready when all of it is written and flushed.
    fn poll_write_batch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.first < self.batch.len() {
            let mut slices = [IoSlice::new(&[]); 32];
            let mut count = 0;
            for (slot, buf) in slices.iter_mut().zip(&self.batch[self.first..]) {
                *slot = IoSlice::new(buf);
                count += 1;
            }
            let mut written =
                std::task::ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while written > 0 {
                let front = &mut self.batch[self.first];
                let n = written.min(front.len());
                front.advance(n);
                written -= n;
                if front.is_empty() {
                    self.first += 1;
                }
            }
        }
        std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.batch.clear();
        self.first = 0;
        // A burst can grow the batch; an idle client should not keep it large.
        if self.batch.capacity() > 64 {
            self.batch = Vec::with_capacity(4);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO, B> std::future::Future for Writer<IO, B>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.writing {
                let this = self.as_mut().project();
                std::task::ready!(this.out.poll_write_batch(cx))?;
                *this.writing = false;
                if *this.finishing {
                    return Pin::new(&mut this.out.io).poll_shutdown(cx);
                }
            }
            std::task::ready!(self.as_mut().poll_body(cx))?;
            *self.as_mut().project().writing = true;
        }
    }
}

/// Ready with an error when the client hung up, or sent anything after its request (nothing is
/// expected: the response lasts as long as the connection).
fn poll_hang_up<IO: AsyncRead>(io: Pin<&mut IO>, cx: &mut Context<'_>) -> Poll<io::Error> {
    let mut scratch = [0u8; 64];
    let mut buf = ReadBuf::new(&mut scratch);
    match io.poll_read(cx, &mut buf) {
        Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(io::ErrorKind::UnexpectedEof.into()),
        Poll::Ready(Ok(())) => Poll::Ready(io::Error::new(
            io::ErrorKind::InvalidData,
            "data after the request",
        )),
        Poll::Ready(Err(error)) => Poll::Ready(error),
        Poll::Pending => Poll::Pending,
    }
}

/// The status line and headers, with framing headers of our own, and a `Date` unless the
/// response has one (RFC 9110 §6.6.1: an origin server with a clock sends it; hyper does).
fn head(status: StatusCode, headers: &HeaderMap, bodyless: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if matches!(
            name,
            &header::CONTENT_LENGTH | &header::TRANSFER_ENCODING | &header::CONNECTION
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        with_date(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\n");
    }
    if !bodyless {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.freeze()
}

/// Calls `f` with the current time as an HTTP date (IMF-fixdate), formatted at most once a
/// second per thread, as hyper caches its own: a burst of subscriptions formats it once.
fn with_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn head_has_our_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/event-stream"));
        headers.insert("content-length", HeaderValue::from_static("5"));
        headers.insert("date", HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
        let head = head(StatusCode::OK, &headers, false);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn head_has_a_date_of_now_unless_the_response_has_one() {
        let head = head(StatusCode::NO_CONTENT, &HeaderMap::new(), true);
        let text = std::str::from_utf8(&head).expect("ascii head");
        let date = text
            .lines()
            .find_map(|line| line.strip_prefix("date: "))
            .expect("a date header");
        let sent = httpdate::parse_http_date(date).expect("an HTTP date");
        let skew = SystemTime::now().duration_since(sent).unwrap_or_default();
        assert!(skew.as_secs() < 5, "{date}");
    }
}
