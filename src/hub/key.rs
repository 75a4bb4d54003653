//! What identifies a stream, and where a subscription says it left off.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::header::HeaderMap;
use http::Uri;

use crate::config::KeyPart;

/// The query parameter some EventSource polyfills use instead of the `Last-Event-ID` header.
pub const LAST_EVENT_ID_PARAM: &str = "lastEventId";

/// Longest Last-Event-ID kept; a longer one cannot be an id ssegate gave out, so it is a gap,
/// and only this much of it is echoed in a `gap` event.
pub const MAX_LAST_EVENT_ID: usize = 1024;

/// The stream key of a subscription: the route, then each configured part. It holds
/// credentials when the key includes them, so it is never logged; see [`digest`].
pub fn stream_key(route_path: &str, parts: &[KeyPart], uri: &Uri, headers: &HeaderMap) -> String {
    let mut key = String::with_capacity(64);
    key.push_str(route_path);
    for part in parts {
        key.push('\n');
        match part {
            KeyPart::Path => {
                let _ = write!(key, "path={}", uri.path());
            }
            KeyPart::Query => {
                let _ = write!(
                    key,
                    "query={}",
                    query_without_last_event_id(uri.query()).unwrap_or_default()
                );
            }
            KeyPart::Header(name) => {
                let _ = write!(key, "header:{name}");
                // Absent and empty differ; repeated values all count, in order.
                for value in headers.get_all(name) {
                    key.push('=');
                    key.push_str(&String::from_utf8_lossy(value.as_bytes()));
                }
            }
        }
    }
    key
}

/// A short, stable digest of a stream key for logs: never the credentials themselves.
pub fn digest(key: &str) -> String {
    // FNV-1a: stable across runs and processes, unlike the std hasher's random keys.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The id a subscription resumes from: the `Last-Event-ID` header, or else the `lastEventId`
/// query parameter. An empty value means none.
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
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
pub fn query_without_last_event_id(query: Option<&str>) -> Option<String> {
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

    fn default_key(request: &Parts) -> String {
        let parts = [
            KeyPart::Path,
            KeyPart::Query,
            KeyPart::Header("authorization".parse().expect("name")),
            KeyPart::Header("cookie".parse().expect("name")),
        ];
        stream_key("/events", &parts, &request.uri, &request.headers)
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
        assert!(!digest(&alice).contains("alice"));
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
