//! What the app is told of the client: `X-Forwarded-For` always, `X-Real-IP` and `Forwarded`
//! when the route asks for them (`client_headers`), and never a client's own claim unless a
//! trusted proxy made it.

mod common;

use std::net::IpAddr;

use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// Sends `GET path` from the local address `from` with the `extra` header lines (and, for a
/// subscription, `Accept: text/event-stream`); returns the connection after the response head.
async fn request_from(proxy: &Sidecar, from: &str, path: &str, extra: &str) -> (TcpStream, String) {
    let mut stream = tcp_from(ip(from), proxy.addr).await;
    let raw = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}\r\n");
    stream.write_all(raw.as_bytes()).await.expect("write");
    let head = read_head(&mut stream).await;
    assert_eq!(status_of(&head), 200, "{head}");
    (stream, head)
}

/// The values of `name` in the last request the app saw.
fn last_seen(app: &SseApp, name: &str) -> Vec<String> {
    let requests = app.requests();
    let last = requests.last().expect("the app saw a request");
    last.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("text").to_owned())
        .collect()
}

/// A balancer at 127.0.0.1 is trusted; `/on` sends both headers, `/off` neither.
async fn proxy_for(app: &SseApp) -> Sidecar {
    app.answer_with(StatusCode::OK, "text/plain", "ok");
    Sidecar::start(&format!(
        "trusted_proxies = [\"127.0.0.1\"]\n\
         [[route]]\npath = \"/on\"\nupstream = \"http://{0}\"\nclient_headers = [\"x-real-ip\", \"forwarded\"]\n\
         [[route]]\npath = \"/off\"\nupstream = \"http://{0}\"\n",
        app.addr()
    ))
    .await
}

#[tokio::test]
async fn a_clients_own_claims_never_reach_the_app() {
    let app = SseApp::start().await;
    let proxy = proxy_for(&app).await;
    // Everything a client could write to pass for another: a plain claim, Forwarded with a
    // quoted string that would swallow the next element, parameters twice, an IPv6 node, an
    // underscore spelling, a chain of its own.
    let lies = "X-Real-IP: 1.2.3.4\r\n\
                Forwarded: for=1.2.3.4;proto=https;for=5.5.5.5\r\n\
                Forwarded: for=\"[2001:db8::1]\";by=_lb, for=\"1.2.3.4\r\n\
                X_Real_IP: 6.6.6.6\r\n\
                X-Forwarded-For: 6.6.6.6\r\n";
    let _ = request_from(&proxy, "127.0.0.7", "/on", lies).await;
    assert_eq!(last_seen(&app, "x-real-ip"), ["127.0.0.7"]);
    assert_eq!(
        last_seen(&app, "forwarded"),
        ["for=127.0.0.7;host=app.test;proto=http"]
    );
    assert!(last_seen(&app, "x_real_ip").is_empty());
    assert_eq!(
        last_seen(&app, "x-forwarded-for"),
        ["6.6.6.6, 127.0.0.7"],
        "X-Forwarded-For is appended to, as before: its last address is the peer"
    );

    // Not asked for: a client's claims are removed all the same.
    let _ = request_from(&proxy, "127.0.0.7", "/off", lies).await;
    assert!(last_seen(&app, "x-real-ip").is_empty());
    assert!(last_seen(&app, "forwarded").is_empty());
}

#[tokio::test]
async fn behind_a_trusted_balancer_the_app_is_told_the_client_it_names() {
    let app = SseApp::start().await;
    let proxy = proxy_for(&app).await;
    let balancer = "127.0.0.1";

    // The balancer writes X-Forwarded-For only (and passes a client's X-Real-IP on): ssegate
    // names the client the balancer vouches for, never the part the client wrote.
    let _ = request_from(
        &proxy,
        balancer,
        "/on",
        "X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\nX-Real-IP: 6.6.6.6\r\n",
    )
    .await;
    assert_eq!(last_seen(&app, "x-real-ip"), ["198.51.100.7"]);
    assert_eq!(
        last_seen(&app, "forwarded"),
        ["for=198.51.100.7, for=127.0.0.1;host=app.test;proto=http"]
    );

    // The balancer writes Forwarded: ssegate's element follows its own.
    let _ = request_from(
        &proxy,
        balancer,
        "/on",
        "Forwarded: for=198.51.100.7;proto=https\r\nX-Forwarded-For: 198.51.100.7\r\n",
    )
    .await;
    assert_eq!(
        last_seen(&app, "forwarded"),
        ["for=198.51.100.7;proto=https, for=127.0.0.1;host=app.test;proto=http"]
    );

    // A Forwarded some parser would read otherwise (a quote left open) is not appended to.
    let _ = request_from(
        &proxy,
        balancer,
        "/on",
        "Forwarded: for=\"198.51.100.7\r\nX-Forwarded-For: 198.51.100.7\r\n",
    )
    .await;
    assert_eq!(
        last_seen(&app, "forwarded"),
        ["for=198.51.100.7, for=127.0.0.1;host=app.test;proto=http"]
    );

    // Not asked for: what a trusted balancer wrote passes as it wrote it.
    let _ = request_from(
        &proxy,
        balancer,
        "/off",
        "X-Real-IP: 203.0.113.5\r\nForwarded: for=203.0.113.5\r\n",
    )
    .await;
    assert_eq!(last_seen(&app, "x-real-ip"), ["203.0.113.5"]);
    assert_eq!(last_seen(&app, "forwarded"), ["for=203.0.113.5"]);
}

#[tokio::test]
async fn a_streams_upstream_request_names_the_client_that_opened_it() {
    for lean in [true, false] {
        let app = SseApp::start().await;
        let proxy = Sidecar::start(&format!(
            "lean_http1 = {lean}\n\
             [[route]]\npath = \"/events\"\nupstream = \"http://{}\"\nclient_headers = [\"x-real-ip\", \"forwarded\"]\n\
             reconnect_initial = \"50ms\"\n",
            app.addr()
        ))
        .await;
        let sse = "Accept: text/event-stream\r\n";
        let (_opener, _) = request_from(
            &proxy,
            "127.0.0.8",
            "/events",
            &format!("{sse}X-Real-IP: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n"),
        )
        .await;
        app.wait_requests(1).await;
        // Another client joins the stream: the app is not asked again, and still knows the
        // opener only.
        let (_joiner, _) = request_from(&proxy, "127.0.0.9", "/events", sse).await;
        app.stays_at_requests(1, std::time::Duration::from_millis(100))
            .await;
        // The stream's reconnects send the same head.
        app.close_streams();
        app.wait_requests(2).await;
        for seen in app.requests() {
            assert_eq!(seen.header("x-real-ip"), Some("127.0.0.8"), "lean {lean}");
            assert_eq!(
                seen.header("forwarded"),
                Some("for=127.0.0.8;host=app.test;proto=http"),
                "lean {lean}"
            );
            assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.8"), "lean {lean}");
        }
    }
}

#[tokio::test]
async fn a_stream_keyed_by_x_real_ip_is_one_per_client_address() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\nclient_headers = [\"x-real-ip\"]\n\
         stream_key = [\"path\", \"header:x-real-ip\"]\n",
        app.addr()
    ))
    .await;
    let sse = "Accept: text/event-stream\r\n";
    let (_a, _) = request_from(&proxy, "127.0.0.8", "/events", sse).await;
    let (_b, _) = request_from(&proxy, "127.0.0.8", "/events", sse).await;
    // A client claiming the first one's address is still itself.
    let (_c, _) = request_from(
        &proxy,
        "127.0.0.9",
        "/events",
        &format!("{sse}X-Real-IP: 127.0.0.8\r\n"),
    )
    .await;
    let requests = app.wait_requests(2).await;
    app.stays_at_requests(2, std::time::Duration::from_millis(100))
        .await;
    let mut addresses: Vec<_> = requests.iter().filter_map(|r| r.header("x-real-ip")).collect();
    addresses.sort_unstable();
    assert_eq!(addresses, ["127.0.0.8", "127.0.0.9"]);
}

#[tokio::test]
async fn an_upgrades_request_to_the_app_says_the_same_of_the_client() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    let (tx, mut handshakes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            #[allow(clippy::result_large_err)] // the callback's type is the library's
            let record = move |request: &WsRequest, response: WsResponse| {
                let _ = tx.send(request.headers().clone());
                Ok(response)
            };
            tokio::spawn(tokio_tungstenite::accept_hdr_async(stream, record));
        }
    });
    let proxy = Sidecar::route("/", app, "client_headers = [\"x-real-ip\", \"forwarded\"]").await;
    let mut request = format!("ws://{}/chat", proxy.addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("x-real-ip", "6.6.6.6".parse().expect("value"));
    request
        .headers_mut()
        .insert("forwarded", "for=6.6.6.6".parse().expect("value"));
    let (_socket, response) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("handshake");
    assert_eq!(response.status(), 101);
    let seen = within("the app's handshake", handshakes.recv())
        .await
        .expect("headers");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(
        seen["forwarded"],
        format!("for=127.0.0.1;host=\"{}\";proto=http", proxy.addr).as_str()
    );
    assert_eq!(seen.get_all("x-real-ip").iter().count(), 1);
}
