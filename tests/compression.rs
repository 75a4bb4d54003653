//! A route's `compress`: passed-through responses compressed by the client's Accept-Encoding,
//! streamed as they come, and everything that must stay as the app sent it left alone.

mod common;

use std::io::Write;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::sync::mpsc;

/// About 9 KiB of JSON, as an API would answer.
fn json() -> String {
    let items: Vec<String> = (0..120)
        .map(|n| {
            format!(
                "{{\"id\":{n},\"name\":\"item {n}\",\"tags\":[\"a\",\"b\"],\"price\":{}.5}}",
                n * 3
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Decodes a body by its Content-Encoding.
fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut decoder = Decoder::new(encoding);
    decoder.feed(body);
    decoder.output().to_vec()
}

/// A decoder fed piece by piece, as a browser decodes a response while it arrives.
enum Decoder {
    Identity(Vec<u8>),
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    fn new(encoding: Option<&str>) -> Decoder {
        match encoding {
            None => Decoder::Identity(Vec::new()),
            Some("gzip") => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            Some("br") => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            Some(other) => panic!("unexpected Content-Encoding {other}"),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        match self {
            Decoder::Identity(out) => out.extend_from_slice(bytes),
            Decoder::Gzip(decoder) => {
                decoder.write_all(bytes).expect("gzip");
                decoder.flush().expect("gzip");
            }
            Decoder::Brotli(decoder) => {
                decoder.write_all(bytes).expect("br");
                decoder.flush().expect("br");
            }
        }
    }

    fn output(&self) -> &[u8] {
        match self {
            Decoder::Identity(out) => out,
            Decoder::Gzip(decoder) => decoder.get_ref(),
            Decoder::Brotli(decoder) => decoder.get_ref(),
        }
    }
}

/// An app that answers each path with a fixed kind of response.
async fn app() -> Upstream {
    Upstream::start(|request: Request<Incoming>| async move {
        let response = Response::builder();
        let path = request.uri().path().to_owned();
        let response = match path.as_str() {
            "/json" => response
                .header("content-type", "application/json")
                .header("content-length", json().len())
                .header("etag", "\"v7\"")
                .header("accept-ranges", "bytes"),
            "/html" => response.header("content-type", "text/html; charset=utf-8"),
            "/small" => {
                return Response::builder()
                    .header("content-type", "text/plain")
                    .body(full("tiny"))
                    .expect("response")
            }
            "/png" => response.header("content-type", "image/png"),
            "/zip" => response.header("content-type", "application/zip"),
            "/untyped" => response,
            "/no-transform" => response
                .header("content-type", "application/json")
                .header("cache-control", "public, no-transform"),
            "/digest" => response
                .header("content-type", "application/json")
                .header("repr-digest", "sha-256=:AAAA:"),
            "/encoded" => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(json().as_bytes()).expect("gzip");
                let gzipped = encoder.finish().expect("gzip");
                return Response::builder()
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(full(gzipped))
                    .expect("response");
            }
            "/range" => response
                .status(StatusCode::PARTIAL_CONTENT)
                .header("content-type", "application/json")
                .header("content-range", format!("bytes 0-{}/99999", json().len() - 1)),
            "/none" => {
                return Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .header("content-type", "application/json")
                    .body(full(""))
                    .expect("response")
            }
            "/not-modified" => {
                return Response::builder()
                    .status(StatusCode::NOT_MODIFIED)
                    .header("content-type", "application/json")
                    .header("etag", "\"v7\"")
                    .body(full(""))
                    .expect("response")
            }
            "/trailers" => {
                let (tx, body) = channel_body();
                let _ = tx.send(Frame::data(Bytes::from(json())));
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", "abc".parse().expect("value"));
                let _ = tx.send(Frame::trailers(trailers));
                return Response::builder()
                    .header("content-type", "application/json")
                    .header("trailer", "x-checksum")
                    .body(body)
                    .expect("response");
            }
            _ => response
                .status(StatusCode::NOT_FOUND)
                .header("content-type", "text/html"),
        };
        response.body(full(json())).expect("response")
    })
    .await
}

#[tokio::test]
async fn the_clients_accept_encoding_picks_among_the_routes_codings() {
    let app = app().await;
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/\"\nupstream = \"http://{0}\"\ncompress = [\"br\", \"gzip\"]\n\
         [[route]]\npath = \"/gzip-only\"\nupstream = \"http://{0}\"\ncompress = [\"gzip\"]\n",
        app.addr
    ))
    .await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("/json", "gzip", Some("gzip")),
        ("/json", "gzip, deflate, br, zstd", Some("br")),
        ("/json", "br;q=0, gzip", Some("gzip")),
        ("/json", "br;q=0.2, gzip;q=0.8", Some("gzip")),
        ("/json", "gzip;q=0.5, br", Some("br")),
        ("/json", "x-gzip", Some("gzip")),
        ("/json", "GZIP", Some("gzip")),
        ("/json", "gzip;q=0, br;q=0", None),
        ("/json", "identity", None),
        ("/json", "deflate", None),
        ("/json", "*", None),
        ("/json", "", None),
        ("/html", "gzip", Some("gzip")),
        ("/gzip-only/json", "br", None),
        ("/gzip-only/json", "br, gzip;q=0.1", Some("gzip")),
        // An error page of the app's is compressed like any page.
        ("/missing", "br", Some("br")),
    ];
    for (path, accept, expected) in cases {
        let headers: &[(&str, &str)] = if accept.is_empty() {
            &[]
        } else {
            &[("accept-encoding", accept)]
        };
        let reply = get(&proxy.url(path), headers).await;
        let case = format!("{path} with Accept-Encoding {accept:?}");
        assert_eq!(reply.header("content-encoding"), *expected, "{case}");
        assert_eq!(
            decode(*expected, &reply.body),
            json().as_bytes(),
            "{case}: the decoded body is the app's"
        );
        let vary: Vec<_> = reply.headers.get_all("vary").iter().collect();
        assert_eq!(
            vary,
            ["accept-encoding"],
            "{case}: caches keep one copy per coding"
        );
        if expected.is_some() {
            assert!(
                reply.body.len() < json().len() / 3,
                "{case}: {} bytes",
                reply.body.len()
            );
            assert!(reply.header("content-length").is_none(), "{case}");
        }
        if *path == "/json" {
            let (etag, ranges) = match expected {
                // These bytes are not the app's: a strong validator would lie about them, and
                // a range of them is no range of the app's.
                Some(_) => (Some("W/\"v7\""), None),
                None => (Some("\"v7\""), Some("bytes")),
            };
            assert_eq!(reply.header("etag"), etag, "{case}");
            assert_eq!(reply.header("accept-ranges"), ranges, "{case}");
        }
    }
}

#[tokio::test]
async fn what_must_stay_as_the_app_sent_it_is_not_compressed() {
    let app = app().await;
    let proxy = Sidecar::route("/", app.addr, "compress = [\"br\", \"gzip\"]").await;
    let plain = json();
    let cases: &[(&str, &str)] = &[
        ("/small", "under 32 bytes"),
        ("/png", "an image"),
        ("/zip", "an archive"),
        ("/untyped", "no Content-Type"),
        ("/no-transform", "Cache-Control: no-transform (RFC 9110 §7.7)"),
        ("/digest", "a digest of the app's bytes"),
        ("/range", "a range"),
    ];
    for (path, why) in cases {
        let reply = get(&proxy.url(path), &[("accept-encoding", "gzip, br")]).await;
        assert_eq!(reply.header("content-encoding"), None, "{path}: {why}");
        let expected = if *path == "/small" { "tiny" } else { plain.as_str() };
        assert_eq!(reply.text(), expected, "{path}: {why}");
    }

    // Encoded by the app: its bytes and its Content-Encoding, not encoded twice.
    let reply = get(&proxy.url("/encoded"), &[("accept-encoding", "br")]).await;
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(decode(Some("gzip"), &reply.body), plain.as_bytes());

    // No body: 204, 304, and HEAD (whose headers stay as the app gave them).
    for (path, status) in [("/none", 204), ("/not-modified", 304)] {
        let reply = get(&proxy.url(path), &[("accept-encoding", "gzip")]).await;
        assert_eq!(reply.status.as_u16(), status);
        assert_eq!(reply.header("content-encoding"), None, "{path}");
        assert!(reply.body.is_empty());
    }
    let reply = send(
        Request::head(proxy.url("/json"))
            .header("accept-encoding", "gzip")
            .body(Empty::<Bytes>::new())
            .expect("request"),
    )
    .await;
    assert_eq!(reply.header("content-encoding"), None);
    assert_eq!(
        reply.header("content-length"),
        Some(plain.len().to_string().as_str())
    );
    assert!(reply.body.is_empty());

    // Announced trailers usually vouch for the bytes (a checksum): the body is left as sent,
    // and the trailers arrive.
    let reply = get(
        &proxy.url("/trailers"),
        &[("accept-encoding", "gzip"), ("te", "trailers")],
    )
    .await;
    assert_eq!(reply.header("content-encoding"), None);
    assert_eq!(reply.text(), plain);
    let trailers = reply.trailers.expect("trailers reached the client");
    assert_eq!(trailers["x-checksum"], "abc");

    // Off (the default): nothing is compressed, and Vary is the app's.
    let faithful = Sidecar::route("/", app.addr, "").await;
    let reply = get(&faithful.url("/json"), &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(reply.header("content-encoding"), None);
    assert_eq!(reply.header("vary"), None);
    assert_eq!(reply.header("etag"), Some("\"v7\""));
    assert_eq!(reply.text(), plain);
}

/// A response read frame by frame: its head, and a decoder of its body so far.
struct Streamed {
    headers: HeaderMap,
    body: Incoming,
    decoder: Decoder,
    _connection: tokio::task::JoinHandle<()>,
}

impl Streamed {
    async fn get(url: &str, headers: &[(&str, &str)]) -> Streamed {
        let uri: http::Uri = url.parse().expect("url");
        let authority = uri.authority().expect("authority").to_string();
        let stream = within("connect", tokio::net::TcpStream::connect(&authority))
            .await
            .expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::get(uri.path()).header("host", &authority);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::<Bytes>::new()).expect("request");
        let response = within("response head", sender.send_request(request))
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        let encoding = parts
            .headers
            .get("content-encoding")
            .map(|v| v.to_str().expect("text").to_owned());
        Streamed {
            headers: parts.headers,
            body,
            decoder: Decoder::new(encoding.as_deref()),
            _connection: connection,
        }
    }

    /// Reads until the decoded body is `expected` so far (no more, no less).
    async fn decoded_until(&mut self, expected: &[u8]) {
        within("the decoded body so far", async {
            while self.decoder.output().len() < expected.len() {
                let frame = self.body.frame().await.expect("body still open").expect("frame");
                if let Ok(data) = frame.into_data() {
                    self.decoder.feed(&data);
                }
            }
        })
        .await;
        assert_eq!(self.decoder.output(), expected);
    }

    /// Reads to the end of the body.
    async fn end(&mut self) {
        within("the end of the body", async {
            while let Some(frame) = self.body.frame().await {
                if let Ok(data) = frame.expect("frame").into_data() {
                    self.decoder.feed(&data);
                }
            }
        })
        .await;
    }
}

/// An app whose one response is fed by the test, chunk by chunk.
async fn streaming_app(
    content_type: &'static str,
) -> (
    Upstream,
    mpsc::UnboundedReceiver<mpsc::UnboundedSender<Frame<Bytes>>>,
) {
    let (feeds, fed) = mpsc::unbounded_channel();
    let upstream = Upstream::start(move |_request| {
        let feeds = feeds.clone();
        async move {
            let (tx, body) = channel_body();
            let _ = feeds.send(tx);
            Response::builder()
                .header("content-type", content_type)
                .body(body)
                .expect("response")
        }
    })
    .await;
    (upstream, fed)
}

#[tokio::test]
async fn a_slow_response_arrives_compressed_piece_by_piece() {
    let (app, mut fed) = streaming_app("text/html").await;
    let proxy = Sidecar::route("/", app.addr, "compress = [\"br\", \"gzip\"]").await;
    for coding in ["gzip", "br"] {
        let mut client = Streamed::get(&proxy.url("/page"), &[("accept-encoding", coding)]).await;
        assert_eq!(client.headers["content-encoding"], coding);
        let feed = within("the app's response", fed.recv()).await.expect("feed");
        let mut sent = Vec::new();
        // Each piece reaches the client, decodable, while the app still holds the response
        // open: the encoder flushed it when the app paused, it did not wait for more.
        for piece in 0..5 {
            let chunk = format!("<p>piece {piece} of a page the app renders slowly</p>\n").repeat(20);
            sent.extend_from_slice(chunk.as_bytes());
            feed.send(Frame::data(Bytes::from(chunk))).expect("send");
            client.decoded_until(&sent).await;
        }
        drop(feed);
        client.end().await;
        assert_eq!(client.decoder.output(), &sent[..]);
    }
}

#[tokio::test]
async fn a_large_response_is_streamed_not_collected() {
    let (app, mut fed) = streaming_app("application/json").await;
    let proxy = Sidecar::route("/", app.addr, "compress = [\"gzip\"]").await;
    let mut client = Streamed::get(&proxy.url("/export"), &[("accept-encoding", "gzip")]).await;
    let feed = within("the app's response", fed.recv()).await.expect("feed");
    // 2 MiB sent, and all of it decodable at the client before the app ends its response.
    let mut sent = Vec::new();
    let mut n = 0u64;
    while sent.len() < 2 << 20 {
        let mut chunk = String::new();
        while chunk.len() < 64 << 10 {
            chunk.push_str(&format!(
                "{{\"row\":{n},\"value\":{}}},\n",
                n.wrapping_mul(2654435761) % 100_000
            ));
            n += 1;
        }
        sent.extend_from_slice(chunk.as_bytes());
        feed.send(Frame::data(Bytes::from(chunk))).expect("send");
    }
    client.decoded_until(&sent).await;
    drop(feed);
    client.end().await;
    assert_eq!(client.decoder.output().len(), sent.len());
}

#[tokio::test]
async fn an_event_stream_is_never_compressed() {
    let (app, mut fed) = streaming_app("text/event-stream").await;
    // Passed through (sse = "never"): streamed event by event, as sent.
    let proxy = Sidecar::route("/", app.addr, "sse = \"never\"\ncompress = [\"br\", \"gzip\"]").await;
    let mut client = Streamed::get(&proxy.url("/events"), &[("accept-encoding", "gzip, br")]).await;
    assert!(!client.headers.contains_key("content-encoding"));
    let feed = within("the app's response", fed.recv()).await.expect("feed");
    let mut sent = Vec::new();
    for n in 0..3 {
        let event = format!("data: {n}\n\n");
        sent.extend_from_slice(event.as_bytes());
        feed.send(Frame::data(Bytes::from(event))).expect("send");
        client.decoded_until(&sent).await;
    }
    drop(feed);

    // A subscription: ssegate's own stream, never compressed either.
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/", app.addr(), "compress = [\"br\", \"gzip\"]").await;
    let mut subscriber = SseClient::connect(&proxy.url("/events"), &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(subscriber.status, StatusCode::OK);
    assert!(!subscriber.headers.contains_key("content-encoding"));
    app.wait_requests(1).await;
    app.send("data: hello\n\n");
    assert_eq!(subscriber.next_event().await.data, "hello");
}

#[tokio::test]
async fn a_reload_turns_compression_on_and_off() {
    let app = app().await;
    let dir = std::env::temp_dir().join(format!("ssegate-compress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("ssegate.toml");
    let config = |compress: &str| {
        format!(
            "[[route]]\npath = \"/\"\nupstream = \"http://{}\"\ncompress = {compress}\n",
            app.addr
        )
    };
    std::fs::write(&path, config("\"off\"")).expect("write");
    let proxy = Sidecar::start_file(&path).await;
    let coding = || async {
        get(&proxy.url("/json"), &[("accept-encoding", "gzip")])
            .await
            .header("content-encoding")
            .map(str::to_owned)
    };
    assert_eq!(coding().await, None);
    std::fs::write(&path, config("[\"gzip\"]")).expect("write");
    proxy.control.reload().expect("valid reload");
    assert_eq!(coding().await.as_deref(), Some("gzip"));
    std::fs::write(&path, config("[]")).expect("write");
    proxy.control.reload().expect("valid reload");
    assert_eq!(coding().await, None);
    let _ = std::fs::remove_dir_all(&dir);
}
