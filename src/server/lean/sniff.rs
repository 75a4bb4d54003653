//! The first request head of a connection: read, parsed with `httparse`, and judged: served
//! on the lean path, or handed to hyper with the bytes read so far.

use std::io;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Method, Request, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::server::MAX_REQUEST_HEAD_BYTES;

/// Headers a head may hold (hyper's default is 100).
const MAX_HEADERS: usize = 100;

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
}
