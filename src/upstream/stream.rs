//! A stream's exchange with its app, without hyper: one GET with no body on a connection of its
//! own, over HTTP/1.1, whose response body is read for hours.
//!
//! Why a connection each, over HTTP/1.1: an SSE stream lasts, and on one HTTP/2 connection,
//! past the app's limit of concurrent streams (often 100 to 250), new ones would wait for old
//! ones to end. Over TLS the stream's connection offers only http/1.1 by ALPN.
//!
//! Why not hyper: its HTTP/1.1 client gives every connection a dispatch channel (its first
//! block of 32 request slots is ~10 KiB), two 8 KiB read buffers, a boxed 8 KiB future in the
//! pool's connect, a task of its own and a hop between tasks for every chunk read. A stream is
//! almost always idle, so that was most of what a stream cost (~36 KiB per stream against
//! Nginx's 14 KiB per client). Here a stream's reader holds its socket and a small decoder
//! (`stream/body.rs`); it is polled by the stream's task itself, and what it reads goes
//! through a thread-local buffer within one poll.
//!
//! What the app receives is what hyper sent: the request line with the URL's path and query,
//! the stream's headers in their order (the client's Host among them; one from the URL when
//! there is none, as hyper-util added), `Last-Event-ID` when resuming, and nothing else (no
//! body, so no framing header). The connection is not reused: it closes when the stream ends,
//! and a reconnect opens a new one, as a stream is asked for again only after its app ended or
//! broke it.
//!
//! - `stream/head.rs` reads and parses the response head (at most 64 KiB and 100 fields,
//!   1xx skipped) and judges the body's framing;
//! - `stream/decode.rs` decodes a body: a length, chunked, or until the close;
//! - `stream/body.rs` reads it, as the stream's chunks or as a definitive answer's body;
//! - `stream/fuzzing.rs` reads a whole response from bytes, for the fuzz target.

mod body;
mod decode;
#[doc(hidden)]
pub(crate) mod fuzzing;
mod head;

use std::future::Future;
use std::io;

use http::header::{HeaderMap, HeaderValue, HOST, TRANSFER_ENCODING};
use http::{Response, Uri};
use tokio::io::AsyncWriteExt;

pub(crate) use body::StreamBody;

use super::headers::header_bytes;
use super::{connect_error, UpstreamClient, UpstreamError};

/// Sending the stream's request failed (the app closed the connection at once, or it broke).
#[derive(Debug, thiserror::Error)]
#[error("sending the stream's request to the app failed")]
struct SendError(#[source] io::Error);

impl UpstreamClient {
    /// Sends a stream's request head ([`request_head`]) on a new HTTP/1.1 connection of its own
    /// (see the module's docs) and reads the response head. Connect errors are sorted as for
    /// any request ([`UpstreamError::ConnectTimeout`], `Handshake`, `Unreachable`); anything
    /// after the connect is [`UpstreamError::Failed`]. The future owns what it needs.
    pub(crate) fn send_stream(
        &self,
        head: Vec<u8>,
    ) -> impl Future<Output = Result<Response<StreamBody>, UpstreamError>> + Send + 'static {
        let connector = self.http1.clone();
        let timeout = self.connect_timeout;
        async move {
            let mut io = connector
                .connect()
                .await
                .map_err(|error| connect_error(timeout, error))?;
            let sent = async {
                io.write_all(&head).await?;
                io.flush().await
            };
            sent.await
                .map_err(|error| UpstreamError::Failed(Box::new(SendError(error))))?;
            drop(head);
            let head = head::read_head(&mut io)
                .await
                .map_err(|error| UpstreamError::Failed(Box::new(error)))?;
            Ok(head
                .response
                .map(|()| StreamBody::new(io, head.decoder, head.rest)))
        }
    }
}

/// The head of a stream's request to its app, made again on every (re)connect from what the
/// stream keeps (`uri`, `headers`: an [`super::UpstreamHead`] built once): a GET of the URL's
/// path and query with no body, and `Last-Event-ID` when the stream has one to resume from (one
/// that cannot be a header value is left out, as no app could have sent it).
pub(crate) fn request_head(uri: &Uri, headers: &HeaderMap, last_event_id: Option<&str>) -> Vec<u8> {
    let target = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| !pq.is_empty())
        .unwrap_or("/");
    let last_event_id = last_event_id.and_then(|id| HeaderValue::from_str(id).ok());
    let mut head = Vec::with_capacity(64 + target.len() + header_bytes(headers));
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        // No body, so no framing (hyper drops a Transfer-Encoding too); the stream's own
        // Last-Event-ID replaces any other.
        if name == TRANSFER_ENCODING || (last_event_id.is_some() && name.as_str() == "last-event-id") {
            continue;
        }
        field(name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(id) = &last_event_id {
        field(b"last-event-id", id.as_bytes());
    }
    if !headers.contains_key(HOST) {
        if let Some(host) = host_of(uri) {
            field(b"host", host.as_bytes());
        }
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The Host a URL names: its host, and its port unless the scheme's own (hyper-util's rule).
fn host_of(uri: &Uri) -> Option<String> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    Some(match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    })
}

/// Scripted connections for the tests of the exchange's parts.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, ReadBuf};

    /// A connection whose reads give these bytes, one piece each (empty ones skipped), then its
    /// close.
    pub(crate) struct Reads(VecDeque<Vec<u8>>);

    impl Reads {
        pub(crate) fn new(reads: &[&[u8]]) -> Reads {
            Reads(
                reads
                    .iter()
                    .filter(|r| !r.is_empty())
                    .map(|r| r.to_vec())
                    .collect(),
            )
        }
    }

    impl AsyncRead for Reads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::ACCEPT;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_request_is_what_hyper_sent() {
        let uri: Uri = "http://127.0.0.1:3000/base/events?x=1".parse().expect("uri");
        let template = headers(&[
            ("host", "app.test"),
            ("accept", "text/event-stream"),
            ("x-two", "a"),
            ("x-two", "b"),
        ]);
        let head = request_head(&uri, &template, Some("e-41"));
        assert_eq!(
            String::from_utf8_lossy(&head),
            "GET /base/events?x=1 HTTP/1.1\r\nhost: app.test\r\naccept: text/event-stream\r\n\
             x-two: a\r\nx-two: b\r\nlast-event-id: e-41\r\n\r\n"
        );
        // An id that cannot be a header value is left out.
        let head = request_head(&uri, &template, Some("bad\nid"));
        assert!(!String::from_utf8_lossy(&head).contains("last-event-id"));
        assert!(!String::from_utf8_lossy(&head).contains("bad"));
    }

    #[test]
    fn a_request_without_host_names_the_urls() {
        let mut template = headers(&[("transfer-encoding", "chunked"), ("last-event-id", "old")]);
        template.insert(ACCEPT, HeaderValue::from_static("*/*"));
        for (uri, host) in [
            ("http://localhost/", "localhost"),
            ("http://app:80", "app"),
            ("http://app:8080/", "app:8080"),
            ("https://app:443/", "app"),
            ("https://app:80/", "app:80"),
        ] {
            let head = request_head(&uri.parse().expect("uri"), &template, Some("new"));
            assert_eq!(
                String::from_utf8_lossy(&head),
                format!("GET / HTTP/1.1\r\naccept: */*\r\nlast-event-id: new\r\nhost: {host}\r\n\r\n"),
                "{uri}"
            );
        }
    }
}
