//! Resume by Last-Event-ID: exactly the missed events, in order, no duplicates; gaps handled
//! per `on_gap`.

mod common;

use common::*;

/// A proxy and app with `extra` route settings, one client connected and `n` events sent.
async fn stream_with_events(extra: &str, n: usize) -> (SseApp, Sidecar, SseClient) {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), extra).await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    for i in 1..=n {
        app.send(&format!("data: {i}\n\n"));
    }
    client.events(n).await;
    (app, proxy, client)
}

fn id_of(client: &SseClient, seq: u64) -> String {
    let last = client.last_event_id();
    let epoch = last.rsplit_once('-').expect("injected id").0;
    format!("{epoch}-{seq}")
}

#[tokio::test]
async fn resume_by_header_and_by_query_gets_exactly_the_missed_events() {
    init_logging();
    let (app, proxy, client) = stream_with_events("", 5).await;
    let after_two = id_of(&client, 2);
    let mut by_header = SseClient::connect(&proxy.url("/events"), &[("last-event-id", &after_two)]).await;
    assert_eq!(data(&by_header.events(3).await), ["3", "4", "5"]);
    let mut by_query = SseClient::connect(&proxy.url(&format!("/events?lastEventId={after_two}")), &[]).await;
    assert_eq!(data(&by_query.events(3).await), ["3", "4", "5"]);
    // Then live, without a duplicate.
    app.send("data: 6\n\n");
    assert_eq!(by_header.next_event().await.data, "6");
    assert_eq!(by_query.next_event().await.data, "6");
    // A resuming client is not primed past what it was replayed.
    assert!(
        !by_header.text().starts_with("retry: 3000\nid:"),
        "{}",
        by_header.text()
    );
    // The header wins over the query.
    let mut both = SseClient::connect(
        &proxy.url(&format!("/events?lastEventId={}", id_of(&client, 1))),
        &[("last-event-id", &id_of(&client, 4))],
    )
    .await;
    assert_eq!(data(&both.events(2).await), ["5", "6"]);
    assert_eq!(app.requests().len(), 1);
}

#[tokio::test]
async fn a_client_that_leaves_before_its_first_event_resumes_from_its_priming_id() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let mut keeper = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: 1\n\n");
    keeper.next_event().await;
    let mut early = SseClient::connect(&proxy.url("/events"), &[]).await;
    early.read_until("\n\n").await;
    let primed = early.last_event_id();
    assert_eq!(primed, keeper.last_event_id(), "primed with the newest id");
    drop(early);
    app.send("data: 2\n\ndata: 3\n\n");
    keeper.events(2).await;
    let mut back = SseClient::connect(&proxy.url("/events"), &[("last-event-id", &primed)]).await;
    assert_eq!(data(&back.events(2).await), ["2", "3"]);
}

#[tokio::test]
async fn on_gap_replay_sends_the_whole_buffer() {
    let (_app, proxy, client) = stream_with_events("buffer_events = 3\non_gap = \"replay\"", 6).await;
    // Event 2 was evicted (the buffer holds 4, 5, 6): resuming after 1 is a gap.
    let mut late = SseClient::connect(&proxy.url("/events"), &[("last-event-id", &id_of(&client, 1))]).await;
    assert_eq!(data(&late.events(3).await), ["4", "5", "6"]);
    // Resuming after 3 is exact even though 3 itself is gone: everything after it is here.
    let mut exact = SseClient::connect(&proxy.url("/events"), &[("last-event-id", &id_of(&client, 3))]).await;
    assert_eq!(data(&exact.events(3).await), ["4", "5", "6"]);
}

#[tokio::test]
async fn on_gap_live_sends_only_new_events() {
    let (app, proxy, client) = stream_with_events("buffer_events = 3\non_gap = \"live\"", 6).await;
    let mut late = SseClient::connect(&proxy.url("/events"), &[("last-event-id", &id_of(&client, 1))]).await;
    late.read_until("\n\n").await;
    app.send("data: 7\n\n");
    assert_eq!(late.next_event().await.data, "7");
}

#[tokio::test]
async fn on_gap_event_announces_the_gap_then_goes_live() {
    let (app, proxy, client) = stream_with_events("buffer_events = 3\non_gap = \"event\"", 6).await;
    let requested = id_of(&client, 1);
    let mut late = SseClient::connect(&proxy.url("/events"), &[("last-event-id", &requested)]).await;
    let gap = late.next_event().await;
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(gap.data, requested);
    assert_eq!(
        gap.id.as_deref(),
        Some(id_of(&client, 6).as_str()),
        "a reconnect after the gap resumes from now"
    );
    app.send("data: 7\n\n");
    assert_eq!(late.next_event().await.data, "7");
}

#[tokio::test]
async fn an_id_from_another_epoch_or_junk_is_a_gap() {
    let (app, proxy, _client) = stream_with_events("on_gap = \"event\"", 3).await;
    for requested in [
        "zzzzzzzz-2".to_owned(),
        "garbage".to_owned(),
        "\u{1F600}".repeat(2500),
    ] {
        let mut client = SseClient::connect(&proxy.url("/events"), &[("last-event-id", &requested)]).await;
        let gap = client.next_event().await;
        assert_eq!(gap.event.as_deref(), Some("gap"));
        assert!(
            requested.starts_with(&gap.data) && gap.data.len() <= 1024,
            "echo bounded: {} bytes",
            gap.data.len()
        );
    }
    // The stream carries on for everyone.
    let mut fresh = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.send("data: 4\n\n");
    assert_eq!(fresh.next_event().await.data, "4");
}

#[tokio::test]
async fn no_event_is_lost_between_replay_and_live() {
    // Clients resume while the app sends as fast as it can; each must see a gapless sequence.
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "buffer_events = 100000").await;
    let mut first = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: 0\n\n");
    let start_id = first.next_event().await.id.expect("id");
    let app = std::sync::Arc::new(app);
    let writer = app.clone();
    let sender = tokio::spawn(async move {
        for i in 1..=3000 {
            writer.send(&format!("data: {i}\n\n"));
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut resumers = Vec::new();
    for _ in 0..20 {
        resumers.push(SseClient::connect(&proxy.url("/events"), &[("last-event-id", &start_id)]).await);
        tokio::task::yield_now().await;
    }
    sender.await.expect("sender");
    for client in resumers.iter_mut().chain(std::iter::once(&mut first)) {
        let got: Vec<u32> = client
            .events(3000)
            .await
            .iter()
            .map(|e| e.data.parse().expect("number"))
            .collect();
        assert_eq!(
            got,
            (1..=3000).collect::<Vec<u32>>(),
            "gapless, in order, no duplicates"
        );
    }
}

#[tokio::test]
async fn the_global_buffer_cap_evicts_the_oldest_events_across_streams() {
    let (app_a, app_b) = (SseApp::start().await, SseApp::start().await);
    let proxy = Sidecar::start(&format!(
        "buffer_total_bytes = \"2KiB\"\n[defaults]\non_gap = \"event\"\n\
         [[route]]\npath = \"/a\"\nupstream = \"http://{}\"\n[[route]]\npath = \"/b\"\nupstream = \"http://{}\"\n",
        app_a.addr(),
        app_b.addr()
    ))
    .await;
    let pad = "x".repeat(100);
    let mut older = SseClient::connect(&proxy.url("/a"), &[]).await;
    app_a.wait_requests(1).await;
    for i in 1..=10 {
        app_a.send(&format!("data: a{i} {pad}\n\n"));
    }
    older.events(10).await;
    let mut newer = SseClient::connect(&proxy.url("/b"), &[]).await;
    app_b.wait_requests(1).await;
    for i in 1..=10 {
        app_b.send(&format!("data: b{i} {pad}\n\n"));
    }
    newer.events(10).await;
    // About 2.4 KiB in all, over a 2 KiB cap: the oldest events, stream a's first, were evicted.
    let mut resumed_older =
        SseClient::connect(&proxy.url("/a"), &[("last-event-id", &id_of(&older, 1))]).await;
    assert_eq!(resumed_older.next_event().await.event.as_deref(), Some("gap"));
    let mut resumed_newer =
        SseClient::connect(&proxy.url("/b"), &[("last-event-id", &id_of(&newer, 1))]).await;
    assert!(
        resumed_newer.next_event().await.data.starts_with("b2 "),
        "stream b's events are all there"
    );
}
