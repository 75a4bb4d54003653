//! The lean HTTP/1.1 path: the first request of every connection is read here, and an SSE
//! subscription is served here, without hyper; anything else is handed to hyper untouched.
//!
//! Why: hyper gives every HTTP/1.1 connection an 8 KiB read buffer and an 8 KiB write buffer
//! for its whole life. An SSE connection lives for hours and is idle almost always, so those
//! buffers would be most of what a client costs (16 KiB of the 22 KiB measured per idle
//! client). Here a connection holds its socket, its response body (a cursor into the stream's
//! ring) and a small write batch; the request head is parsed by `httparse` (hyper's own parser)
//! from a buffer freed as soon as it is parsed.
//!
//! The path is taken only for a GET over HTTP/1.1 with no body, no `Upgrade` or `Expect`, and
//! nothing sent after the head; the connection closes when the response ends (SSE responses end
//! only when their stream does, and an EventSource reconnects on a new connection anyway).
//! Everything else, including HTTP/2 and malformed requests, goes to hyper with the bytes read
//! so far replayed first.

use std::fmt::Write as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::{BoxError, MAX_REQUEST_HEAD_BYTES};

/// Headers a head may hold (hyper's default is 100).
const MAX_HEADERS: usize = 100;
/// Most bytes gathered into one write while a client catches up. Several events a subscriber
/// has ready come as one copied frame, so this is also about what a client whose socket is
/// full holds beyond the shared buffer.
const MAX_BATCH_BYTES: usize = 16 * 1024;

/// What the first read of a connection found.
pub enum Sniffed {
    /// An SSE subscription head, to serve on the lean path.
    Subscription(Request<()>),
    /// Anything else: hyper serves the connection, reading these bytes first.
    Other(Bytes),
    /// The client closed the connection before sending a head.
    Closed,
}

enum Parsed {
    Partial,
    Complete(Box<Request<()>>, usize),
    Invalid,
}

/// Reads the first request head of a connection and decides which path serves it: the lean
/// path when `is_lean` says the head is a subscription it may serve.
pub async fn sniff<IO, F>(io: &mut IO, is_lean: &F) -> io::Result<Sniffed>
where
    IO: AsyncRead + Unpin,
    F: Fn(&Request<()>) -> bool + ?Sized,
{
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= MAX_REQUEST_HEAD_BYTES {
            return Ok(Sniffed::Other(buf.freeze()));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(1024));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(if buf.is_empty() {
                Sniffed::Closed
            } else {
                Sniffed::Other(buf.freeze())
            });
        }
        match parse(&buf) {
            Parsed::Partial => {}
            Parsed::Invalid => return Ok(Sniffed::Other(buf.freeze())),
            Parsed::Complete(request, len) => {
                let lean = len == buf.len() && eligible(&request) && is_lean(&request);
                return Ok(if lean {
                    Sniffed::Subscription(*request)
                } else {
                    Sniffed::Other(buf.freeze())
                });
            }
        }
    }
}

/// Parses a request head. Kept out of the async state, so the header array lives on the stack
/// only while parsing.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return Parsed::Invalid,
    };
    let (Some(method), Some(path), Some(1)) = (head.method, head.path, head.version) else {
        return Parsed::Invalid;
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .version(Version::HTTP_11);
    let Some(map) = builder.headers_mut() else {
        return Parsed::Invalid;
    };
    for h in head.headers.iter() {
        match (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => return Parsed::Invalid,
        }
    }
    match builder.body(()) {
        Ok(request) => Parsed::Complete(Box::new(request), len),
        Err(_) => Parsed::Invalid,
    }
}

/// A GET with no body, no upgrade and no 100-continue: nothing the lean path would mishandle.
/// Every `Content-Length` counts (a `0` followed by a `40` is a body of 40 to some readers);
/// anything else goes to hyper, which frames it or refuses it.
fn eligible(request: &Request<()>) -> bool {
    let headers = request.headers();
    request.method() == Method::GET
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && !headers.contains_key(header::UPGRADE)
        && !headers.contains_key(header::EXPECT)
        && headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0")
}

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
    pub fn new(io: IO, response: Response<B>) -> Writer<IO, B> {
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

/// The status line and headers, with framing headers of our own.
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
    if !bodyless {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.freeze()
}

pin_project! {
    /// An I/O stream that yields `prefix` before reading from `io`: hyper gets the bytes the
    /// lean path already read.
    pub struct Prefixed<IO> {
        prefix: Bytes,
        #[pin]
        io: IO,
    }
}

impl<IO> Prefixed<IO> {
    /// `io`, with `prefix` read first.
    pub fn new(prefix: Bytes, io: IO) -> Self {
        Prefixed { prefix, io }
    }
}

impl<IO: AsyncRead> AsyncRead for Prefixed<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Prefixed<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_and_rejects_what_it_cannot_serve() {
        let Parsed::Complete(request, len) =
            parse(b"GET /events?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
        else {
            panic!("complete head")
        };
        assert_eq!(len, 64);
        assert_eq!(
            request.uri().path_and_query().map(|p| p.as_str()),
            Some("/events?x=1")
        );
        assert_eq!(request.headers()["accept"], "text/event-stream");
        assert!(eligible(&request));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Partial));
        assert!(
            matches!(parse(b"GET / HTTP/1.0\r\n\r\n"), Parsed::Invalid),
            "HTTP/1.0 goes to hyper"
        );
        assert!(
            matches!(parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Parsed::Invalid),
            "h2 goes to hyper"
        );
        assert!(matches!(parse(b"NOT A REQUEST\r\n\r\n"), Parsed::Invalid));
        let Parsed::Complete(post, _) = parse(b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\n") else {
            panic!()
        };
        assert!(!eligible(&post));
        let Parsed::Complete(upgrade, _) = parse(b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n") else {
            panic!()
        };
        assert!(!eligible(&upgrade));
        for lengths in [
            &b"content-length: 0\r\ncontent-length: 40\r\n"[..],
            b"content-length: 40\r\n",
            b"content-length: 00\r\n",
            b"transfer-encoding: chunked\r\n",
        ] {
            let head = [&b"GET / HTTP/1.1\r\nhost: a\r\n"[..], lengths, b"\r\n"].concat();
            let Parsed::Complete(request, _) = parse(&head) else {
                panic!("complete head")
            };
            assert!(!eligible(&request), "{}", String::from_utf8_lossy(lengths));
        }
        let Parsed::Complete(zeros, _) =
            parse(b"GET / HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n")
        else {
            panic!()
        };
        assert!(eligible(&zeros));
    }

    #[test]
    fn head_has_our_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/event-stream"));
        headers.insert("content-length", HeaderValue::from_static("5"));
        let head = head(StatusCode::OK, &headers, false);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }
}
