//! A client that wants to hurt the app behind ssegate, or the users beside it: smuggling a
//! request through a subscription, confusing routing with spellings of a path, lying about the
//! Host, opening streams without end, and stream keys made to collide.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// After an attack, another user's request on the same route must reach the app whole: its
/// method, target, headers and body, not bytes the app took for the attacker's body.
async fn an_unrelated_request_arrives_whole(proxy: &Sidecar, app: &RawUpstream, attack_target: &str) {
    let post = Request::post(proxy.url("/events/other"))
        .header("cookie", "session=victim")
        .body(Full::new(Bytes::from_static(b"hello, app")))
        .expect("request");
    let reply = send(post).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    arrived_whole(app, attack_target).await;
}

async fn arrived_whole(app: &RawUpstream, attack_target: &str) {
    let seen = app.wait_for("POST", "/events/other").await;
    assert_eq!(seen.body, b"hello, app");
    assert_eq!(seen.header_values("cookie"), ["session=victim"]);
    for request in app.requests() {
        assert_ne!(
            request.target, attack_target,
            "the subscription that announced a body reached the app: {request:?}"
        );
        assert!(
            request.header_values("content-length").iter().all(|v| *v != "40"),
            "a Content-Length the app would wait for went upstream: {request:?}"
        );
    }
}

// The story: a subscription's upstream request carried the client's `Content-Length: 40`
// while its body (none) went out empty; the app, honouring the length, read the first 40 bytes
// of the next request on that pooled connection (another user's, with their cookie) as the
// attacker's body.
#[tokio::test]
async fn a_subscription_announcing_a_body_is_refused_on_the_lean_path() {
    init_logging();
    let app = RawUpstream::start().await;
    let proxy = Sidecar::route("/events", app.addr, "").await;
    let subscription = "GET /events/feed HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n";
    for (case, announced) in [
        ("a length", "Content-Length: 40\r\n\r\n"),
        // A zero length first once made the lean path take the request.
        (
            "a zero length, then a length",
            "Content-Length: 0\r\nContent-Length: 40\r\n\r\n",
        ),
        ("a chunked body", "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ] {
        let head = raw_head(proxy.addr, format!("{subscription}{announced}").as_bytes()).await;
        assert_eq!(status_of(&head), 400, "{case}: {head}");
    }
    an_unrelated_request_arrives_whole(&proxy, &app, "/events/feed").await;
    // Two of these were refused by ssegate's own check; hyper refuses differing lengths itself.
    assert!(proxy.metric("ssegate_bad_requests_total").await >= 2.0);
}

#[tokio::test]
async fn a_subscription_announcing_a_body_is_refused_on_a_keep_alive_connection() {
    let app = RawUpstream::start().await;
    let proxy = Sidecar::route("/events", app.addr, "").await;
    // A plain request first: the connection is hyper's from then on.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /events/page HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let first = read_head(&mut stream).await;
    assert_eq!(status_of(&first), 200, "{first}");
    stream
        .write_all(b"GET /events/feed HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nContent-Length: 40\r\n\r\n")
        .await
        .expect("write");
    let second = read_head(&mut stream).await;
    let second = second.trim_start_matches("ok");
    assert_eq!(status_of(second), 400, "{second}");
    an_unrelated_request_arrives_whole(&proxy, &app, "/events/feed").await;
}

fn h2_subscription(proxy: &Sidecar, path: &str) -> http::request::Builder {
    Request::get(format!("http://{}{path}", proxy.addr)).header("accept", "text/event-stream")
}

#[tokio::test]
async fn a_subscription_announcing_a_body_is_refused_over_h2c() {
    let app = RawUpstream::start().await;
    let proxy = Sidecar::route("/events", app.addr, "").await;
    let mut client = h2_client(TcpStream::connect(proxy.addr).await.expect("connect")).await;
    for (case, end_stream) in [
        ("a body announced, the stream left open", false),
        ("HEADERS with END_STREAM: a body announced and never sent", true),
    ] {
        let request = h2_subscription(&proxy, "/events/feed")
            .header("content-length", "40")
            .body(())
            .expect("request");
        let answer = h2_status(&mut client, request, end_stream).await;
        assert_refused(&answer, case);
    }
    an_unrelated_request_arrives_whole(&proxy, &app, "/events/feed").await;
}

#[tokio::test]
async fn a_subscription_announcing_a_body_is_refused_over_h2_with_tls() {
    let app = RawUpstream::start().await;
    let cert = TestCert::new();
    let dir = temp_dir("smuggle-tls");
    let (cert_path, key_path) = cert.write(&dir);
    let proxy = Sidecar::start(&format!(
        "[tls]\ncert = {cert_path:?}\nkey = {key_path:?}\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr
    ))
    .await;
    let tls = tls_connect(proxy.addr, &[&cert], &[b"h2"]).await;
    let mut client = h2_client(tls).await;
    let request = Request::get(format!("https://localhost:{}/events/feed", proxy.addr.port()))
        .header("accept", "text/event-stream")
        .header("content-length", "40")
        .body(())
        .expect("request");
    let answer = h2_status(&mut client, request, false).await;
    assert_refused(&answer, "a body announced over TLS");
    // The other user's request, over its own h2 connection.
    let tls = tls_connect(proxy.addr, &[&cert], &[b"h2"]).await;
    let mut other = h2_client(tls).await;
    let mut ready = within("h2 ready", other.clone().ready()).await.expect("ready");
    let post = Request::post(format!("https://localhost:{}/events/other", proxy.addr.port()))
        .header("cookie", "session=victim")
        .header("content-length", "10")
        .body(())
        .expect("request");
    let (response, mut body) = ready.send_request(post, false).expect("send");
    body.send_data(Bytes::from_static(b"hello, app"), true)
        .expect("body");
    let response = within("response", response).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let _ = &mut other;
    arrived_whole(&app, "/events/feed").await;
}

#[tokio::test]
async fn a_subscription_never_announces_a_body_upstream() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    // `Content-Length: 0` is allowed (some clients send it), and still not forwarded.
    let head = raw_head(
        proxy.addr,
        b"GET /events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    let seen = app.wait_requests(1).await;
    assert_eq!(seen[0].header("content-length"), None);
    assert_eq!(seen[0].header("transfer-encoding"), None);
}

/// A route whose upstream is a raw app, for target and Host checks.
async fn target_proxy() -> (RawUpstream, Sidecar) {
    let app = RawUpstream::start().await;
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/\"\nupstream = \"http://{}\"\n",
        app.addr
    ))
    .await;
    (app, proxy)
}

#[tokio::test]
async fn request_targets_and_host_follow_rfc_9112() {
    let (app, proxy) = target_proxy().await;
    for (case, raw) in [
        ("no Host", "GET /x HTTP/1.1\r\n\r\n"),
        ("two Hosts", "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("a space in Host", "GET /x HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ("userinfo in Host", "GET /x HTTP/1.1\r\nHost: user@a\r\n\r\n"),
        (
            "userinfo in an absolute target",
            "GET http://user:pw@app.test/x HTTP/1.1\r\nHost: app.test\r\n\r\n",
        ),
        (
            "authority-form on GET",
            "GET app.test:80 HTTP/1.1\r\nHost: app.test\r\n\r\n",
        ),
        ("asterisk-form on GET", "GET * HTTP/1.1\r\nHost: app.test\r\n\r\n"),
        (
            "a scheme not http",
            "GET ftp://app.test/x HTTP/1.1\r\nHost: app.test\r\n\r\n",
        ),
    ] {
        let head = raw_head(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status_of(&head), 400, "{case}: {raw:?}\n{head}");
    }
    // absolute-form: the target's authority is the Host; the upstream gets origin-form.
    let head = raw_head(
        proxy.addr,
        b"GET http://app.test:81/abs/../x?q=1 HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    let seen = app.wait_for("GET", "/x?q=1").await;
    assert_eq!(seen.header_values("host"), ["app.test:81"]);
    assert_eq!(seen.header_values("x-forwarded-host"), ["app.test:81"]);
    // OPTIONS * is forwarded as such, not as /*.
    let head = raw_head(proxy.addr, b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(status_of(&head), 200, "{head}");
    app.wait_for("OPTIONS", "*").await;
    // HTTP/1.0 may leave Host out.
    let head = raw_head(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(app
        .requests()
        .iter()
        .all(|r| r.target != "/*" && !r.target.starts_with("ftp")));
}

#[tokio::test]
async fn http2_cookie_crumbs_become_one_cookie_and_authority_is_the_host() {
    let (app, proxy) = target_proxy().await;
    let mut client = h2_client(TcpStream::connect(proxy.addr).await.expect("connect")).await;
    let request = Request::get("http://app.test/h2?x=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .expect("request");
    assert_eq!(h2_status(&mut client, request, true).await, Ok(StatusCode::OK));
    let seen = app.wait_for("GET", "/h2?x=1").await;
    assert_eq!(seen.header_values("cookie"), ["a=1; b=2"]);
    assert_eq!(seen.header_values("host"), ["app.test"]);
    for (case, request) in [
        (
            "a Host that is not the :authority",
            Request::get("http://app.test/h2").header("host", "other.test"),
        ),
        (
            "userinfo in the :authority",
            Request::get("http://user@app.test/h2"),
        ),
    ] {
        let answer = h2_status(&mut client, request.body(()).expect("request"), true).await;
        assert_refused(&answer, case);
    }
}

/// An h2 request is refused with a 400, or its stream reset.
fn assert_refused(answer: &Result<StatusCode, String>, case: &str) {
    assert!(
        matches!(answer, Ok(StatusCode::BAD_REQUEST) | Err(_)),
        "{case}: {answer:?}"
    );
}

// The story: routing used the raw path and the upstream got it verbatim, so
// `/events/../admin/x` was routed by `/events` (with its widened stream key) and the app,
// which normalises, served `/admin/x`.
#[tokio::test]
async fn one_normalised_path_routes_and_reaches_the_upstream() {
    let events = RawUpstream::start().await;
    let admin = RawUpstream::start().await;
    let root = RawUpstream::start().await;
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\nstream_key = [\"path\"]\n\
         [[route]]\npath = \"/admin\"\nupstream = \"http://{}\"\n\
         [[route]]\npath = \"/files\"\nupstream = \"http://{}\"\nmerge_slashes = false\nallow_encoded_slashes = true\n\
         [[route]]\npath = \"/\"\nupstream = \"http://{}\"\n",
        events.addr, admin.addr, events.addr, root.addr
    ))
    .await;
    for (n, path) in [
        "/events/../admin/x",
        "/events/%2e%2e/admin/x",
        "/events/%2E%2E/admin/x",
        "//admin/x",
        "/events/./.././admin//x",
        "/%61dmin/x",
    ]
    .iter()
    .enumerate()
    {
        let raw = format!("GET {path}?n={n} HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n");
        let head = raw_head(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status_of(&head), 200, "{path}: {head}");
        admin.wait_for("GET", &format!("/admin/x?n={n}")).await;
    }
    // Spellings that some app reads as /admin (Java strips `;params`, case-insensitive and
    // Windows servers ignore case and trailing dots) go to the /admin route, as sent.
    for path in ["/admin;jsessionid=x/y", "/ADMIN/y", "/admin./y"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        let head = raw_head(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status_of(&head), 200, "{path}: {head}");
        admin.wait_for("GET", path).await;
    }
    for path in [
        "/admin%2Fx",
        "/admin%2fx",
        "/events/a%5Cb",
        "/events/..;/admin/x",
        "/events/%2e%2e%3b/admin/x",
        "/events/%zz",
    ] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        let head = raw_head(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status_of(&head), 400, "{path}: {head}");
    }
    assert!(
        events.requests().is_empty() && root.requests().is_empty(),
        "the /events app saw {:?}, the / app {:?}",
        events.requests(),
        root.requests()
    );
    // A route may keep repeated slashes and encoded slashes for its app.
    let head = raw_head(proxy.addr, b"GET /files//a%2fb/./c HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status_of(&head), 200, "{head}");
    events.wait_for("GET", "/files//a%2Fb/c").await;
}

#[tokio::test]
async fn the_stream_key_sees_the_normalised_path() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "stream_key = [\"path\"]").await;
    let mut first = SseClient::connect(&proxy.url("/events/feed"), &[]).await;
    let mut second = SseClient::connect(&proxy.url("/events/x/../feed"), &[]).await;
    let mut third = SseClient::connect(&proxy.url("/events//fe%65d"), &[]).await;
    app.send("data: one\n\n");
    for client in [&mut first, &mut second, &mut third] {
        assert_eq!(client.next_event().await.data, "one");
    }
    assert_eq!(app.requests().len(), 1, "one stream for one path");
    assert_eq!(app.requests()[0].uri.path(), "/events/feed");
}

/// Opens a subscription to `path` from `from` on the lean path and returns the connection
/// after its response head.
async fn subscribe_from(proxy: &Sidecar, from: IpAddr, path: &str, extra: &str) -> (TcpStream, String) {
    let mut stream = tcp_from(from, proxy.addr).await;
    let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n{extra}\r\n");
    stream.write_all(raw.as_bytes()).await.expect("write");
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads from `stream` until `needle` has arrived.
async fn read_until(stream: &mut TcpStream, mut seen: String, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    within(&format!("{needle:?} on the stream"), async {
        while !seen.contains(needle) {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => panic!("stream ended before {needle:?}: {seen}"),
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&chunk[..n])),
            }
        }
        seen
    })
    .await
}

// The story: 1,000 distinct query strings from one client, dropped at once, cost 1,000 upstream
// connections for the linger time, and then real users got 503.
#[tokio::test]
async fn one_client_cannot_open_streams_without_bound() {
    init_logging();
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "new_streams_per_client = \"off\"\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    ))
    .await;
    let attacker = ip("127.0.0.3");
    let mut opened = tokio::task::JoinSet::new();
    for n in 0..600 {
        let proxy_addr = proxy.addr;
        opened.spawn(async move {
            let mut stream = tcp_from(attacker, proxy_addr).await;
            let raw = format!("GET /events?n={n} HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n");
            stream.write_all(raw.as_bytes()).await.expect("write");
            let head = read_head(&mut stream).await;
            assert_eq!(status_of(&head), 200, "held, never refused: {head}");
            // Abandoned at once.
        });
    }
    while let Some(done) = opened.join_next().await {
        done.expect("subscription task");
    }
    // Meanwhile, and after, a user at another address is served at once.
    let mut user = SseClient::connect(&proxy.url("/events?user=1"), &[]).await;
    let requests = app.wait_requests(101).await;
    assert!(requests.iter().any(|r| r.uri.query() == Some("user=1")));
    app.send("data: for everyone\n\n");
    assert_eq!(user.next_event().await.data, "for everyone");
    assert_eq!(
        app.requests().len(),
        101,
        "the attacker's 600 subscriptions opened only its 100 streams"
    );
    assert_eq!(proxy.metric("ssegate_streams{route=\"/events\"}").await, 101.0);
    assert_eq!(
        proxy
            .metric("ssegate_subscriptions_held_total{route=\"/events\"}")
            .await,
        500.0
    );
    proxy
        .metric_reaches("ssegate_held_subscriptions{route=\"/events\"}", 0.0)
        .await;
}

#[tokio::test]
async fn the_rate_of_new_streams_holds_a_burst_from_one_client() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "new_streams_per_client = 5\nnew_streams_burst = 10\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    ))
    .await;
    let mut held = Vec::new();
    for n in 0..30 {
        let (stream, head) = subscribe_from(&proxy, ip("127.0.0.4"), &format!("/events?n={n}"), "").await;
        assert_eq!(status_of(&head), 200, "{head}");
        held.push(stream);
    }
    app.wait_requests(10).await;
    assert!(
        app.requests().len() <= 12,
        "{} streams opened",
        app.requests().len()
    );
    // The held ones are let in at the rate: five a second.
    app.wait_requests(15).await;
}

#[tokio::test]
async fn a_held_subscription_opens_its_stream_when_the_client_may() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "max_streams_per_client = 2\n[defaults]\nlinger = \"100ms\"\nheartbeat = \"200ms\"\n\
         [[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    ))
    .await;
    let me = ip("127.0.0.5");
    let (first, _) = subscribe_from(&proxy, me, "/events?a", "").await;
    let (_second, _) = subscribe_from(&proxy, me, "/events?b", "").await;
    app.wait_requests(2).await;
    let (mut third, head) = subscribe_from(&proxy, me, "/events?c", "").await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    // Held: retry first and heartbeats, and nothing asked of the app.
    let seen = read_until(&mut third, head, "retry: 3000\n").await;
    let seen = read_until(&mut third, seen, ":\n").await;
    assert_eq!(app.requests().len(), 2);
    // A subscription that leaves while held never opens anything.
    let (gone, _) = subscribe_from(&proxy, me, "/events?gone", "").await;
    drop(gone);
    // Joining a live stream is never held.
    let (mut joiner, head) = subscribe_from(&proxy, me, "/events?b", "").await;
    let joined = read_until(&mut joiner, head, "id: ").await;
    // The first stream's client leaves; after its linger, the held one's stream opens.
    drop(first);
    let requests = app.wait_requests(3).await;
    assert_eq!(requests[2].uri.query(), Some("c"));
    app.send("data: hello\n\n");
    read_until(&mut third, seen, "data: hello").await;
    read_until(&mut joiner, joined, "data: hello").await;
    app.never_sees(
        Duration::from_millis(300),
        "the abandoned held subscription opened its stream",
        |seen| seen.iter().any(|r| r.uri.query() == Some("gone")),
    )
    .await;
}

// Found by probing: a held subscription kept the route it started with, and after a reload
// that pointed the route elsewhere it opened its stream on the old upstream.
#[tokio::test]
async fn a_held_subscription_follows_a_reload() {
    let old = SseApp::start().await;
    let new = SseApp::start().await;
    let dir = temp_dir("held-reload");
    let file = dir.join("ssegate.toml");
    let config = |upstream: std::net::SocketAddr| {
        format!(
            "max_streams_per_client = 1\n[defaults]\nlinger = \"50ms\"\n[[route]]\npath = \"/events\"\nupstream = \"http://{upstream}\"\n"
        )
    };
    std::fs::write(&file, config(old.addr())).expect("write");
    let proxy = Sidecar::start_file(&file).await;
    let me = ip("127.0.0.7");
    let (first, _) = subscribe_from(&proxy, me, "/events?a", "").await;
    old.wait_requests(1).await;
    let (mut held, head) = subscribe_from(&proxy, me, "/events?b", "").await;
    let seen = read_until(&mut held, head, "retry:").await;
    std::fs::write(&file, config(new.addr())).expect("write");
    proxy.control.reload().expect("reload");
    drop(first);
    // Its route now leads elsewhere: the held subscription ends cleanly (the client comes back
    // under the new config) rather than open a stream on the old upstream.
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    within("the held response to end", held.read_to_end(&mut rest))
        .await
        .expect("read");
    let ended = seen + &String::from_utf8_lossy(&rest);
    assert!(
        ended.ends_with("0\r\n\r\n"),
        "a clean end of the chunked body: {ended:?}"
    );
    old.never_sees(
        Duration::from_millis(200),
        "the held subscription opened its stream on the old upstream",
        |seen| seen.iter().any(|r| r.uri.query() == Some("b")),
    )
    .await;
    proxy
        .metric_reaches("ssegate_held_subscriptions{route=\"/events\"}", 0.0)
        .await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_client_is_the_forwarded_address() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "trusted_proxies = [\"127.0.0.0/24\"]\nmax_streams_per_client = 1\n\
         [[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    ))
    .await;
    let balancer = ip("127.0.0.1");
    let (_a, _) = subscribe_from(&proxy, balancer, "/events?1", "X-Forwarded-For: 198.51.100.1\r\n").await;
    app.wait_requests(1).await;
    // Same client behind the balancer: held. A spoofed left part changes nothing.
    let (_b, head) = subscribe_from(
        &proxy,
        balancer,
        "/events?2",
        "X-Forwarded-For: 203.0.113.50, 198.51.100.1\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200);
    // Another client behind the same balancer: served at once.
    let (_c, _) = subscribe_from(&proxy, balancer, "/events?3", "X-Forwarded-For: 198.51.100.2\r\n").await;
    let requests = app.wait_requests(2).await;
    assert_eq!(requests[1].uri.query(), Some("3"));
    assert_eq!(requests.len(), 2);
    // From a peer that is not trusted, the header is not believed.
    let (_d, _) = subscribe_from(
        &proxy,
        ip("127.0.1.9"),
        "/events?4",
        "X-Forwarded-For: 198.51.100.3\r\n",
    )
    .await;
    let (_e, _) = subscribe_from(
        &proxy,
        ip("127.0.1.9"),
        "/events?5",
        "X-Forwarded-For: 198.51.100.4\r\n",
    )
    .await;
    app.wait_requests(3).await;
    app.stays_at_requests(3, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn h2_subscriptions_opened_and_reset_open_at_most_the_budget() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "new_streams_per_client = \"off\"\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    ))
    .await;
    let client = h2_client(tcp_from(ip("127.0.0.6"), proxy.addr).await).await;
    // In rounds of 100 (the connection allows 128 at once): open, get the answer, reset.
    for round in 0..6 {
        let mut open = Vec::new();
        for n in 0..100 {
            let mut ready = within("h2 ready", client.clone().ready()).await.expect("ready");
            let request = h2_subscription(&proxy, &format!("/events?n={round}-{n}"))
                .body(())
                .expect("request");
            open.push(ready.send_request(request, true).expect("send"));
        }
        for (response, _) in open {
            let mut response = within("h2 response", response).await.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            response.body_mut().flow_control();
            drop(response);
        }
    }
    let mut user = SseClient::connect(&proxy.url("/events?user=2"), &[]).await;
    let requests = app.wait_requests(101).await;
    assert!(requests.iter().any(|r| r.uri.query() == Some("user=2")));
    app.send("data: still served\n\n");
    assert_eq!(user.next_event().await.data, "still served");
    app.stays_at_requests(101, Duration::from_millis(300)).await;
}

// The story: a stream key joined its parts with `=`, so `Authorization: Bearer alice=x` and the
// two headers `Bearer alice` and `x` made one key: one user's subscription joined another's
// stream and read events the app had sent for someone else.
#[tokio::test]
async fn stream_keys_are_what_the_upstream_receives_and_cannot_collide() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let _one = SseClient::connect(&proxy.url("/events"), &[("authorization", "Bearer alice=x")]).await;
    let _two = SseClient::connect(
        &proxy.url("/events"),
        &[("authorization", "Bearer alice"), ("authorization", "x")],
    )
    .await;
    app.wait_requests(2).await;
    // A credential the client names in Connection is stripped before the upstream: the app
    // sees an anonymous request, and so does the key.
    let _anonymous = SseClient::connect(&proxy.url("/events?room=1"), &[]).await;
    let _stripped = SseClient::connect(
        &proxy.url("/events?room=1"),
        &[
            ("connection", "authorization"),
            ("authorization", "Bearer mallory"),
        ],
    )
    .await;
    // Tenants: the Host is in the default key.
    let _tenant_a = SseClient::connect(&proxy.url("/events?room=2"), &[("host", "a.example")]).await;
    let _tenant_b = SseClient::connect(&proxy.url("/events?room=2"), &[("host", "b.example")]).await;
    app.wait_requests(5).await;
    app.stays_at_requests(5, Duration::from_millis(200)).await;
    assert!(app
        .requests()
        .iter()
        .all(|r| r.header("authorization") != Some("Bearer mallory")));
    let streams = get(&proxy.admin_url("/streams"), &[]).await.text();
    assert!(
        !streams.contains("alice") && !streams.contains("a.example"),
        "{streams}"
    );
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_fault() {
    use http_body_util::BodyExt;
    // An app that reads the whole body before it answers.
    let app = Upstream::start(|request: Request<hyper::body::Incoming>| async move {
        let body = request.into_body().collect().await.map(|b| b.to_bytes());
        http::Response::new(full(format!("{}", body.map_or(0, |b| b.len()))))
    })
    .await;
    let proxy = Sidecar::route("/", app.addr, "").await;
    let head = raw_head(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert_eq!(
        proxy
            .metric("ssegate_requests_total{route=\"/\",class=\"5xx\"}")
            .await,
        0.0,
        "not blamed on the upstream"
    );
    assert_eq!(
        proxy
            .metric("ssegate_requests_total{route=\"/\",class=\"4xx\"}")
            .await,
        1.0
    );
}
