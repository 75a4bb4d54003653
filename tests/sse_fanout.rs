//! One upstream connection per stream key, whatever the number of clients; never one user's
//! stream served to another.

mod common;

use common::*;

#[tokio::test]
async fn two_hundred_clients_share_one_upstream_connection() {
    init_logging();
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(SseClient::connect(&proxy.url("/events?room=1"), &[]).await);
    }
    app.wait_requests(1).await;
    for n in 1..=3 {
        assert_eq!(
            app.send(&format!("data: {n}\n\n")),
            1,
            "the app has exactly one stream"
        );
    }
    let mut first_ids = None;
    for client in &mut clients {
        let events = client.events(3).await;
        assert_eq!(data(&events), ["1", "2", "3"]);
        let ids: Vec<_> = events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(
            first_ids.get_or_insert_with(|| ids.clone()),
            &ids,
            "every client sees the same ids"
        );
    }
    assert_eq!(app.connections(), 1);
    assert_eq!(app.requests().len(), 1);
}

#[tokio::test]
async fn a_burst_to_many_clients_arrives_whole_and_in_order_at_every_client() {
    // 300 clients: the stream holds events that come within 1.5 ms of its last wake-up and
    // writes them together. Nothing may be lost, repeated or reordered by that.
    init_logging();
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(SseClient::connect(&proxy.url("/events"), &[]).await);
    }
    app.wait_requests(1).await;
    let sent: Vec<String> = (1..=500).map(|n| n.to_string()).collect();
    for n in &sent {
        app.send(&format!("data: {n}\n\n"));
    }
    for client in &mut clients {
        let events = client.events(sent.len()).await;
        assert_eq!(data(&events), sent);
        let seqs: Vec<u64> = events
            .iter()
            .filter_map(|e| e.id.as_deref()?.rsplit('-').next().and_then(|s| s.parse().ok()))
            .collect();
        assert_eq!(seqs.len(), sent.len(), "every event has an id");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive ids");
    }
}

#[tokio::test]
async fn a_busy_stream_holds_events_for_its_window_then_writes_them_together() {
    // coalesce = "10s" with 300 clients: up to 3 s, and 750 ms for the first window after a
    // quiet spell.
    init_logging();
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "coalesce = \"10s\"").await;
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(SseClient::connect(&proxy.url("/events"), &[]).await);
    }
    app.wait_requests(1).await;
    app.send("data: first\n\n");
    let woke = std::time::Instant::now();
    for client in &mut clients {
        assert_eq!(
            data(&client.events(1).await),
            ["first"],
            "a quiet stream: at once"
        );
    }
    app.send("data: second\n\n");
    app.send("data: third\n\n");
    for client in &mut clients {
        assert_eq!(data(&client.events(2).await), ["second", "third"]);
    }
    let held = woke.elapsed();
    assert!(
        held >= std::time::Duration::from_millis(700),
        "held until the window's end: {held:?}"
    );
}

#[tokio::test]
async fn different_credentials_get_separate_streams() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let mut alice = SseClient::connect(&proxy.url("/events"), &[("authorization", "Bearer alice")]).await;
    let mut bob = SseClient::connect(&proxy.url("/events"), &[("authorization", "Bearer bob")]).await;
    let mut alice2 = SseClient::connect(&proxy.url("/events"), &[("authorization", "Bearer alice")]).await;
    let seen = app.wait_requests(2).await;
    assert_eq!(app.send("data: private\n\n"), 2);
    let mut tokens: Vec<_> = seen
        .iter()
        .map(|s| s.header("authorization").unwrap_or("").to_owned())
        .collect();
    tokens.sort();
    assert_eq!(
        tokens,
        ["Bearer alice", "Bearer bob"],
        "each stream carries its opener's credentials"
    );
    for client in [&mut alice, &mut bob, &mut alice2] {
        assert_eq!(client.next_event().await.data, "private");
    }
    assert_eq!(app.connections(), 2);
    // Distinct cookies separate too; an explicit stream_key widens sharing.
    let proxy = Sidecar::route("/events", app.addr(), "stream_key = [\"path\"]").await;
    let _carol = SseClient::connect(&proxy.url("/events"), &[("cookie", "s=carol")]).await;
    let _dave = SseClient::connect(&proxy.url("/events"), &[("cookie", "s=dave")]).await;
    app.wait_requests(3).await;
    assert_eq!(app.requests().len(), 3, "one more stream for both");
}

#[tokio::test]
async fn the_query_separates_streams_but_last_event_id_does_not() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let mut first = SseClient::connect(&proxy.url("/events?room=1"), &[]).await;
    let _other_room = SseClient::connect(&proxy.url("/events?room=2"), &[]).await;
    app.wait_requests(2).await;
    first.read_until("\n\n").await;
    let primed = first.last_event_id();
    let _resumer = SseClient::connect(&proxy.url(&format!("/events?lastEventId={primed}&room=1")), &[]).await;
    let seen = app.requests();
    assert_eq!(seen.len(), 2, "the resuming client joined the room=1 stream");
    assert!(
        seen.iter().all(|s| !s.uri.to_string().contains("lastEventId")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|s| s.header("last-event-id").is_none()));
}

#[tokio::test]
async fn per_client_mode_opens_one_upstream_request_per_client_and_forwards_last_event_id() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "mode = \"per-client\"").await;
    let mut one = SseClient::connect(&proxy.url("/events"), &[("last-event-id", "41")]).await;
    let mut two = SseClient::connect(&proxy.url("/events"), &[]).await;
    let seen = app.wait_requests(2).await;
    let mut forwarded: Vec<_> = seen
        .iter()
        .map(|s| s.header("last-event-id").map(str::to_owned))
        .collect();
    forwarded.sort();
    assert_eq!(forwarded, [None, Some("41".to_owned())]);
    app.send("id: 42\ndata: x\n\n");
    for client in [&mut one, &mut two] {
        let event = client.next_event().await;
        assert_eq!((event.id.as_deref(), event.data.as_str()), (Some("42"), "x"));
        assert!(client.text().starts_with("retry: 3000\n"), "{}", client.text());
        assert!(
            !client.text().contains("id: \n") && !client.text().starts_with("retry: 3000\nid:"),
            "no priming in per-client mode"
        );
    }
    // The app's stream for a client ends when that client leaves.
    drop(one);
    app.wait_open_streams(1).await;
}

#[tokio::test]
async fn linger_keeps_the_stream_for_a_quick_return_then_tears_it_down() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "linger = \"1s\"").await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: 1\n\n");
    let first = client.next_event().await;
    drop(client);
    app.send("data: 2\n\n");
    // Back within linger: the same stream, resumed from the buffer; nothing reopened upstream.
    let mut back = SseClient::connect(
        &proxy.url("/events"),
        &[("last-event-id", first.id.as_deref().expect("id"))],
    )
    .await;
    assert_eq!(back.next_event().await.data, "2");
    assert_eq!(app.requests().len(), 1);
    drop(back);
    // Nobody comes back: after linger the upstream request is closed.
    app.wait_open_streams(0).await;
    let _fresh = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(2).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_while_another_keeps_up() {
    use tokio::io::AsyncWriteExt;
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "client_write_timeout = \"500ms\"\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\nbuffer_events = 50\n",
        app.addr()
    ))
    .await;
    // The slow client: a tiny receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut slow = socket.connect(proxy.addr).await.expect("connect");
    slow.write_all(b"GET /events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .await
        .expect("write");
    let mut fast = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    let payload = "x".repeat(4000);
    // 8 MB through the stream: far more than the slow client's socket buffers can hold.
    for n in 0..2000 {
        app.send(&format!("data: {n} {payload}\n\n"));
        let event = fast.next_event().await;
        assert!(
            event.data.starts_with(&format!("{n} ")),
            "the fast client keeps up"
        );
    }
    // The slow client's connection is closed by ssegate: reading it ends (EOF or reset).
    until_closed(&mut slow, "the slow client to be disconnected").await;
    app.send("data: still\n\n");
    assert_eq!(fast.next_event().await.data, "still");
}
