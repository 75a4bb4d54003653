//! Header rules of a proxy: hop-by-hop removal, confusable spellings, list elements, the app's
//! headers a stream keeps. What the upstream is told of the client is `forwarded`'s.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) use super::forwarded::{add_forwarded, client_address, Forwarding};

/// Headers that describe one connection, not the message, and so stop at a proxy.
///
/// RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a
/// message is forwarded and, for each connection-option in this field, remove any header or
/// trailer field(s) from the message with the same name as the connection-option, and then remove
/// the Connection header field itself (or replace it with the intermediary's own control options
/// for the forwarded message)." And: "a proxy or gateway MUST remove or replace any received
/// connection-specific fields before forwarding the message. [...] Proxy-Connection, Keep-Alive,
/// TE, Transfer-Encoding, and Upgrade." Proxy-Authenticate and Proxy-Authorization (§11.7) are
/// meant for the proxy itself.
///
/// `Trailer` is deliberately kept: RFC 9110 §6.6.2 makes it end-to-end (the list in RFC 2616
/// named "Trailers", the TE token, not this field), and the HTTP/1.1 encoder writes only the
/// trailer fields that `Trailer` announces, so removing it would silently drop trailers.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers: those named by `Connection`, then the fixed set, then `TE` —
/// except that `TE: trailers` is passed on, as it asks the next hop to keep trailers.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = list_items(headers.get_all(header::CONNECTION))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let wants_trailers = list_items(headers.get_all(header::TE)).any(|coding| {
        coding
            .split(';')
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("trailers"))
    });
    headers.remove(header::TE);
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The elements of a comma-separated header list, over all of its field lines (`values`, as
/// from `HeaderMap::get_all`), each trimmed of whitespace; field lines that are not text are
/// skipped.
///
/// RFC 9110 §5.6.1.2: "A recipient MUST parse and ignore a reasonable number of empty list
/// elements: enough to handle common mistakes by senders that merge values, but not so much
/// that they could be used as a denial-of-service mechanism." Empty elements are skipped, so
/// `foo , ,bar,charlie` is three. A comma inside a quoted string (§5.6.4, a parameter's value)
/// does not end an element.
pub(crate) fn list_items<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a str> {
    values
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| ListItems { rest: line })
}

/// The elements of one field line; see [`list_items`].
struct ListItems<'a> {
    rest: &'a str,
}

impl<'a> Iterator for ListItems<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while !self.rest.is_empty() {
            let (element, rest) = self.rest.split_at(element_end(self.rest));
            // `rest` is empty or starts with the comma, one byte.
            self.rest = rest.get(1..).unwrap_or("");
            // OWS is spaces and tabs (§5.6.3).
            let element = element.trim_matches([' ', '\t']);
            if !element.is_empty() {
                return Some(element);
            }
        }
        None
    }
}

/// Where the first element of `text` ends: at its first comma outside a quoted string (a
/// quoted string left open runs to the end).
fn element_end(text: &str) -> usize {
    let (mut quoted, mut escaped) = (false, false);
    for (i, byte) in text.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return i,
            _ => {}
        }
    }
    text.len()
}

/// Whether a response's `Content-Type` is `text/event-stream` (parameters aside).
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// Most bytes of an app's headers given to each subscriber of its stream: a subscriber's
/// response head is written once per client, so an app's headers are multiplied by them.
pub(crate) const MAX_STREAM_HEADER_BYTES: usize = 16 * 1024;

/// The headers of an app's event-stream response that every subscriber's response carries:
/// the end-to-end ones (hop-by-hop removed), without those ssegate sets itself or that describe
/// one response body rather than the stream (`Content-Type`, `Cache-Control`,
/// `X-Accel-Buffering`, `Content-Length`, `Content-Encoding`: an event stream is never
/// compressed; `Content-Range`, `ETag`, `Last-Modified`, `Accept-Ranges`, `Trailer`), the `Date` of a
/// response that may be hours old, and those meant for one client: `Set-Cookie` and
/// `Clear-Site-Data`. At most [`MAX_STREAM_HEADER_BYTES`] of them, in the app's order; returns
/// how many more there were.
pub(crate) fn stream_headers(app: &HeaderMap) -> (HeaderMap, usize) {
    let mut headers = app.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::TE);
    for name in [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        HeaderName::from_static("x-accel-buffering"),
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::ETAG,
        header::LAST_MODIFIED,
        header::ACCEPT_RANGES,
        header::TRAILER,
        header::DATE,
        header::SET_COOKIE,
        HeaderName::from_static("clear-site-data"),
    ] {
        headers.remove(name);
    }
    if header_bytes(&headers) <= MAX_STREAM_HEADER_BYTES {
        return (headers, 0);
    }
    let mut kept = HeaderMap::new();
    let (mut size, mut dropped) = (0, 0);
    for (name, value) in &headers {
        let len = name.as_str().len() + value.len() + 4;
        if size + len <= MAX_STREAM_HEADER_BYTES {
            size += len;
            kept.append(name.clone(), value.clone());
        } else {
            dropped += 1;
        }
    }
    (kept, dropped)
}

/// About the bytes `headers` take on the wire.
pub(crate) fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Headers whose meaning a client could fake with an underscore for a dash: framing, the
/// connection, and what ssegate itself tells the upstream.
const CONFUSABLE: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "te",
    "upgrade",
    "keep-alive",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
];

/// Removes request headers that spell one of [`CONFUSABLE`] with `_` for `-`
/// (`Content_Length`, `X_Forwarded_For`). CGI and WSGI servers map both spellings to one
/// variable (`HTTP_X_FORWARDED_FOR`), so such a header could override what ssegate sets, or
/// frame the request for the app differently than for ssegate; Nginx drops every header with an
/// underscore by default for this reason. Other underscore headers pass.
pub(crate) fn drop_confusable(headers: &mut HeaderMap) {
    let fakes: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .filter(|name| {
            let dashed = name.as_str().replace('_', "-");
            CONFUSABLE.contains(&dashed.as_str())
        })
        .cloned()
        .collect();
    for name in fakes {
        headers.remove(name);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::upstream) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    /// The header names left, sorted.
    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        left
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["trailer", "x-kept"]);
    }

    #[test]
    fn underscore_spellings_of_framing_and_forwarding_headers_are_dropped() {
        let mut headers = map(&[
            ("content_length", "40"),
            ("transfer_encoding", "chunked"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_forwarded-host", "evil"),
            ("x_api_key", "kept"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        drop_confusable(&mut headers);
        assert_eq!(names(&headers), ["x-forwarded-for", "x_api_key"]);
    }

    #[test]
    fn stream_headers_are_end_to_end_and_bounded() {
        let mut app = map(&[
            ("access-control-allow-origin", "https://a.example"),
            ("content-type", "text/event-stream"),
            ("set-cookie", "s=1"),
            ("clear-site-data", "\"cookies\""),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("etag", "\"1\""),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-app", "kept"),
        ]);
        let (headers, dropped) = stream_headers(&app);
        assert_eq!(names(&headers), ["access-control-allow-origin", "x-app"]);
        assert_eq!(dropped, 0);
        for n in 0..100 {
            app.append(
                HeaderName::from_bytes(format!("x-big-{n}").as_bytes()).expect("name"),
                HeaderValue::from_bytes(&[b'v'; 1000]).expect("value"),
            );
        }
        let (headers, dropped) = stream_headers(&app);
        assert!(header_bytes(&headers) <= MAX_STREAM_HEADER_BYTES);
        assert!(
            headers.contains_key("access-control-allow-origin"),
            "the first ones are kept"
        );
        assert!(dropped > 80, "{dropped}");
    }

    #[test]
    fn list_elements_per_rfc_9110() {
        let items = |lines: &[&str]| {
            let values: Vec<HeaderValue> = lines
                .iter()
                .map(|line| HeaderValue::from_str(line).expect("value"))
                .collect();
            list_items(&values).map(str::to_owned).collect::<Vec<_>>()
        };
        // RFC 9110 §5.6.1.2's examples: valid lists, and lists with no element.
        assert_eq!(items(&["foo,bar"]), ["foo", "bar"]);
        assert_eq!(items(&["foo ,bar,"]), ["foo", "bar"]);
        assert_eq!(items(&["foo , ,bar,charlie"]), ["foo", "bar", "charlie"]);
        for empty in ["", ",", ",   ,"] {
            assert!(items(&[empty]).is_empty(), "{empty:?}");
        }
        // Field lines are one list (§5.3); OWS includes tabs.
        assert_eq!(items(&["a,\tb\t", " c "]), ["a", "b", "c"]);
        // A quoted parameter may hold a comma (or an escaped quote).
        assert_eq!(
            items(&[r#"text/plain;x="a,b", text/event-stream"#]),
            [r#"text/plain;x="a,b""#, "text/event-stream"]
        );
        assert_eq!(items(&[r#"a;x="\",", b"#]), [r#"a;x="\",""#, "b"]);
        let not_text = HeaderValue::from_bytes(b"caf\xe9, b").expect("value");
        assert_eq!(list_items([&not_text]).count(), 0);
    }

    #[test]
    fn te_trailers_is_kept() {
        let mut headers = map(&[("te", "gzip, trailers;q=1")]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
    }
}
