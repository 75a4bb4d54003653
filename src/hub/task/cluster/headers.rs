//! The app's response headers as they are kept beside a stream's log in Redis, for the
//! instances that follow it: `name: value` lines. What comes back from Redis is read as
//! untrusted bytes: a line that is no valid header is left out.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Headers as `name: value` lines, for Redis.
pub(super) fn encode_headers(headers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.freeze()
}

/// The headers of [`encode_headers`]' lines; a line that is no valid header (not ssegate's
/// writing) is left out.
pub(super) fn decode_headers(bytes: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_trip_through_redis() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "access-control-allow-origin",
            HeaderValue::from_static("https://app.example"),
        );
        headers.append("vary", HeaderValue::from_static("Origin"));
        headers.append("vary", HeaderValue::from_static("Cookie"));
        headers.insert("x-odd", HeaderValue::from_bytes(b"caf\xe9: a, b").unwrap());
        assert_eq!(decode_headers(&encode_headers(&headers)), headers);
        assert!(decode_headers(b"").is_empty());
    }

    #[test]
    fn foreign_bytes_under_our_key_give_only_valid_headers() {
        let stored = b"no colon here\r\n: no name\r\nbad name: x\r\nx-ok: 1\r\nx-nul: a\x00b\r\n\xff\xfe: y\nx-lf-only: 2";
        let headers = decode_headers(stored);
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-ok", "x-lf-only"]);
        assert_eq!(headers["x-ok"], "1");
        // A value cannot smuggle a second header: lines split on LF, and CR or NUL inside a
        // value makes it invalid.
        let smuggled = decode_headers(b"x-a: 1\rset-cookie: s=1\r\n");
        assert!(smuggled.get("set-cookie").is_none() && smuggled.get("x-a").is_none());
    }
}
