//! The app's side: it ends its stream, restarts, goes down, answers with a non-stream status,
//! sends garbage. Clients stay connected through whatever is transient.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn the_app_ending_its_stream_every_second_is_invisible_to_clients() {
    init_logging();
    let app = Arc::new(SseApp::start().await);
    let proxy = Sidecar::route(
        "/events",
        app.addr(),
        "reconnect_initial = \"50ms\"\nreconnect_max = \"1s\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    // The app numbers the events it actually sends; it ends its stream every second.
    let writer = app.clone();
    let generator = tokio::spawn(async move {
        let mut n = 0u32;
        let started = tokio::time::Instant::now();
        let mut last_close = started;
        while started.elapsed() < Duration::from_secs(5) {
            if writer.send(&format!("data: {}\n\n", n + 1)) > 0 {
                n += 1;
            }
            if last_close.elapsed() >= Duration::from_secs(1) {
                writer.close_streams();
                last_close = tokio::time::Instant::now();
            }
            // The app's pace, part of the scenario: an event every 10 ms.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        n
    });
    let sent = generator.await.expect("generator");
    let got: Vec<u32> = client
        .events(sent as usize)
        .await
        .iter()
        .map(|e| e.data.parse().expect("number"))
        .collect();
    assert_eq!(
        got,
        (1..=sent).collect::<Vec<_>>(),
        "one continuous sequence, no duplicates"
    );
    assert!(
        app.requests().len() >= 5,
        "the app's stream was reopened each time ({})",
        app.requests().len()
    );
}

#[tokio::test]
async fn reconnect_sends_the_last_upstream_id_and_repeats_are_dropped() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route(
        "/events",
        app.addr(),
        "ids = \"passthrough\"\nreconnect_initial = \"20ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n");
    client.events(3).await;
    app.close_streams();
    let seen = app.wait_requests(2).await;
    assert_eq!(seen[1].header("last-event-id"), Some("3"));
    // The app replays a little before the id it was given, as many apps do.
    app.send("id: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\n");
    let next = client.next_event().await;
    assert_eq!((next.id.as_deref(), next.data.as_str()), (Some("4"), "d"));
}

#[tokio::test]
async fn upstream_down_at_subscribe_time_gets_200_and_heartbeats_then_events() {
    let addr = dead_addr().await;
    let proxy = Sidecar::route(
        "/events",
        addr,
        "heartbeat = \"100ms\"\nreconnect_initial = \"50ms\"\nreconnect_max = \"200ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(
        client.status,
        StatusCode::OK,
        "never an error status: EventSource would give up"
    );
    client.read_until("\n\n:\n").await;
    let app = SseApp::serve(
        tokio::net::TcpListener::bind(addr)
            .await
            .expect("rebind the app's port"),
    );
    app.wait_requests(1).await;
    app.send("data: up\n\n");
    assert_eq!(client.next_event().await.data, "up");
}

#[tokio::test]
async fn transient_statuses_are_retried_without_reaching_the_client() {
    let app = SseApp::start().await;
    app.answer_with(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "busy");
    let proxy = Sidecar::route(
        "/events",
        app.addr(),
        "reconnect_initial = \"50ms\"\nreconnect_max = \"100ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(client.status, StatusCode::OK);
    app.wait_requests(2).await;
    app.stream_again();
    let before = app.requests().len();
    app.wait_requests(before + 1).await;
    app.send("data: recovered\n\n");
    assert_eq!(client.next_event().await.data, "recovered");
}

#[tokio::test]
async fn a_definitive_answer_goes_to_each_client_as_is_and_is_never_shared() {
    let app = SseApp::start().await;
    app.answer_with(
        StatusCode::UNAUTHORIZED,
        "application/json",
        "{\"error\":\"login\"}",
    );
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let url = proxy.url("/events");
    let (one, two) = tokio::join!(
        get(&url, &[("accept", "text/event-stream")]),
        get(&url, &[("accept", "text/event-stream")]),
    );
    for reply in [one, two] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.text(), "{\"error\":\"login\"}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    assert_eq!(app.requests().len(), 2, "each client asked the app itself");
    for (case, status, body) in [
        ("a server error", StatusCode::INTERNAL_SERVER_ERROR, "boom"),
        (
            "no content: the app says the stream is over",
            StatusCode::NO_CONTENT,
            "",
        ),
    ] {
        app.answer_with(status, "text/plain", body);
        let reply = get(&proxy.url("/events"), &[("accept", "text/event-stream")]).await;
        assert_eq!((reply.status, reply.text().as_str()), (status, body), "{case}");
    }
}

#[tokio::test]
async fn a_204_on_reconnect_ends_the_stream_for_every_client() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "reconnect_initial = \"20ms\"").await;
    let mut one = SseClient::connect(&proxy.url("/events"), &[]).await;
    let mut two = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: last\n\n");
    app.answer_with(StatusCode::NO_CONTENT, "text/plain", "");
    app.close_streams();
    for client in [&mut one, &mut two] {
        assert_eq!(client.next_event().await.data, "last");
        assert!(client.until_end().await, "ended cleanly");
    }
}

#[tokio::test]
async fn garbage_and_oversize_events_are_dropped_and_the_stream_goes_on() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "max_event_bytes = \"1KiB\"").await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("\u{0}\u{1}binary junk\r\n");
    app.send(&format!("data: {}\n\n", "x".repeat(5000)));
    app.send("retry: soon\nid: a\u{0}b\ndata: ok \u{FFFD}\n\n");
    let event = client.next_event().await;
    assert_eq!(event.data, "ok \u{FFFD}");
    let mut other = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.send("data: next\n\n");
    assert_eq!(client.next_event().await.data, "next");
    assert_eq!(other.next_event().await.data, "next");
}

#[tokio::test]
async fn clients_are_let_go_cleanly_when_the_upstream_stays_down_past_the_grace() {
    let proxy = Sidecar::route(
        "/events",
        dead_addr().await,
        "upstream_down_grace = \"300ms\"\nreconnect_initial = \"50ms\"\nreconnect_max = \"100ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(client.status, StatusCode::OK);
    assert!(
        client.until_end().await,
        "a clean end, so the browser reconnects later by itself"
    );
    assert!(client.text().starts_with("retry: 3000\n"));
}

#[tokio::test]
async fn stopping_ssegate_ends_sse_responses_cleanly_after_flushing() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: 1\n\ndata: 2\n\n");
    client.events(2).await;
    within("ssegate to stop", proxy.stop()).await;
    assert!(client.until_end().await, "the response ended cleanly");
}

#[tokio::test]
async fn with_on_gap_event_clients_are_told_when_the_app_was_down() {
    let app = SseApp::start().await;
    let addr = app.addr();
    let proxy = Sidecar::route(
        "/events",
        addr,
        "on_gap = \"event\"\nreconnect_initial = \"50ms\"\nreconnect_max = \"100ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: before\n\n");
    let before = client.next_event().await;
    // The app dies: its port closes and its stream ends.
    app.upstream.stop();
    app.close_streams();
    drop(app);
    // Only the admin port can tell that ssegate has tried the dead port and failed.
    let failures = "ssegate_upstream_failures_total{route=\"/events\"}";
    let metrics_before = proxy.metric(failures).await;
    proxy.metric_above(failures, metrics_before).await;
    let restarted = SseApp::serve(
        tokio::net::TcpListener::bind(addr)
            .await
            .expect("rebind the app's port"),
    );
    restarted.wait_requests(1).await;
    restarted.send("data: after\n\n");
    let gap = client.next_event().await;
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(
        Some(gap.data.as_str()),
        before.id.as_deref(),
        "the gap starts after the last event seen"
    );
    assert_eq!(client.next_event().await.data, "after");
    // Counted as an outage, not as a resume that missed.
    assert_eq!(
        proxy
            .metric("ssegate_upstream_outage_gaps_total{route=\"/events\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy.metric("ssegate_resume_gaps_total{route=\"/events\"}").await,
        0.0
    );
}

/// What a [`scripted_app`] saw on its `n`th connection (from 1): a request head, or the
/// connection closed by ssegate.
#[derive(Debug)]
enum AppSaw {
    Request(usize, String),
    Closed(usize),
}

/// An app written by hand, for answers no HTTP library sends: its `n`th connection reads a
/// request head, gets the bytes `answer(n)` and is held open until ssegate closes it, or closed
/// by the app when the answer ends in [`CLOSE`].
async fn scripted_app(
    answer: fn(usize) -> Vec<u8>,
) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<AppSaw>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 1.. {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&chunk[..k]),
                    }
                }
                let _ = tx.send(AppSaw::Request(n, String::from_utf8_lossy(&head).into_owned()));
                let answer = answer(n);
                let (answer, close) = match answer.strip_suffix(CLOSE) {
                    Some(before) => (before, true),
                    None => (&answer[..], false),
                };
                if stream.write_all(answer).await.is_err() || close {
                    let _ = tx.send(AppSaw::Closed(n));
                    return;
                }
                let mut rest = [0u8; 1024];
                while matches!(stream.read(&mut rest).await, Ok(k) if k > 0) {}
                let _ = tx.send(AppSaw::Closed(n));
            });
        }
    });
    (addr, rx)
}

/// Ends a [`scripted_app`]'s answer: the app closes the connection after it.
const CLOSE: &[u8] = b"<close>";

const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n";

/// A chunked event stream's head, then `events` as one chunk each.
fn chunked(events: &[&str]) -> Vec<u8> {
    let mut out = format!("{STREAM_HEAD}transfer-encoding: chunked\r\n\r\n");
    for event in events {
        out.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
    }
    out.into_bytes()
}

/// Waits until the app has seen the requests and closes of `connections` (in any order);
/// returns the request heads, in the order of their connections.
async fn saw(rx: &mut tokio::sync::mpsc::UnboundedReceiver<AppSaw>, connections: usize) -> Vec<String> {
    let (mut heads, mut closed) = (vec![String::new(); connections], vec![false; connections]);
    within(&format!("{connections} requests and closes at the app"), async {
        while heads.iter().any(String::is_empty) || closed.iter().any(|c| !c) {
            match rx.recv().await.expect("the app runs") {
                AppSaw::Request(n, head) if n <= connections => heads[n - 1] = head,
                AppSaw::Closed(n) if n <= connections => closed[n - 1] = true,
                _ => {}
            }
        }
    })
    .await;
    heads
}

// A chunked body the app breaks mid-stream is its fault: ssegate drops that connection at once
// (without waiting for the app to close it) and asks again with the last id, while its clients
// stay connected and miss nothing the app sent well.
#[tokio::test]
async fn a_malformed_chunked_body_mid_stream_is_reopened_and_clients_stay() {
    let (addr, mut app) = scripted_app(|n| match n {
        1 => [
            chunked(&["id: 1\ndata: first\n\n"]),
            b"zz\r\nnot a chunk\r\n".to_vec(),
        ]
        .concat(),
        // Then the app closes its connection in the middle of a chunk.
        2 => [
            chunked(&["id: 2\ndata: second\n\n"]),
            b"5\r\nab".to_vec(),
            CLOSE.to_vec(),
        ]
        .concat(),
        _ => chunked(&["id: 3\ndata: third\n\n"]),
    })
    .await;
    let proxy = Sidecar::route(
        "/events",
        addr,
        "ids = \"passthrough\"\nreconnect_initial = \"20ms\"\nreconnect_max = \"100ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(client.next_event().await.data, "first");
    assert_eq!(client.next_event().await.data, "second");
    assert_eq!(client.next_event().await.data, "third");
    // ssegate closed the first connection itself; the second asked for what followed id 1.
    let heads = saw(&mut app, 2).await;
    assert!(heads[1].contains("last-event-id: 1\r\n"), "{}", heads[1]);
    assert!(
        proxy
            .metric("ssegate_upstream_reconnects_total{route=\"/events\"}")
            .await
            >= 2.0
    );
}

// An app's response head past ssegate's limits (64 KiB, 100 fields) is a failure like an app
// that is down: subscribers get 200 and heartbeats while ssegate drops the connection and asks
// again, and get the events once the app answers within the limits.
#[tokio::test]
async fn a_response_head_over_the_limits_is_retried_and_clients_stay() {
    let (addr, mut app) = scripted_app(|n| match n {
        1 => format!("{STREAM_HEAD}x-big: {}\r\n\r\n", "b".repeat(70 * 1024)).into_bytes(),
        2 => format!("{STREAM_HEAD}{}\r\n", "x-many: 1\r\n".repeat(100)).into_bytes(),
        _ => chunked(&["data: within the limits\n\n"]),
    })
    .await;
    let proxy = Sidecar::route(
        "/events",
        addr,
        "heartbeat = \"50ms\"\nreconnect_initial = \"100ms\"\nreconnect_max = \"200ms\"",
    )
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(client.status, StatusCode::OK, "never an error status");
    assert_eq!(client.next_event().await.data, "within the limits");
    assert!(
        client.text().contains("\n:\n"),
        "heartbeats meanwhile: {:?}",
        client.text()
    );
    saw(&mut app, 2).await;
    assert!(
        proxy
            .metric("ssegate_upstream_failures_total{route=\"/events\"}")
            .await
            >= 2.0
    );
}
