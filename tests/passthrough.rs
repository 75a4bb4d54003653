//! Every request that is not an SSE subscription goes to the app exactly as if sent directly.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// An upstream that answers every request with its method, URI and headers in the body, and
/// keeps the headers of the last request for the test to inspect.
async fn echo_upstream() -> (Upstream, Arc<Mutex<Option<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let upstream = Upstream::start(move |request: Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            *record.lock().expect("lock") = Some(request.headers().clone());
            let line = format!("{} {}", request.method(), request.uri());
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::builder()
                .status(StatusCode::CREATED)
                .header("x-app", "yes")
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .body(full(format!("{line}\n{}", String::from_utf8_lossy(&body))))
                .expect("response")
        }
    })
    .await;
    (upstream, seen)
}

#[tokio::test]
async fn request_and_response_pass_through_unchanged() {
    init_logging();
    let (upstream, seen) = echo_upstream().await;
    let proxy = Sidecar::route("/", upstream.addr, "").await;

    let reply = get(
        &proxy.url("/api/items?x=1&y=%20z"),
        &[("x-custom", "v"), ("authorization", "Bearer t")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.text(), "GET /api/items?x=1&y=%20z\n");
    assert_eq!(reply.header("x-app"), Some("yes"));
    let cookies: Vec<_> = reply.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"], "repeated response headers are all kept");
    let headers = seen
        .lock()
        .expect("lock")
        .clone()
        .expect("upstream saw a request");
    assert_eq!(headers["x-custom"], "v");
    assert_eq!(headers["authorization"], "Bearer t");
    assert_eq!(
        headers["host"],
        proxy.addr.to_string(),
        "the client's Host is kept"
    );

    let post = Request::post(proxy.url("/submit"))
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(Bytes::from_static(b"payload")))
        .expect("request");
    let reply = send(post).await;
    assert_eq!(reply.text(), "POST /submit\npayload");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let upstream = Upstream::start(move |request: Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            *record.lock().expect("lock") = Some(request.headers().clone());
            Response::builder()
                .header("connection", "x-internal")
                .header("x-internal", "secret")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("x-app", "kept")
                .body(full("ok"))
                .expect("response")
        }
    })
    .await;
    let proxy = Sidecar::route("/", upstream.addr, "").await;
    let reply = get(
        &proxy.url("/"),
        &[
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=1"),
            ("proxy-authorization", "Basic Zm9v"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("x-end-to-end", "2"),
        ],
    )
    .await;
    let headers = seen.lock().expect("lock").clone().expect("request seen");
    for name in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
    ] {
        assert!(headers.get(name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(headers["x-end-to-end"], "2");
    for name in ["x-internal", "keep-alive", "proxy-authenticate"] {
        assert!(reply.headers.get(name).is_none(), "{name} reached the client");
    }
    assert_eq!(reply.header("x-app"), Some("kept"));
}

#[tokio::test]
async fn x_forwarded_headers_are_added() {
    let (upstream, seen) = echo_upstream().await;
    let proxy = Sidecar::route("/", upstream.addr, "").await;
    get(
        &proxy.url("/"),
        &[("x-forwarded-for", "203.0.113.7"), ("host", "app.example")],
    )
    .await;
    let headers = seen.lock().expect("lock").clone().expect("request seen");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "app.example");
    assert_eq!(headers["host"], "app.example");
}

#[tokio::test]
async fn bodies_are_streamed_both_ways_not_collected() {
    // The upstream reports each request chunk as it arrives and answers chunk by chunk when told.
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<Bytes>();
    let (reply_tx, reply_rx) = mpsc::unbounded_channel::<Frame<Bytes>>();
    let reply_rx = Arc::new(Mutex::new(Some(reply_rx)));
    let upstream = Upstream::start(move |request: Request<hyper::body::Incoming>| {
        let got_tx = got_tx.clone();
        let reply_rx = reply_rx.lock().expect("lock").take();
        async move {
            let mut body = request.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        let _ = got_tx.send(data);
                    }
                }
            });
            let (tx, body) = channel_body();
            let mut reply_rx = reply_rx.expect("one request");
            tokio::spawn(async move {
                while let Some(frame) = reply_rx.recv().await {
                    let _ = tx.send(frame);
                }
            });
            Response::new(body)
        }
    })
    .await;
    let proxy = Sidecar::route("/", upstream.addr, "").await;

    let (req_tx, req_body) = channel_body();
    let request = Request::post(proxy.url("/upload"))
        .body(req_body)
        .expect("request");
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let pending = tokio::spawn(client.request(request));
    req_tx
        .send(Frame::data(Bytes::from_static(b"first")))
        .expect("send");
    // The upstream sees the first chunk while the client is still sending.
    assert_eq!(
        within("first request chunk upstream", got_rx.recv())
            .await
            .expect("chunk"),
        "first"
    );
    reply_tx
        .send(Frame::data(Bytes::from_static(b"one")))
        .expect("send");
    let response = within("response head", pending)
        .await
        .expect("task")
        .expect("response");
    let mut body = response.into_body();
    let first = within("first response chunk", body.frame())
        .await
        .expect("frame")
        .expect("ok");
    assert_eq!(
        first.into_data().expect("data"),
        "one",
        "the client sees the first chunk before the rest exists"
    );
    req_tx
        .send(Frame::data(Bytes::from_static(b"second")))
        .expect("send");
    assert_eq!(
        within("second request chunk upstream", got_rx.recv())
            .await
            .expect("chunk"),
        "second"
    );
    reply_tx
        .send(Frame::data(Bytes::from_static(b"two")))
        .expect("send");
    let second = within("second response chunk", body.frame())
        .await
        .expect("frame")
        .expect("ok");
    assert_eq!(second.into_data().expect("data"), "two");
}

#[tokio::test]
async fn trailers_pass_through() {
    let upstream = Upstream::start(|_request| async move {
        let (tx, body) = channel_body();
        let _ = tx.send(Frame::data(Bytes::from_static(b"payload")));
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().expect("value"));
        let _ = tx.send(Frame::trailers(trailers));
        Response::builder()
            .header("trailer", "x-checksum")
            .body(body)
            .expect("response")
    })
    .await;
    let proxy = Sidecar::route("/", upstream.addr, "").await;
    let reply = get(&proxy.url("/t"), &[("te", "trailers")]).await;
    assert_eq!(reply.text(), "payload");
    let trailers = reply.trailers.expect("trailers reached the client");
    assert_eq!(trailers["x-checksum"], "abc");
}

#[tokio::test]
async fn longest_prefix_wins_on_segment_boundaries() {
    let named = |name: &'static str| {
        Upstream::start(move |request: Request<hyper::body::Incoming>| async move {
            Response::new(full(format!("{name} {}", request.uri().path())))
        })
    };
    let (root, api, admin) = (named("root").await, named("api").await, named("admin").await);
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/\"\nupstream = \"http://{}\"\n\
         [[route]]\npath = \"/api\"\nupstream = \"http://{}\"\n\
         [[route]]\npath = \"/api/admin\"\nupstream = \"http://{}/base\"\n",
        root.addr, api.addr, admin.addr
    ))
    .await;
    for (path, expected) in [
        ("/api", "api /api"),
        ("/api/users", "api /api/users"),
        ("/apiary", "root /apiary"),
        ("/api/admin/x", "admin /base/api/admin/x"),
        ("/api/administrator", "api /api/administrator"),
        ("/", "root /"),
    ] {
        assert_eq!(get(&proxy.url(path), &[]).await.text(), expected, "path {path}");
    }
}

#[tokio::test]
async fn no_route_is_a_404_from_ssegate() {
    let (upstream, _) = echo_upstream().await;
    let proxy = Sidecar::route("/events", upstream.addr, "").await;
    let reply = get(&proxy.url("/eventsfoo"), &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("no route"), "{}", reply.text());
    assert_eq!(upstream.connections(), 0);
}

#[tokio::test]
async fn dead_upstream_is_a_502() {
    let proxy = Sidecar::route("/", dead_addr().await, "").await;
    let reply = get(&proxy.url("/x"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.text().contains("could not be reached"));
}

#[tokio::test]
async fn connect_timeout_is_a_504() {
    // A listener whose accept queue is full and never drained: the kernel drops further SYNs, so
    // a connect neither succeeds nor fails until the connector's timeout.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(stream);
        }
    }
    let proxy = Sidecar::route("/", addr, "upstream_connect_timeout = \"300ms\"").await;
    let reply = get(&proxy.url("/slow"), &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text());
    drop(listener);
}

#[tokio::test]
async fn sse_passed_through_with_sse_never_is_streamed_event_by_event() {
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let upstream = Upstream::start(move |_request| {
        let body = body.lock().expect("lock").take().expect("one request");
        async move {
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .expect("response")
        }
    })
    .await;
    let proxy = Sidecar::route("/events", upstream.addr, "sse = \"never\"").await;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = Request::get(proxy.url("/events"))
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    tx.send(Frame::data(Bytes::from_static(b"data: one\n\n")))
        .expect("send");
    let response = within("response", client.request(request))
        .await
        .expect("response");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = within("first event", body.frame())
        .await
        .expect("frame")
        .expect("ok");
    assert_eq!(first.into_data().expect("data"), "data: one\n\n");
    tx.send(Frame::data(Bytes::from_static(b"data: two\n\n")))
        .expect("send");
    let second = within("second event", body.frame())
        .await
        .expect("frame")
        .expect("ok");
    assert_eq!(second.into_data().expect("data"), "data: two\n\n");
}

#[tokio::test]
async fn malformed_request_gets_400_and_the_proxy_carries_on() {
    let (upstream, _) = echo_upstream().await;
    let proxy = Sidecar::route("/", upstream.addr, "").await;
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    for (case, raw, expected) in [
        ("not HTTP", "NOT A REQUEST\r\n\r\n".to_owned(), "HTTP/1.1 400"),
        ("an oversized head", huge, "HTTP/1.1 431"),
    ] {
        let answer = raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with(expected), "{case}: {answer:?}");
    }
    assert_eq!(get(&proxy.url("/still"), &[]).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_on_the_same_port() {
    let (upstream, seen) = echo_upstream().await;
    let proxy = Sidecar::route("/", upstream.addr, "").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = Request::get(proxy.url("/h2?q=1"))
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = within("h2 response", client.request(request))
        .await
        .expect("response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "GET /h2?q=1\n");
    let headers = seen.lock().expect("lock").clone().expect("request seen");
    assert_eq!(
        headers["host"],
        proxy.addr.to_string(),
        "the :authority becomes the upstream Host"
    );
}
