//! Compression of passed-through responses (a route's `compress`): tower-http's `Compression`
//! service over the upstream's answer, with ssegate's rules on what may be compressed.
//!
//! Only here: an SSE subscription's body never comes this way, and an event stream passed
//! through is never compressed (a compressor holds bytes until it has enough or is flushed).

use std::convert::Infallible;
use std::future::ready;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use tower::ServiceExt;
use tower_http::compression::predicate::{DefaultPredicate, Predicate};
use tower_http::compression::Compression;

use crate::config::Compress;
use crate::upstream::headers::{is_event_stream, list_items};

use super::ProxyBody;

/// The client's `Accept-Encoding` lines, kept from its request for [`compress`].
pub(crate) fn accepted(headers: &HeaderMap) -> HeaderMap {
    let mut accepted = HeaderMap::new();
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        accepted.append(header::ACCEPT_ENCODING, value.clone());
    }
    accepted
}

/// The upstream's `response`, compressed with the best of the route's codings that the client
/// `accepted` (by its q-values; `br` before `gzip` on a tie; `q=0` refuses one) if the
/// response may be compressed (see [`Compressible`]); otherwise as it is, `Vary:
/// Accept-Encoding` added when only the client's choice kept it uncompressed.
///
/// The body stays streamed: the encoder reads what the upstream has sent and, whenever the
/// upstream has nothing more for the moment, flushes what it holds, so a slow response still
/// reaches the client piece by piece. Trailers go on after the compressed data.
pub(crate) async fn compress(
    codings: Compress,
    accepted: HeaderMap,
    response: Response<Incoming>,
) -> Response<ProxyBody> {
    let encoded_before = response.headers().contains_key(header::CONTENT_ENCODING);
    // The answer rides in the request, so that the layer's inner service just hands it back:
    // the layer reads the request's Accept-Encoding, then judges the answer.
    let mut carrier = Request::new(response);
    *carrier.headers_mut() = accepted;
    let service = Compression::new(tower::service_fn(|carrier: Request<Response<Incoming>>| {
        ready(Ok::<_, Infallible>(carrier.into_body()))
    }))
    .br(codings.br)
    .gzip(codings.gzip)
    .no_deflate()
    .no_zstd()
    .compress_when(DefaultPredicate::new().and(Compressible));
    let response = match service.oneshot(carrier).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (mut parts, body) = response.into_parts();
    if encoded_before || !parts.headers.contains_key(header::CONTENT_ENCODING) {
        return Response::from_parts(parts, ProxyBody::upstream(body.into_inner()));
    }
    weaken_etag(&mut parts.headers);
    Response::from_parts(parts, ProxyBody::compressed(body))
}

/// ssegate's rules on top of tower-http's `DefaultPredicate` (which refuses bodies under 32
/// bytes, images, gRPC and event streams) and the layer's own (never a response that has a
/// `Content-Encoding` already, or a `Content-Range`).
#[derive(Debug, Clone, Copy)]
struct Compressible;

impl Predicate for Compressible {
    fn should_compress<B: Body>(&self, response: &Response<B>) -> bool {
        let headers = response.headers();
        // No body (204, 304), or a part of one (206).
        let status = response.status();
        let has_whole_body = !(status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
            ));
        // RFC 9110 §7.7: "A proxy MUST NOT transform the content (Section 6.4) of a response
        // message that contains a no-transform cache directive". A content coding is such a
        // transformation.
        let no_transform = list_items(headers.get_all(header::CACHE_CONTROL))
            .any(|directive| directive.eq_ignore_ascii_case("no-transform"));
        // Trailers and digests usually vouch for the bytes (a checksum, a signature, RFC 9530's
        // Content-Digest and Repr-Digest, which cover the content coding): compressing would
        // falsify them.
        let vouched = [
            "trailer",
            "content-digest",
            "repr-digest",
            "digest",
            "content-md5",
        ]
        .iter()
        .any(|name| headers.contains_key(*name));
        has_whole_body
            && !no_transform
            && !vouched
            && !is_event_stream(headers)
            && headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(is_compressible)
    }
}

/// Whether a `Content-Type` is text-like enough to gain from compression: text (not an event
/// stream), JSON, XML, JavaScript, SVG, WebAssembly and uncompressed fonts. Images, audio,
/// video, archives and WOFF fonts are compressed already; a response without a type is left
/// alone, since nothing says what it is.
fn is_compressible(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((kind, subtype)) = media.split_once('/') else {
        return false;
    };
    match kind {
        "text" => subtype != "event-stream",
        "application" => {
            matches!(
                subtype,
                "json"
                    | "javascript"
                    | "ecmascript"
                    | "x-javascript"
                    | "xml"
                    | "wasm"
                    | "vnd.ms-fontobject"
                    | "x-font-ttf"
                    | "x-font-otf"
            ) || subtype.ends_with("+json")
                || subtype.ends_with("+xml")
        }
        "image" => matches!(subtype, "svg+xml" | "x-icon" | "vnd.microsoft.icon" | "bmp"),
        "font" => matches!(subtype, "ttf" | "otf"),
        _ => false,
    }
}

/// Makes a strong `ETag` weak (`"x"` → `W/"x"`): a strong validator names these exact bytes,
/// and the compressed ones are others (RFC 9110 §8.8.1), as Nginx's gzip does. A conditional
/// request with `W/"x"` still matches `"x"` at the app, whose `If-None-Match` compares weakly.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    if etag.as_bytes().starts_with(b"W/") {
        return;
    }
    let mut weak = b"W/".to_vec();
    weak.extend_from_slice(etag.as_bytes());
    match HeaderValue::from_bytes(&weak) {
        Ok(weak) => headers.insert(header::ETAG, weak),
        Err(_) => headers.remove(header::ETAG),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_like_types_are_compressible_and_the_rest_are_not() {
        for yes in [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/CSS",
            "text/plain",
            "application/json",
            "application/problem+json",
            "application/javascript",
            "application/xml",
            "application/atom+xml",
            "image/svg+xml",
            "application/wasm",
            "font/ttf",
        ] {
            assert!(is_compressible(yes), "{yes}");
        }
        for no in [
            "text/event-stream",
            "text/event-stream; charset=utf-8",
            "image/png",
            "image/jpeg",
            "video/mp4",
            "audio/mpeg",
            "application/octet-stream",
            "application/zip",
            "application/gzip",
            "application/pdf",
            "font/woff2",
            "",
            "json",
        ] {
            assert!(!is_compressible(no), "{no}");
        }
    }

    #[test]
    fn a_strong_etag_is_weakened_and_a_weak_one_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        weaken_etag(&mut headers);
        assert_eq!(headers[header::ETAG], "W/\"v1\"");
        weaken_etag(&mut headers);
        assert_eq!(headers[header::ETAG], "W/\"v1\"");
    }

    #[test]
    fn what_the_app_vouched_for_or_has_no_body_is_not_compressed() {
        let judge = |status: u16, headers: &[(&str, &str)]| {
            let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::from(vec![b'a'; 1000])));
            *response.status_mut() = StatusCode::from_u16(status).expect("status");
            for (name, value) in headers {
                response.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    HeaderValue::from_str(value).expect("value"),
                );
            }
            Compressible.should_compress(&response)
        };
        let html = ("content-type", "text/html");
        assert!(judge(200, &[html]));
        assert!(judge(404, &[html]), "an error page is compressed too");
        assert!(!judge(200, &[]), "no type: unknown bytes");
        for status in [204, 206, 304] {
            assert!(!judge(status, &[html]), "{status}");
        }
        assert!(!judge(200, &[html, ("cache-control", "public, No-Transform")]));
        assert!(!judge(200, &[html, ("trailer", "x-checksum")]));
        assert!(!judge(200, &[html, ("content-digest", "sha-256=:x:")]));
        assert!(!judge(200, &[("content-type", "text/event-stream")]));
    }
}
