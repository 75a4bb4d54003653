//! What identifies a stream, and where a subscription says it left off.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::OnceLock;

use http::header::HeaderMap;

use crate::config::KeyPart;

/// The query parameter some EventSource polyfills use instead of the `Last-Event-ID` header.
pub(crate) const LAST_EVENT_ID_PARAM: &str = "lastEventId";

/// Longest Last-Event-ID kept; a longer one cannot be an id ssegate gave out, so it is a gap,
/// and only this much of it is echoed in a `gap` event.
pub(crate) const MAX_LAST_EVENT_ID: usize = 1024;

/// Whether a client can send `id` back in a `Last-Event-ID` header and be found by it: a valid
/// header value (no control character but tab), with no leading or trailing space or tab (HTTP
/// strips them), at most [`MAX_LAST_EVENT_ID`] bytes. ssegate hands out no other id: a browser
/// whose reconnect carries a header the server must refuse stops its EventSource for good.
pub(crate) fn is_resumable(id: &str) -> bool {
    id.len() <= MAX_LAST_EVENT_ID
        && !id.starts_with([' ', '\t'])
        && !id.ends_with([' ', '\t'])
        && id.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// What identifies a stream: the route and the configured parts of a subscription, as bytes.
/// It holds credentials when the key includes them, so it is never logged; see [`digest`].
pub(crate) type StreamKey = Box<[u8]>;

/// Appends `bytes` with its length before it, so no two different sequences of parts encode
/// alike (joined with separators, `Bearer a=x` and the two values `Bearer a`, `x` would).
fn put(key: &mut Vec<u8>, bytes: &[u8]) {
    key.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    key.extend_from_slice(bytes);
}

/// The stream key of a subscription to `route_path`: each configured part, taken from the
/// request as the upstream receives it (its normalised `path` and `query`, and `headers` after
/// hop-by-hop removal), the bytes exactly as they came.
pub(crate) fn stream_key(
    route_path: &str,
    parts: &[KeyPart],
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> StreamKey {
    let mut key = Vec::with_capacity(128);
    put(&mut key, route_path.as_bytes());
    for part in parts {
        match part {
            KeyPart::Path => {
                key.push(b'p');
                put(&mut key, path.as_bytes());
            }
            KeyPart::Query => {
                key.push(b'q');
                put(
                    &mut key,
                    query_without_last_event_id(query).unwrap_or_default().as_bytes(),
                );
            }
            KeyPart::Header(name) => {
                // Absent and empty differ; repeated values all count, in order.
                key.push(b'h');
                put(&mut key, name.as_str().as_bytes());
                let values = headers.get_all(name);
                key.extend_from_slice(&(values.iter().count() as u64).to_be_bytes());
                for value in values {
                    put(&mut key, value.as_bytes());
                }
            }
        }
    }
    key.into_boxed_slice()
}

/// The key of the `n`th private (per-client) stream of a route: never equal to a shared key.
pub(crate) fn private_key(route_path: &str, n: u64) -> StreamKey {
    let mut key = Vec::with_capacity(route_path.len() + 17);
    put(&mut key, route_path.as_bytes());
    key.push(b'#');
    key.extend_from_slice(&n.to_be_bytes());
    key.into_boxed_slice()
}

/// A short digest of a stream key for logs and `/streams`: HMAC-SHA256 under a key drawn at
/// random when the process starts, so a digest can be compared within one process's logs but
/// never used to test guessed credentials offline.
pub(crate) fn digest(key: &[u8]) -> String {
    static SECRET: OnceLock<ring::hmac::Key> = OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            // No system randomness: fall back to what varies per process. The digest is then
            // only as strong as this seed, and still never the key itself.
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_bytes())
        })
    });
    let tag = ring::hmac::sign(secret, key);
    let mut hex = String::with_capacity(16);
    for byte in &tag.as_ref()[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The id a subscription resumes from: the `Last-Event-ID` header, or else the `lastEventId`
/// query parameter. An empty value means none.
pub(crate) fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get("last-event-id") {
        let id = String::from_utf8_lossy(value.as_bytes()).into_owned();
        return (!id.is_empty()).then_some(id);
    }
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(name, _)| *name == LAST_EVENT_ID_PARAM)
        .map(|(_, value)| percent_decode(value).into_owned())
        .filter(|id| !id.is_empty())
}

/// The query without any `lastEventId` parameter, `None` when nothing is left.
pub(crate) fn query_without_last_event_id(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(LAST_EVENT_ID_PARAM))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid UTF-8 becomes U+FFFD.
fn percent_decode(value: &str) -> Cow<'_, str> {
    if !value.contains(['%', '+']) {
        return Cow::Borrowed(value);
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::request::Parts;
    use http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    fn default_key(request: &Parts) -> StreamKey {
        let parts: Vec<KeyPart> = crate::config::DEFAULT_STREAM_KEY
            .iter()
            .map(|part| match *part {
                "path" => KeyPart::Path,
                "query" => KeyPart::Query,
                header => KeyPart::Header(
                    header
                        .strip_prefix("header:")
                        .expect("header part")
                        .parse()
                        .expect("name"),
                ),
            })
            .collect();
        stream_key(
            "/events",
            &parts,
            request.uri.path(),
            request.uri.query(),
            &request.headers,
        )
    }

    #[test]
    fn credentials_separate_streams_and_last_event_id_does_not() {
        let alice = default_key(&parts("/events?room=1", &[("authorization", "Bearer alice")]));
        let bob = default_key(&parts("/events?room=1", &[("authorization", "Bearer bob")]));
        let anonymous = default_key(&parts("/events?room=1", &[]));
        let empty = default_key(&parts("/events?room=1", &[("authorization", "")]));
        assert_ne!(alice, bob);
        assert_ne!(anonymous, empty);
        let resuming = default_key(&parts(
            "/events?lastEventId=x-4&room=1",
            &[("authorization", "Bearer alice")],
        ));
        assert_eq!(alice, resuming);
        let other_room = default_key(&parts("/events?room=2", &[("authorization", "Bearer alice")]));
        assert_ne!(alice, other_room);
        assert_eq!(digest(&alice), digest(&resuming));
        assert_ne!(digest(&alice), digest(&bob));
        assert_eq!(digest(&alice).len(), 16);
        let tenant_a = default_key(&parts("/events", &[("host", "a.example")]));
        let tenant_b = default_key(&parts("/events", &[("host", "b.example")]));
        assert_ne!(tenant_a, tenant_b, "the Host is part of the default key");
    }

    #[test]
    fn parts_cannot_be_confused() {
        // Joined with `=`, these two once made the same key.
        let one = default_key(&parts("/events", &[("authorization", "Bearer alice=x")]));
        let two = default_key(&parts(
            "/events",
            &[("authorization", "Bearer alice"), ("authorization", "x")],
        ));
        assert_ne!(one, two);
        // A header cannot pose as the path or query.
        let a = default_key(&parts("/events?a", &[]));
        let b = default_key(&parts("/events", &[("cookie", "a")]));
        assert_ne!(a, b);
        // Bytes that are not UTF-8 are kept as they are, not folded into U+FFFD.
        let mut first = parts("/events", &[]);
        first
            .headers
            .insert("cookie", http::HeaderValue::from_bytes(b"s=\xfe").expect("value"));
        let mut second = parts("/events", &[]);
        second
            .headers
            .insert("cookie", http::HeaderValue::from_bytes(b"s=\xff").expect("value"));
        assert_ne!(default_key(&first), default_key(&second));
        assert_ne!(private_key("/events", 1), private_key("/events", 2));
    }

    #[test]
    fn ids_a_client_can_send_back() {
        for id in ["1", "abc-42", "with space", "tab\tinside", "é", &"x".repeat(1024)] {
            assert!(is_resumable(id), "{id:?}");
        }
        for id in [
            " lead",
            "trail ",
            "\tlead",
            "bell\u{7}",
            "del\u{7f}",
            "esc\u{1b}[0m",
            &"x".repeat(1025),
        ] {
            assert!(!is_resumable(id), "{id:?}");
        }
    }

    #[test]
    fn last_event_id_from_header_then_query() {
        let request = parts("/e?lastEventId=q%2D1&x=1", &[("last-event-id", "h-1")]);
        assert_eq!(
            last_event_id(&request.headers, request.uri.query()).as_deref(),
            Some("h-1")
        );
        let request = parts("/e?x=1&lastEventId=q%2D1", &[]);
        assert_eq!(
            last_event_id(&request.headers, request.uri.query()).as_deref(),
            Some("q-1")
        );
        let request = parts("/e?lastEventId=", &[]);
        assert_eq!(last_event_id(&request.headers, request.uri.query()), None);
        let request = parts("/e?lastEventId=a%2", &[]);
        assert_eq!(
            last_event_id(&request.headers, request.uri.query()).as_deref(),
            Some("a%2")
        );
        assert_eq!(
            query_without_last_event_id(Some("lastEventId=1&a=2")).as_deref(),
            Some("a=2")
        );
        assert_eq!(query_without_last_event_id(Some("lastEventId=1")), None);
    }
}
