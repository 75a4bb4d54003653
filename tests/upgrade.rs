//! Upgraded connections (WebSocket) through ssegate, with a real WebSocket library on both
//! sides (tungstenite): echo of text and large binary frames, ping/pong, close codes; the
//! route's `upgrades`; an app that switches protocols unasked; a client that stops reading;
//! idle and drain limits; the connection's place under `max_connections`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo app: every message back as it came; pings and a close are answered by the
/// library (the close with its code). Records each handshake's headers.
struct EchoApp {
    addr: std::net::SocketAddr,
    handshakes: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl EchoApp {
    async fn start() -> EchoApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // the callback's type is the library's
                    let record = |request: &WsRequest, response: WsResponse| {
                        seen.lock().expect("lock").push(request.headers().clone());
                        Ok(response)
                    };
                    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                        return;
                    };
                    while let Some(Ok(message)) = socket.next().await {
                        let echo = match message {
                            Message::Text(_) | Message::Binary(_) => message,
                            // The library answers a close (with its code) and pings itself.
                            _ => continue,
                        };
                        if socket.send(echo).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoApp { addr, handshakes }
    }
}

async fn ws_connect(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (socket, response) = within("the WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|error| panic!("WebSocket to {url}: {error}"));
    assert_eq!(response.status(), 101);
    socket
}

#[tokio::test]
async fn a_websocket_echoes_through_ssegate_frames_pings_and_close_codes_included() {
    let app = EchoApp::start().await;
    let sidecar = Sidecar::route("/", app.addr, "").await;
    let mut socket = ws_connect(&format!("ws://{}/chat?room=1", sidecar.addr)).await;

    socket.send(Message::text("hello")).await.expect("send");
    assert_eq!(
        within("the echo", socket.next())
            .await
            .expect("a message")
            .expect("ok"),
        Message::text("hello")
    );
    // A large binary frame, byte for byte.
    let large: Vec<u8> = (0..4 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    socket.send(Message::binary(large.clone())).await.expect("send");
    match within("the large echo", socket.next())
        .await
        .expect("a message")
        .expect("ok")
    {
        Message::Binary(data) => assert!(data[..] == large[..], "the 4 MiB frame came back changed"),
        other => panic!("expected the binary frame back, got {other:?}"),
    }
    // A ping is answered by the app with a pong carrying the same bytes.
    socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    match within("the pong", socket.next())
        .await
        .expect("a message")
        .expect("ok")
    {
        Message::Pong(data) => assert_eq!(&data[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    assert_eq!(
        sidecar.metric("ssegate_upgraded_connections{route=\"/\"}").await,
        1.0
    );
    // The app got the handshake with the client's headers and ssegate's X-Forwarded-For.
    let handshake = app.handshakes.lock().expect("lock")[0].clone();
    assert_eq!(
        handshake.get("upgrade").map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    assert!(handshake.contains_key("sec-websocket-key"));
    assert_eq!(
        handshake.get("x-forwarded-for").map(|v| v.as_bytes()),
        Some(&b"127.0.0.1"[..])
    );

    // A close with an application code comes back with it.
    let close = CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye".into(),
    };
    socket.send(Message::Close(Some(close))).await.expect("close");
    match within("the close", socket.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(
                (frame.code, frame.reason.as_str()),
                (CloseCode::Library(4001), "bye")
            );
        }
        other => panic!("expected the close frame back, got {other:?}"),
    }
    // The app closes its connection after the handshake; the client's end follows it.
    assert!(within("the end of the connection", socket.next()).await.is_none());
    drop(socket);
    sidecar
        .metric_reaches("ssegate_upgraded_connections{route=\"/\"}", 0.0)
        .await;
    assert_eq!(sidecar.metric("ssegate_upgrades_total{route=\"/\"}").await, 1.0);
}

#[tokio::test]
async fn an_upgrade_the_route_does_not_allow_is_a_plain_request_without_its_upgrade_headers() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Upstream::start(move |request| {
        record.lock().expect("lock").push(request.headers().clone());
        async { http::Response::new(full("plain")) }
    })
    .await;
    let sidecar = Sidecar::route("/", app.addr, "upgrades = []").await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/chat", sidecar.addr)).await;
    assert!(
        refused.is_err(),
        "no upgrade is allowed, yet the handshake succeeded"
    );
    let headers = seen.lock().expect("lock")[0].clone();
    assert!(!headers.contains_key("upgrade"), "{headers:?}");
    assert!(headers
        .get("connection")
        .is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"upgrade")));
    assert_eq!(
        sidecar
            .metric("ssegate_upgrades_refused_total{route=\"/\"}")
            .await,
        1.0
    );
}

/// An app on raw TCP that answers every request head with `answer` and then writes `then`.
async fn raw_app(answer: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream.write_all(answer.as_bytes()).await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_app_that_switches_protocols_unasked_or_to_another_protocol_gets_502() {
    let switching =
        raw_app("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nRAW")
            .await;
    let sidecar = Sidecar::route("/", switching, "").await;
    // A plain request: a 101 would hand the client a raw connection to the app.
    let reply = get(&sidecar.url("/page"), &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());

    let other =
        raw_app("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n").await;
    let sidecar = Sidecar::route("/", other, "").await;
    let answer = raw_exchange(
        sidecar.addr,
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_a_bounded_amount_and_is_cut_off() {
    // The app upgrades, then writes as fast as the connection takes, counting what it wrote.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let written = Arc::new(AtomicU64::new(0));
    let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
    let count = written.clone();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let _ = stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        while stream.write_all(&chunk).await.is_ok() {
            count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = ended_tx.send(());
    });
    let sidecar = Sidecar::start(&format!(
        "client_write_timeout = \"1s\"\n[[route]]\npath = \"/\"\nupstream = \"http://{addr}\"\n"
    ))
    .await;
    let mut client = TcpStream::connect(sidecar.addr).await.expect("connect");
    client
        .write_all(b"GET /firehose HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    client.read_exact(&mut head).await.expect("the 101");
    assert_eq!(&head, b"HTTP/1.1 101");
    // The client reads no more: what the app could write is what the sockets' buffers and
    // ssegate's fixed copy buffers hold, and it stops growing.
    let stalled = eventually("the app's writes to stall", || {
        let written = written.clone();
        async move {
            let before = written.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = written.load(Ordering::Relaxed);
            if after == before && after > 0 {
                Ok(after)
            } else {
                Err(after)
            }
        }
    })
    .await;
    assert!(
        stalled < 64 << 20,
        "{stalled} bytes went out towards a client that reads nothing"
    );
    // The client's socket stays unwritable past client_write_timeout: ssegate closes both sides.
    within("the app's connection to end", ended).await.expect("ended");
    assert!(sidecar.metric("ssegate_client_write_stalls_total").await >= 1.0);
    sidecar
        .metric_reaches("ssegate_upgraded_connections{route=\"/\"}", 0.0)
        .await;
    drop(client);
}

#[tokio::test]
async fn an_idle_upgraded_connection_is_closed_after_upgrade_idle_timeout() {
    let app = EchoApp::start().await;
    let sidecar = Sidecar::route("/", app.addr, "upgrade_idle_timeout = \"300ms\"").await;
    let mut socket = ws_connect(&format!("ws://{}/chat", sidecar.addr)).await;
    socket.send(Message::text("one")).await.expect("send");
    within("the echo", socket.next())
        .await
        .expect("a message")
        .expect("ok");
    // Then nothing either way: the connection is closed (no close frame: it was cut).
    let end = within("the idle close", socket.next()).await;
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    sidecar
        .metric_reaches("ssegate_upgraded_connections{route=\"/\"}", 0.0)
        .await;
}

#[tokio::test]
async fn a_drain_gives_upgraded_connections_shutdown_grace_then_closes_them() {
    let app = EchoApp::start().await;
    let mut sidecar = Sidecar::start(&format!(
        "shutdown_grace = \"1s\"\n[[route]]\npath = \"/\"\nupstream = \"http://{}\"\n",
        app.addr
    ))
    .await;
    let mut socket = ws_connect(&format!("ws://{}/chat", sidecar.addr)).await;
    sidecar.begin_stop();
    // During the grace the connection still works.
    socket.send(Message::text("still here")).await.expect("send");
    assert_eq!(
        within("the echo during the grace", socket.next())
            .await
            .expect("a message")
            .expect("ok"),
        Message::text("still here")
    );
    // Then it is closed, and ssegate has stopped.
    let started = tokio::time::Instant::now();
    let end = within("the close after the grace", socket.next()).await;
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    sidecar.stopped().await;
}

#[tokio::test]
async fn an_upgraded_connection_keeps_its_place_under_max_connections() {
    let app = EchoApp::start().await;
    let sidecar = Sidecar::start(&format!(
        "max_connections = 1\n[[route]]\npath = \"/\"\nupstream = \"http://{}\"\n",
        app.addr
    ))
    .await;
    let mut socket = ws_connect(&format!("ws://{}/chat", sidecar.addr)).await;
    socket.send(Message::text("mine")).await.expect("send");
    within("the echo", socket.next())
        .await
        .expect("a message")
        .expect("ok");
    let refused = get(&sidecar.url("/other"), &[]).await;
    assert_eq!(refused.status, 503, "an upgraded connection no longer counted");
    drop(socket);
    eventually("the place to be free again", || async {
        let status = get(&sidecar.url("/other"), &[]).await.status;
        if status == 503 {
            Err(status)
        } else {
            Ok(())
        }
    })
    .await;
}

/// A WebSocket echo on any stream (an app behind TLS or on a Unix socket).
async fn echo_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S) {
    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(message)) = socket.next().await {
        if matches!(message, Message::Text(_) | Message::Binary(_)) && socket.send(message).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_websocket_reaches_an_app_over_https_and_on_a_unix_socket() {
    let dir = temp_dir("ws-upstreams");
    let cert = TestCert::for_names(&["localhost"]);
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cert.cert_pem).expect("write the CA");
    // The HTTPS app offers HTTP/2 too: the upgrade must still go on HTTP/1.1.
    let acceptor = tls_acceptor(&cert, &[b"h2", b"http/1.1"]);
    let tls = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = tls.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = tls.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    echo_on(stream).await;
                }
            });
        }
    });
    let socket_path = dir.join("ws.sock");
    let unix = tokio::net::UnixListener::bind(&socket_path).expect("bind the socket");
    tokio::spawn(async move {
        while let Ok((stream, _)) = unix.accept().await {
            tokio::spawn(echo_on(stream));
        }
    });
    let sidecar = Sidecar::start(&format!(
        "[[route]]\npath = \"/tls\"\nupstream = \"https://localhost:{port}\"\nupstream_ca = \"{}\"\n\
         [[route]]\npath = \"/unix\"\nupstream = \"unix:{}\"\n",
        ca.display(),
        socket_path.display()
    ))
    .await;
    for path in ["/tls", "/unix"] {
        let mut socket = ws_connect(&format!("ws://{}{path}", sidecar.addr)).await;
        socket.send(Message::text(path)).await.expect("send");
        let back = within("the echo", socket.next())
            .await
            .expect("a message")
            .expect("ok");
        assert_eq!(back, Message::text(path), "through the {path} route");
    }
}

#[tokio::test]
async fn a_websocket_over_http2_extended_connect_reaches_an_http1_app() {
    let app = EchoApp::start().await;
    let sidecar = Sidecar::route("/", app.addr, "").await;
    // ssegate's SETTINGS offer extended CONNECT (RFC 8441).
    let client = h2_settled(&sidecar).await;
    let mut ready = within("h2 ready", client.ready()).await.expect("ready");
    assert!(
        ready.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL not sent"
    );
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/chat", sidecar.addr))
        .header("sec-websocket-version", "13")
        .body(())
        .expect("request");
    request
        .extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (response, mut send) = ready.send_request(request, false).expect("send");
    let response = within("the CONNECT's answer", response).await.expect("response");
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("sec-websocket-accept"));
    let mut receive = response.into_body();
    // A masked client text frame "hi"; the app echoes it unmasked.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    send.send_data(bytes::Bytes::from(frame), false)
        .expect("send the frame");
    let mut echoed = Vec::new();
    while echoed.len() < 4 {
        let chunk = within("the echo", receive.data())
            .await
            .expect("data")
            .expect("ok");
        let _ = receive.flow_control().release_capacity(chunk.len());
        echoed.extend_from_slice(&chunk);
    }
    assert_eq!(echoed, [0x81, 0x02, b'h', b'i']);
    // The app got the HTTP/1.1 handshake, with a key of ssegate's.
    let handshake = app.handshakes.lock().expect("lock")[0].clone();
    assert_eq!(
        handshake.get("upgrade").map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    assert_eq!(handshake.get("sec-websocket-key").map(|v| v.len()), Some(24));
    assert_eq!(
        sidecar.metric("ssegate_upgraded_connections{route=\"/\"}").await,
        1.0
    );
}

#[tokio::test]
async fn an_extended_connect_the_route_does_not_allow_is_refused_never_passed_on() {
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let app = Upstream::start(move |_request| {
        count.fetch_add(1, Ordering::Relaxed);
        async { http::Response::new(full("app")) }
    })
    .await;
    let sidecar = Sidecar::route("/", app.addr, "upgrades = []").await;
    let mut client = h2_settled(&sidecar).await;
    for protocol in ["websocket", "connect-udp"] {
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}/chat", sidecar.addr))
            .body(())
            .expect("request");
        request.extensions_mut().insert(h2::ext::Protocol::from(protocol));
        let status = h2_status(&mut client, request, false).await.expect("an answer");
        assert_eq!(status, 405, "{protocol}");
    }
    assert_eq!(seen.load(Ordering::Relaxed), 1, "a CONNECT reached the app");
}

/// An HTTP/2 client (prior knowledge) of `sidecar` that has had one request answered, so it
/// has ssegate's SETTINGS.
async fn h2_settled(sidecar: &Sidecar) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(sidecar.addr).await.expect("connect");
    let mut client = h2_client(tcp).await;
    let first = http::Request::get(format!("http://{}/", sidecar.addr))
        .body(())
        .expect("request");
    h2_status(&mut client, first, true).await.expect("an answer");
    client
}
