//! The app's response head: read into a buffer that is freed once it is parsed, parsed with
//! `httparse` (hyper's own parser), with informational (1xx) responses skipped, and judged for
//! how its body is framed (RFC 9112 §6.3).

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::decode::{Decoder, Framing, Progress};

/// Bytes of a response head, informational responses before it included. hyper allowed about
/// 400 KiB; an app's event-stream head is a few hundred bytes, and a stream passes at most
/// 16 KiB of its headers on (`MAX_STREAM_HEADER_BYTES`), so 64 KiB is plenty, and what an app
/// gets wrong costs little.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Header fields in a response head: hyper's limit too.
pub(crate) const MAX_HEADERS: usize = 100;

/// The first read's buffer; it grows (up to [`MAX_HEAD_BYTES`]) only for a larger head.
const FIRST_READ: usize = 1024;

/// The app's response head could not be read: its fault (or the connection's).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    /// Over [`MAX_HEAD_BYTES`].
    #[error("the app's response head is over {} KiB", MAX_HEAD_BYTES / 1024)]
    TooLarge,
    /// Over [`MAX_HEADERS`] fields.
    #[error("the app's response head has over {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// Not HTTP/1.x, or not as RFC 9112 frames it.
    #[error("the app sent a malformed response head: {0}")]
    Malformed(&'static str),
    /// A 101 to a request that asked for no upgrade.
    #[error("the app answered 101 Switching Protocols to a request that asked for no upgrade")]
    Upgrade,
    /// The app closed the connection first.
    #[error("the app closed the connection before its response head was complete")]
    Closed,
    /// Reading failed.
    #[error("reading the app's response head failed")]
    Read(#[source] io::Error),
}

/// A response head read, with what came after it.
#[derive(Debug)]
pub(crate) struct Head {
    /// Status, version and headers.
    pub(crate) response: Response<()>,
    /// The body's decoder.
    pub(crate) decoder: Decoder,
    /// What was read after the head (often the app's first event), still to decode: empty
    /// when the body has none.
    pub(crate) rest: Bytes,
}

/// Reads the response head from `io`; the buffer is dropped when this returns.
pub(crate) async fn read_head<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<Head, HeadError> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    // Bytes of informational heads skipped before, which count against the limit too.
    let mut skipped = 0;
    loop {
        match parse(&buf)? {
            Parsed::Partial => {}
            Parsed::Informational(len) => {
                skipped += len;
                buf.advance(len);
                continue;
            }
            Parsed::Complete(response, framing, len) => {
                let decoder = Decoder::new(framing);
                let rest = match decoder.progress() {
                    Progress::More => Bytes::copy_from_slice(&buf[len..]),
                    _ => Bytes::new(),
                };
                return Ok(Head {
                    response: *response,
                    decoder,
                    rest,
                });
            }
        }
        let room = MAX_HEAD_BYTES.saturating_sub(skipped + buf.len());
        if room == 0 {
            return Err(HeadError::TooLarge);
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().max(FIRST_READ).min(room));
        }
        if io
            .read_buf(&mut (&mut buf).limit(room))
            .await
            .map_err(HeadError::Read)?
            == 0
        {
            return Err(HeadError::Closed);
        }
    }
}

enum Parsed {
    Partial,
    /// A 1xx head of this many bytes, to skip.
    Informational(usize),
    /// The final head, its body's framing, and its length in bytes.
    Complete(Box<Response<()>>, Framing, usize),
}

/// Parses a response head. Kept out of the async state, so the header array lives on the stack
/// only while parsing.
fn parse(buf: &[u8]) -> Result<Parsed, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut headers);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => {
            return Err(HeadError::Malformed(
                "not an HTTP/1.x status line and header fields",
            ))
        }
    };
    let status = head
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(HeadError::Malformed("an invalid status code"))?;
    match status.as_u16() {
        101 => return Err(HeadError::Upgrade),
        // RFC 9110 §15.2: a client must be able to parse informational responses before the
        // final one, and may ignore them.
        100..=199 => return Ok(Parsed::Informational(len)),
        _ => {}
    }
    let version = match head.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    let map = response.headers_mut();
    map.reserve(head.headers.len());
    for h in head.headers.iter() {
        match (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => return Err(HeadError::Malformed("a header field that is not valid")),
        }
    }
    let framing = framing(status, version, response.headers())?;
    Ok(Parsed::Complete(Box::new(response), framing, len))
}

/// How the body of a response to a GET is framed (RFC 9112 §6.3; a GET's answer is never a
/// HEAD's or a CONNECT's, which have none either).
fn framing(status: StatusCode, version: Version, headers: &HeaderMap) -> Result<Framing, HeadError> {
    // 1. "any response with a 1xx (Informational), 204 (No Content), or 304 (Not Modified)
    //    status code is always terminated by the first empty line after the header fields".
    if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        return Ok(Framing::Empty);
    }
    // 3. "If a message is received with both a Transfer-Encoding and a Content-Length header
    //    field, the Transfer-Encoding overrides the Content-Length."
    // 4. "If a Transfer-Encoding header field is present in a response and the chunked transfer
    //    coding is not the final encoding, the message body length is determined by reading
    //    the connection until it is closed by the server."
    if headers.contains_key(TRANSFER_ENCODING) {
        // §6.1: HTTP/1.0 has no Transfer-Encoding; a message with both is faulty framing.
        if version == Version::HTTP_10 {
            return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 response"));
        }
        let last = headers.get_all(TRANSFER_ENCODING).iter().next_back();
        let chunked = last
            .and_then(|value| value.as_bytes().rsplit(|b| *b == b',').next())
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    // 5. "If a valid Content-Length header field is present without Transfer-Encoding, its
    //    decimal value defines the expected message body length"; an invalid one, or several
    //    that differ, make the framing invalid (RFC 9110 §8.6 allows a list of one value).
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = decimal(part.trim_ascii()).ok_or(HeadError::Malformed("an invalid Content-Length"))?;
            if length.replace(n).is_some_and(|before| before != n) {
                return Err(HeadError::Malformed("Content-Length values that differ"));
            }
        }
    }
    // 8. "Otherwise, this is a response message without a declared message body length, so the
    //    message body length is determined by the number of octets received prior to the
    //    server closing the connection."
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// A Content-Length: one or more digits, and nothing else.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::upstream::stream::testing::Reads;

    /// Reads a head from `reads`, one read each.
    async fn head_of(reads: &[&[u8]]) -> Result<Head, HeadError> {
        read_head(&mut Reads::new(reads)).await
    }

    fn framing_of(head: &str) -> Result<Framing, HeadError> {
        let text = format!("{head}\r\n\r\n");
        match parse(text.as_bytes())? {
            Parsed::Complete(_, framing, _) => Ok(framing),
            _ => panic!("complete head: {head:?}"),
        }
    }

    #[tokio::test]
    async fn a_head_split_anywhere_is_read_with_the_body_after_it() {
        let input: &[u8] = b"HTTP/1.1 100 Continue\r\nx-early: 1\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Two: a\r\nx-two: b\r\n\
            Transfer-Encoding: chunked\r\n\r\n7\r\ndata: 1\r\n";
        for at in 0..input.len() {
            let head = head_of(&[&input[..at], &input[at..]]).await.expect("head");
            let response = &head.response;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.version(), Version::HTTP_11);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            assert_eq!(response.headers().get_all("x-two").iter().count(), 2);
            assert!(
                !response.headers().contains_key("x-early"),
                "1xx heads are skipped"
            );
            // What the head's own read gave of the body is left for the body's reader.
            assert!(
                b"7\r\ndata: 1\r\n".starts_with(&head.rest),
                "split at {at}: {:?}",
                head.rest
            );
            assert_eq!(head.decoder.progress(), Progress::More);
        }
    }

    #[tokio::test]
    async fn heads_over_the_limits_or_broken_are_the_apps_fault() {
        let giant = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "b".repeat(MAX_HEAD_BYTES));
        assert!(matches!(
            head_of(&[giant.as_bytes()]).await,
            Err(HeadError::TooLarge)
        ));
        // 1xx heads count too: an endless run of them is bounded.
        let informational = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_HEAD_BYTES / 20);
        assert!(matches!(
            head_of(&[informational.as_bytes()]).await,
            Err(HeadError::TooLarge)
        ));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(MAX_HEADERS + 1));
        assert!(matches!(
            head_of(&[many.as_bytes()]).await,
            Err(HeadError::TooManyHeaders)
        ));
        let at_limit = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(MAX_HEADERS));
        assert!(head_of(&[at_limit.as_bytes()]).await.is_ok());
        for (input, case) in [
            (
                &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"[..],
                "101",
            ),
            (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "no colon"),
            (b"HTTP/2 200\r\n\r\n", "not HTTP/1.x"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP"),
            (b"HTTP/1.1 200 OK\r\nx: a\x01b\r\n\r\n", "control byte in a value"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                "lengths",
            ),
        ] {
            let result = head_of(&[input]).await;
            assert!(result.is_err(), "{case}: {result:?}");
        }
        assert!(matches!(
            head_of(&[b"HTTP/1.1 200 OK\r\n"]).await,
            Err(HeadError::Closed)
        ));
        assert!(HeadError::TooLarge.to_string().starts_with("the app's"));
    }

    #[test]
    fn the_head_says_how_the_body_is_framed() {
        let cases: &[(&str, Option<Framing>)] = &[
            ("HTTP/1.1 200 OK", Some(Framing::UntilClose)),
            ("HTTP/1.1 200 OK\r\ncontent-length: 12", Some(Framing::Length(12))),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 12, 12\r\nContent-Length: 12",
                Some(Framing::Length(12)),
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length: 12, 13", None),
            ("HTTP/1.1 200 OK\r\ncontent-length: +12", None),
            ("HTTP/1.1 200 OK\r\ncontent-length: 1 2", None),
            ("HTTP/1.1 200 OK\r\ncontent-length: ", None),
            ("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999", None),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked",
                Some(Framing::Chunked),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked ",
                Some(Framing::Chunked),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip",
                Some(Framing::UntilClose),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip",
                Some(Framing::UntilClose),
            ),
            // Both: Transfer-Encoding wins, whatever the length says.
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked",
                Some(Framing::Chunked),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: x\r\ntransfer-encoding: chunked",
                Some(Framing::Chunked),
            ),
            ("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked", None),
            ("HTTP/1.0 200 OK\r\ncontent-length: 3", Some(Framing::Length(3))),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 5",
                Some(Framing::Empty),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked",
                Some(Framing::Empty),
            ),
        ];
        for (head, want) in cases {
            let got = framing_of(head).ok();
            assert_eq!(got, *want, "{head:?}");
        }
    }
}
