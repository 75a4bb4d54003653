//! What the app sends reaches the client as the app meant it: its headers, its first event, its
//! ids (repeated or odd), and the ends of its stream.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An app that answers every request with its response head and a first event in one write (a
/// snapshot on connect), then keeps the stream open; `extra` is added to the head.
async fn snapshot_app(extra: &'static str) -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicU32::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&chunk[..k]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{extra}\r\ndata: snapshot {n}\n\n"
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                // Held open until the proxy lets go.
                let mut rest = [0u8; 64];
                let _ = stream.read(&mut rest).await;
            });
        }
    });
    (addr, served)
}

// The story: the subscription that opened a stream was released when the upstream head
// arrived, but its place in the buffer was taken later, at the newest event: an event the app
// wrote with its headers was often skipped, and the priming id already named it.
#[tokio::test]
async fn the_first_subscriber_gets_the_apps_first_event() {
    init_logging();
    let (app, _) = snapshot_app("").await;
    let proxy = Sidecar::start(&format!(
        "max_streams_per_client = \"off\"\nnew_streams_per_client = \"off\"\n\
         [[route]]\npath = \"/events\"\nupstream = \"http://{app}\"\nlinger = \"10ms\"\n"
    ))
    .await;
    let mut missed = 0;
    for round in 0..20 {
        let mut clients = Vec::new();
        for n in 0..10 {
            let url = proxy.url(&format!("/events?stream={round}-{n}"));
            clients.push(tokio::spawn(async move {
                let mut client = SseClient::connect(&url, &[]).await;
                // A missed snapshot never comes: the app sends nothing after it.
                tokio::time::timeout(Duration::from_secs(2), client.next_event())
                    .await
                    .is_ok_and(|first| first.data.starts_with("snapshot"))
            }));
        }
        for client in clients {
            if !client.await.expect("client") {
                missed += 1;
            }
        }
    }
    println!("fresh streams whose opener missed the first event: {missed} of 200");
    assert_eq!(
        missed, 0,
        "{missed} of 200 fresh streams skipped the app's first event"
    );
}

// The story: any event whose id was already buffered was dropped as a repeat, at any time, so
// an app that gave six events the same id delivered one.
#[tokio::test]
async fn repeated_ids_are_events_except_in_a_replay_after_a_reconnect() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "reconnect_initial = \"20ms\"").await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    for n in 1..=6 {
        app.send(&format!("id: same\ndata: {n}\n\n"));
    }
    assert_eq!(data(&client.events(6).await), ["1", "2", "3", "4", "5", "6"]);
    app.close_streams();
    let seen = app.wait_requests(2).await;
    assert_eq!(seen[1].header("last-event-id"), Some("same"));
    // The app replays from the id it was given, then goes on; later it repeats an id again,
    // within one connection: an event like any other.
    app.send("id: same\ndata: 6\n\nid: next\ndata: 7\n\nid: same\ndata: 8\n\n");
    assert_eq!(data(&client.events(2).await), ["7", "8"]);
    assert_eq!(
        proxy
            .metric("ssegate_events_repeated_total{route=\"/events\"}")
            .await,
        1.0
    );
    // Resuming by an id that occurs several times resumes after its newest occurrence.
    let mut resumed = SseClient::connect(&proxy.url("/events"), &[("last-event-id", "same")]).await;
    app.send("id: last\ndata: 9\n\n");
    assert_eq!(resumed.next_event().await.data, "9");
}

/// A naive app at 10 events/s: a counter that goes up whether or not anyone listens, each
/// number sent to the streams open at that moment; it ends each stream `lifetime` after it
/// opened. Returns the numbers one client got over `drops` stream ends.
async fn naive_drops(proxy_extra: &str, lifetime: Duration, drops: usize) -> (Vec<u32>, usize) {
    let app = Arc::new(SseApp::start().await);
    let proxy = Sidecar::route("/events", app.addr(), proxy_extra).await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    let writer = app.clone();
    let ticker = tokio::spawn(async move {
        let mut n = 0u32;
        let mut delivered = 0u32;
        let mut opened = tokio::time::Instant::now();
        let mut ends = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while ends < drops {
            tick.tick().await;
            n += 1;
            if writer.send(&format!("data: {n}\n\n")) > 0 {
                delivered = n;
            }
            if opened.elapsed() >= lifetime && writer.open_streams() > 0 {
                writer.close_streams();
                ends += 1;
                opened = tokio::time::Instant::now();
            }
        }
        (n, delivered)
    });
    let (last, delivered) = ticker.await.expect("ticker");
    // Everything up to the last number an open stream took; a lost one is what the test counts,
    // so a quiet stream ends the reading rather than the test.
    let mut got = Vec::new();
    while got.last() < Some(&delivered) {
        match tokio::time::timeout(Duration::from_secs(2), client.next_event()).await {
            Ok(event) => got.push(event.data.parse::<u32>().expect("number")),
            Err(_) => break,
        }
    }
    (got, last as usize)
}

#[tokio::test]
async fn a_stream_the_app_ends_after_a_while_is_reopened_at_once() {
    // A backoff longer than the test: any wait before reopening shows.
    let (got, sent) = naive_drops(
        "reconnect_initial = \"5s\"\nreconnect_max = \"10s\"",
        Duration::from_millis(1200),
        4,
    )
    .await;
    let lost = sent - got.len();
    println!(
        "events lost over 4 stream ends at 10 events/s: {lost} ({:.1} per end)",
        lost as f64 / 4.0
    );
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats: {got:?}"
    );
    assert!(
        lost <= 8,
        "lost {lost} of {sent}: the stream was not reopened at once ({got:?})"
    );
}

#[tokio::test]
async fn an_app_that_keeps_ending_its_stream_at_once_is_backed_off() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route(
        "/events",
        app.addr(),
        "reconnect_initial = \"100ms\"\nreconnect_max = \"5s\"",
    )
    .await;
    let _client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    // A one-shot endpoint: every stream it opens ends before its first event.
    app.end_streams_at_once();
    app.close_streams();
    // 100 ms doubling (with jitter from half to all of each step): 0.05-0.1, 0.1-0.2, 0.2-0.4,
    // 0.4-0.8, 0.8-1.6 s... at most 6 requests in 3 s, where a fixed delay would make 30.
    app.stays_at_requests(7, Duration::from_secs(3)).await;
    let requests = app.requests().len();
    println!("upstream requests in 3 s to an endpoint that ends every stream at once: {requests}");
}

#[tokio::test]
async fn per_client_without_ids_ends_with_the_app_and_with_ids_resumes() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route(
        "/events",
        app.addr(),
        "mode = \"per-client\"\nreconnect_initial = \"20ms\"",
    )
    .await;
    // No ids: re-requesting would replay the app's beginning; the response ends instead.
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: one\n\n");
    assert_eq!(client.next_event().await.data, "one");
    app.close_streams();
    assert!(client.until_end().await, "a clean end");
    // Five reconnect delays: a re-request would have come.
    app.stays_at_requests(1, Duration::from_millis(100)).await;
    // With ids: ssegate reconnects with the last one, and the client's response goes on.
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(2).await;
    app.send("id: 7\ndata: seven\n\n");
    assert_eq!(client.next_event().await.data, "seven");
    app.close_streams();
    let seen = app.wait_requests(3).await;
    assert_eq!(seen[2].header("last-event-id"), Some("7"));
    app.send("id: 8\ndata: eight\n\n");
    assert_eq!(client.next_event().await.data, "eight");
}

// The story: an app id with a control character was forwarded; the browser's reconnect then
// carried it in Last-Event-ID, got 400, and its EventSource stopped for good.
#[tokio::test]
async fn ids_a_client_cannot_send_back_are_never_handed_out() {
    let app = SseApp::start().await;
    let long = "x".repeat(2000);
    let odd = format!(
        "id: bell\u{7}id\ndata: a\n\nid:  padded\ndata: b\n\nid: {long}\ndata: c\n\nid: fine\ndata: d\n\n"
    );
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/inject\"\nupstream = \"http://{0}\"\n\
         [[route]]\npath = \"/passthrough\"\nupstream = \"http://{0}\"\nids = \"passthrough\"\n",
        app.addr()
    ))
    .await;
    let mut inject = SseClient::connect(&proxy.url("/inject"), &[]).await;
    let mut passthrough = SseClient::connect(&proxy.url("/passthrough"), &[]).await;
    app.wait_requests(2).await;
    app.send(&odd);
    let events = inject.events(4).await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone().unwrap_or_default()).collect();
    assert!(
        ids[..3].iter().all(|id| id.contains('-') && id.len() < 20),
        "{ids:?}"
    );
    assert_eq!(ids[3], "fine");
    let events = passthrough.events(4).await;
    let ids: Vec<Option<String>> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, [None, None, None, Some("fine".to_owned())]);
    assert_eq!(
        proxy
            .metric("ssegate_unsendable_ids_total{route=\"/inject\"}")
            .await,
        3.0
    );
    assert_eq!(
        proxy
            .metric("ssegate_unsendable_ids_total{route=\"/passthrough\"}")
            .await,
        3.0
    );
    // Every id handed out resumes.
    let mut resumed =
        SseClient::connect(&proxy.url("/inject"), &[("last-event-id", &ids_of(&inject)[0])]).await;
    assert_eq!(data(&resumed.events(3).await), ["b", "c", "d"]);
    // An id ssegate cannot find is a gap, answered 200, never a 4xx.
    for junk in ["zzz", "é-1", "fine\tx"] {
        let client = SseClient::connect(&proxy.url("/inject"), &[("last-event-id", junk)]).await;
        assert_eq!(client.status, http::StatusCode::OK, "{junk:?}");
    }
}

fn ids_of(client: &SseClient) -> Vec<String> {
    // The ids in the raw stream, in order.
    client
        .text()
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .filter(|id| !id.ends_with("-0"))
        .map(str::to_owned)
        .collect()
}

const APP_HEADERS: &[(&str, &str)] = &[
    ("access-control-allow-origin", "http://page.test"),
    ("access-control-allow-credentials", "true"),
    ("x-app", "1"),
    ("set-cookie", "session=abc; HttpOnly"),
    ("content-encoding", "gzip"),
    ("connection", "x-hop"),
    ("x-hop", "1"),
];

// The story: a subscriber's 200 carried only ssegate's three headers, so a cross-origin
// EventSource never saw Access-Control-Allow-Origin and failed.
#[tokio::test]
async fn the_apps_headers_reach_subscribers_and_its_cookie_only_the_one_it_was_for() {
    let app = SseApp::start().await;
    app.set_headers(APP_HEADERS);
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let origin = [("origin", "http://page.test")];
    let opener = SseClient::connect(&proxy.url("/events"), &origin).await;
    app.wait_requests(1).await;
    let joiner = SseClient::connect(&proxy.url("/events"), &origin).await;
    assert_eq!(app.requests().len(), 1, "one stream");
    for (header, opener_gets, joiner_gets, why) in [
        (
            "access-control-allow-origin",
            Some("http://page.test"),
            Some("http://page.test"),
            "the app's",
        ),
        (
            "access-control-allow-credentials",
            Some("true"),
            Some("true"),
            "the app's",
        ),
        ("x-app", Some("1"), Some("1"), "the app's"),
        (
            "content-type",
            Some("text/event-stream"),
            Some("text/event-stream"),
            "an event stream",
        ),
        (
            "cache-control",
            Some("no-cache"),
            Some("no-cache"),
            "never cached",
        ),
        ("content-encoding", None, None, "ssegate never compresses"),
        ("x-hop", None, None, "hop-by-hop"),
        (
            "set-cookie",
            Some("session=abc; HttpOnly"),
            None,
            "a cookie is set for one client",
        ),
    ] {
        assert_eq!(opener.header(header), opener_gets, "opener, {header}: {why}");
        assert_eq!(joiner.header(header), joiner_gets, "joiner, {header}: {why}");
    }
    // Another origin is another stream: a reflected Access-Control-Allow-Origin is right for
    // everyone on a stream.
    let _other = SseClient::connect(&proxy.url("/events"), &[("origin", "http://other.test")]).await;
    app.wait_requests(2).await;
}

#[tokio::test]
async fn per_client_subscribers_get_every_header_of_their_own_response() {
    let app = SseApp::start().await;
    app.set_headers(APP_HEADERS);
    let proxy = Sidecar::route("/events", app.addr(), "mode = \"per-client\"").await;
    for _ in 0..2 {
        let client = SseClient::connect(&proxy.url("/events"), &[]).await;
        assert_eq!(client.header("set-cookie"), Some("session=abc; HttpOnly"));
        assert_eq!(client.header("x-app"), Some("1"));
    }
}

#[tokio::test]
async fn response_headers_are_on_every_response_of_the_route_even_before_the_app_answers() {
    let down = dead_addr().await;
    let extra = "response_headers = { \"Access-Control-Allow-Origin\" = \"https://app.example\", \"X-Served-By\" = \"ssegate\" }";
    let proxy = Sidecar::route(
        "/events",
        down,
        &format!("{extra}\nupstream_connect_timeout = \"200ms\""),
    )
    .await;
    // The app is down: no app headers yet, the route's are there.
    let client = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(client.status, http::StatusCode::OK);
    assert_eq!(
        client.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(client.header("x-served-by"), Some("ssegate"));
    // A passed-through response carries them too, replacing the app's of that name.
    let app = Upstream::start(|_request| async {
        http::Response::builder()
            .header("access-control-allow-origin", "*")
            .body(full("ok"))
            .expect("response")
    })
    .await;
    let proxy = Sidecar::route("/api", app.addr, extra).await;
    let reply = get(&proxy.url("/api/x"), &[]).await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        reply
            .headers
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert_eq!(reply.header("x-served-by"), Some("ssegate"));
}

#[tokio::test]
async fn cors_preflights_pass_through_to_the_app() {
    let app = Upstream::start(|request: http::Request<hyper::body::Incoming>| async move {
        let asked = request
            .headers()
            .get("access-control-request-headers")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        http::Response::builder()
            .status(204)
            .header("access-control-allow-origin", "http://page.test")
            .header("access-control-allow-headers", asked)
            .header("x-method", request.method().as_str())
            .body(full(""))
            .expect("response")
    })
    .await;
    let proxy = Sidecar::route("/events", app.addr, "sse = \"always\"").await;
    let preflight = http::Request::builder()
        .method("OPTIONS")
        .uri(proxy.url("/events"))
        .header("origin", "http://page.test")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let reply = send(preflight).await;
    assert_eq!(reply.status, http::StatusCode::NO_CONTENT);
    assert_eq!(reply.header("x-method"), Some("OPTIONS"));
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("last-event-id")
    );
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("http://page.test")
    );
}

// The story: a route in auto mode passed an event stream through raw to a request without
// `Accept: text/event-stream` (plain curl), silently: no ids, no heartbeats, no fan-out.
#[tokio::test]
async fn an_event_stream_passed_through_raw_on_an_auto_route_is_counted() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    for n in 1..=2 {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
        stream
            .write_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let head = read_head(&mut stream).await;
        assert!(head.contains("text/event-stream"), "{head}");
        assert!(!head.contains("retry:"), "raw, not a subscription: {head}");
        proxy
            .metric_reaches(
                "ssegate_sse_passed_through_total{route=\"/events\"}",
                f64::from(n),
            )
            .await;
    }
}

#[tokio::test]
async fn a_reload_drops_the_series_of_removed_routes() {
    let app = SseApp::start().await;
    // /b's app holds each request until the test lets it go.
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    let slow = Upstream::start(move |_request| {
        let (arrived, held) = (arrived.clone(), held.clone());
        async move {
            let _ = arrived.send(());
            held.notified().await;
            http::Response::new(full("late"))
        }
    })
    .await;
    let dir = temp_dir("forget-route");
    let file = dir.join("ssegate.toml");
    let route = |path: &str, upstream: std::net::SocketAddr| {
        format!("[[route]]\npath = \"{path}\"\nupstream = \"http://{upstream}\"\n")
    };
    std::fs::write(&file, route("/a", app.addr()) + &route("/b", slow.addr)).expect("write");
    let proxy = Sidecar::start_file(&file).await;
    let url = proxy.url("/b/page");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    within("the request at /b's app", arrivals.recv()).await;
    let metrics = get(&proxy.admin_url("/metrics"), &[]).await.text();
    assert!(metrics.contains("route=\"/b\""), "{metrics}");
    std::fs::write(&file, route("/a", app.addr())).expect("write");
    proxy.control.reload().expect("reload");
    let metrics = get(&proxy.admin_url("/metrics"), &[]).await.text();
    assert!(!metrics.contains("route=\"/b\""), "{metrics}");
    assert!(metrics.contains("route=\"/a\""));
    // A request in flight on the removed route ends, and its series stay gone.
    release.notify_one();
    assert_eq!(in_flight.await.expect("request").text(), "late");
    let metrics = get(&proxy.admin_url("/metrics"), &[]).await.text();
    assert!(!metrics.contains("route=\"/b\""), "{metrics}");
}

// Found in review: ssegate's own gap event ended the replay, so with on_gap = "event" the
// app's replay after an outage reached clients again.
#[tokio::test]
async fn an_apps_replay_after_an_outage_is_dropped_with_a_gap_event_too() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route(
        "/events",
        app.addr(),
        "on_gap = \"event\"\nreconnect_initial = \"20ms\"\nreconnect_max = \"50ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("id: 1\ndata: one\n\nid: 2\ndata: two\n\n");
    assert_eq!(data(&client.events(2).await), ["one", "two"]);
    // Down for a while (503s), then back, replaying from its beginning.
    app.answer_with(http::StatusCode::SERVICE_UNAVAILABLE, "text/plain", "down");
    app.close_streams();
    proxy
        .metric_above("ssegate_upstream_failures_total{route=\"/events\"}", 1.0)
        .await;
    app.stream_again();
    let requests = app.requests().len();
    app.wait_requests(requests + 1).await;
    app.send("id: 1\ndata: one\n\nid: 2\ndata: two\n\nid: 3\ndata: three\n\n");
    let events = client.events(2).await;
    assert_eq!(events[0].event.as_deref(), Some("gap"));
    assert_eq!(events[1].data, "three");
}

// Found in review: an app that replays its whole history on every connect starts with ids
// already evicted; the replay must still be recognised when buffered ids follow.
#[tokio::test]
async fn a_replay_longer_than_the_buffer_is_dropped_as_far_as_the_buffer_reaches() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route(
        "/events",
        app.addr(),
        "buffer_events = 4\nreconnect_initial = \"20ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    let history = |n: u32| {
        (1..=n)
            .map(|i| format!("id: e{i}\ndata: {i}\n\n"))
            .collect::<String>()
    };
    for i in 1..=5 {
        app.send(&format!("id: e{i}\ndata: {i}\n\n"));
        assert_eq!(client.next_event().await.data, i.to_string());
    }
    app.close_streams();
    app.wait_requests(2).await;
    app.send(&history(6));
    // e1 left the buffer: it cannot be told from a new event. e2 to e5 are repeats.
    assert_eq!(data(&client.events(2).await), ["1", "6"]);
}

// Found in review: with an id a client could not send back, per-client mode re-requested the
// stream without Last-Event-ID and replayed the app's beginning.
#[tokio::test]
async fn per_client_with_only_unsendable_ids_ends_with_the_app() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route(
        "/events",
        app.addr(),
        "mode = \"per-client\"\nreconnect_initial = \"20ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("id: a\u{1}\ndata: hello\n\n");
    let event = client.next_event().await;
    assert_eq!((event.data.as_str(), event.id), ("hello", None));
    app.close_streams();
    assert!(client.until_end().await, "a clean end");
    // Five reconnect delays: a re-request would have come.
    app.stays_at_requests(1, Duration::from_millis(100)).await;
}

// Found in review: a subscription answered before its stream's app answers (held for its
// client's budget, or the app down) had no CORS headers, and a browser fails a cross-origin
// EventSource for good without them.
#[tokio::test]
async fn subscriptions_answered_before_the_app_get_its_last_cors_answer_for_their_origin() {
    let app = SseApp::start().await;
    app.set_headers(&[
        ("access-control-allow-origin", "http://page.test"),
        ("access-control-allow-credentials", "true"),
        ("x-app", "1"),
    ]);
    let proxy = Sidecar::start(&format!(
        "max_streams_per_client = 1\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\nupstream_connect_timeout = \"300ms\"\n",
        app.addr()
    ))
    .await;
    let origin = [("origin", "http://page.test")];
    let first = SseClient::connect(&proxy.url("/events?room=1"), &origin).await;
    assert_eq!(
        first.header("access-control-allow-origin"),
        Some("http://page.test")
    );
    // Held for the client's budget: answered at once, with the app's CORS answer to this origin.
    let held = SseClient::connect(&proxy.url("/events?room=2"), &origin).await;
    assert_eq!(
        held.header("access-control-allow-origin"),
        Some("http://page.test")
    );
    assert_eq!(held.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(held.header("x-app"), None, "only the CORS answer is remembered");
    // Another origin was never answered: nothing is made up for it.
    let stranger = SseClient::connect(&proxy.url("/events?room=3"), &[("origin", "http://evil.test")]).await;
    assert_eq!(stranger.header("access-control-allow-origin"), None);
}
