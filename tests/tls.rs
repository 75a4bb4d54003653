//! HTTPS at the edge: ALPN h2 and http/1.1 on one port, many SSE streams on one h2 connection,
//! certificate reload, and bad handshakes dropped without harm.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;

/// ssegate with TLS from `cert` in front of `app`, with `extra` top-level keys; and the config
/// file, for reloads.
async fn tls_sidecar(cert: &TestCert, app: &SseApp, extra: &str) -> (Sidecar, std::path::PathBuf) {
    let dir = temp_dir("tls");
    cert.write(&dir);
    let path = dir.join("ssegate.toml");
    std::fs::write(
        &path,
        format!(
            "{extra}\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[[route]]\npath = \"/\"\nupstream = \"http://{}\"\n",
            app.addr()
        ),
    )
    .expect("write config");
    (Sidecar::start_file(&path).await, dir)
}

#[tokio::test]
async fn twenty_sse_streams_share_one_h2_connection() {
    init_logging();
    let cert = TestCert::new();
    let app = SseApp::start().await;
    let (proxy, _) = tls_sidecar(&cert, &app, "").await;
    let tls = tls_connect(proxy.addr, &[&cert], &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("h2");
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        let request = Request::get(format!("https://localhost/events?stream={i}"))
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = within("an h2 SSE response", sender.send_request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        bodies.push(response.into_body());
    }
    app.wait_requests(20).await;
    assert_eq!(app.send("data: hello\n\n"), 20);
    for body in &mut bodies {
        let text = read_until(body, "data: hello\n\n").await;
        assert!(text.starts_with("retry: 3000\n"), "{text:?}");
    }
    // Every request reached the app as coming over TLS.
    assert!(app
        .requests()
        .iter()
        .all(|r| r.header("x-forwarded-proto") == Some("https")));
}

#[tokio::test]
async fn a_client_without_h2_gets_http_1_1_and_its_stream() {
    let cert = TestCert::new();
    let app = SseApp::start().await;
    let (proxy, _) = tls_sidecar(&cert, &app, "").await;
    let tls = tls_connect(proxy.addr, &[&cert], &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(connection);
    let request = Request::get("/events")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = within("an HTTPS SSE response", sender.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.version(), http::Version::HTTP_11);
    let mut body = response.into_body();
    app.wait_requests(1).await;
    app.send("data: over tls\n\n");
    read_until(&mut body, "data: over tls\n\n").await;
    // Plain requests work over TLS too.
    app.answer_with(StatusCode::OK, "text/plain", "plain");
    let tls = tls_connect(proxy.addr, &[&cert], &[b"h2"]).await;
    let (mut h2, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("h2");
    tokio::spawn(connection);
    let reply = h2
        .send_request(
            Request::get("https://localhost/page")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("reply");
    assert_eq!(
        reply.into_body().collect().await.expect("body").to_bytes(),
        "plain"
    );
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_handshakes_and_keeps_open_streams() {
    let (first, second) = (TestCert::new(), TestCert::new());
    let app = SseApp::start().await;
    let (proxy, dir) = tls_sidecar(&first, &app, "").await;
    let tls = tls_connect(proxy.addr, &[&first, &second], &[b"h2"]).await;
    assert_eq!(
        tls.get_ref().1.peer_certificates().map(|c| c[0].clone()),
        Some(first.der.clone())
    );
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(connection);
    let request = Request::get("https://localhost/events")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let mut open = sender.send_request(request).await.expect("response").into_body();
    app.wait_requests(1).await;

    // A broken new certificate is refused and the old one stays.
    std::fs::write(dir.join("cert.pem"), "not a certificate").expect("write");
    assert!(proxy.control.reload().is_err());
    let still = tls_connect(proxy.addr, &[&first, &second], &[b"h2"]).await;
    assert_eq!(
        still.get_ref().1.peer_certificates().map(|c| c[0].clone()),
        Some(first.der.clone())
    );

    second.write(&dir);
    proxy.control.reload().expect("reload with the new certificate");
    let fresh = tls_connect(proxy.addr, &[&first, &second], &[b"h2"]).await;
    assert_eq!(
        fresh.get_ref().1.peer_certificates().map(|c| c[0].clone()),
        Some(second.der.clone())
    );
    app.send("data: after reload\n\n");
    read_until(&mut open, "data: after reload\n\n").await;
}

#[tokio::test]
async fn bad_handshakes_are_dropped_quickly_and_harm_no_one() {
    let cert = TestCert::new();
    let app = SseApp::start().await;
    let (proxy, _) = tls_sidecar(&cert, &app, "header_read_timeout = \"300ms\"").await;
    // Plain HTTP to the TLS port.
    let mut plain = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    until_closed(&mut plain, "plain HTTP to be dropped").await;
    // Garbage, and a client that stalls mid-handshake.
    let mut garbage = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5])
        .await
        .expect("write");
    let mut stalled = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let started = tokio::time::Instant::now();
    for (case, stream) in [("garbage", &mut garbage), ("a stalled handshake", &mut stalled)] {
        until_closed(stream, &format!("{case} to be dropped")).await;
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // A good client is served meanwhile.
    let tls = tls_connect(proxy.addr, &[&cert], &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}
