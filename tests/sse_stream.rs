//! What one SSE client sees: headers, retry first, priming, heartbeats, injected ids.

mod common;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn retry_and_priming_come_first_with_anti_buffering_headers() {
    init_logging();
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "retry = \"1500ms\"").await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(client.status, StatusCode::OK);
    assert_eq!(client.header("content-type"), Some("text/event-stream"));
    assert_eq!(client.header("cache-control"), Some("no-cache"));
    assert_eq!(client.header("x-accel-buffering"), Some("no"));
    assert!(client.header("content-length").is_none());
    assert!(client.header("content-encoding").is_none());
    // Sent at once, before any event: retry, then the id of the newest event (none yet: `-0`).
    client.read_until("\n\n").await;
    let text = client.text();
    assert!(text.starts_with("retry: 1500\nid: "), "{text:?}");
    assert!(text.ends_with("-0\n\n"), "{text:?}");
}

#[tokio::test]
async fn the_apps_retry_is_overridden_unless_retry_is_off() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/set\"\nupstream = \"http://{0}\"\nretry = \"2s\"\n\
         [[route]]\npath = \"/off\"\nupstream = \"http://{0}\"\nretry = \"off\"\n",
        app.addr()
    ))
    .await;
    let mut set = SseClient::connect(&proxy.url("/set"), &[]).await;
    let mut off = SseClient::connect(&proxy.url("/off"), &[]).await;
    app.wait_requests(2).await;
    app.send("retry: 9999\ndata: a\n\n");
    assert_eq!(set.next_event().await.data, "a");
    assert_eq!(off.next_event().await.data, "a");
    assert!(
        set.text().starts_with("retry: 2000\n") && !set.text().contains("9999"),
        "{}",
        set.text()
    );
    assert!(off.text().contains("retry: 9999\n"), "{}", off.text());
    // A client arriving later on the `off` route gets the app's retry first.
    let mut late = SseClient::connect(&proxy.url("/off"), &[]).await;
    late.read_until("\n\n").await;
    assert!(late.text().starts_with("retry: 9999\n"), "{}", late.text());
}

#[tokio::test]
async fn heartbeat_comments_keep_an_idle_stream_alive() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "heartbeat = \"100ms\"").await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    client.read_until("\n\n:\n").await;
    client.read_until("\n\n:\n:\n").await;
    // An event resets the idle clock; heartbeats resume after it.
    app.send("data: x\n\n");
    assert_eq!(client.next_event().await.data, "x");
    let after_event = client.text().len();
    client.read_until("data: x\n\n:\n").await;
    assert!(client.text().len() > after_event);
}

#[tokio::test]
async fn injected_ids_are_monotonic_and_the_apps_ids_are_kept() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: 1\n\ndata: 2\n\nevent: custom\ndata: 3\ndata: 3b\n\nid: app-7\ndata: 4\n\ndata: 5\n\n");
    let events = client.events(5).await;
    assert_eq!(data(&events), ["1", "2", "3\n3b", "4", "5"]);
    let ids: Vec<String> = events
        .iter()
        .map(|e| e.id.clone().expect("every event has an id"))
        .collect();
    let epoch = ids[0].split('-').next().expect("epoch").to_owned();
    assert_eq!(
        ids,
        [
            format!("{epoch}-1"),
            format!("{epoch}-2"),
            format!("{epoch}-3"),
            "app-7".to_owned(),
            format!("{epoch}-5")
        ]
    );
    assert_eq!(events[2].event.as_deref(), Some("custom"));
}

#[tokio::test]
async fn passthrough_ids_are_the_apps() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "ids = \"passthrough\"").await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("id: 10\ndata: a\n\ndata: b\n\nid: 12\ndata: c\n\n");
    let events = client.events(3).await;
    let ids: Vec<Option<String>> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, [Some("10".to_owned()), None, Some("12".to_owned())]);
    assert_eq!(client.last_event_id(), "12");
}

#[tokio::test]
async fn sse_setting_decides_what_is_a_subscription() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/auto\"\nupstream = \"http://{0}\"\n\
         [[route]]\npath = \"/always\"\nupstream = \"http://{0}\"\nsse = \"always\"\n",
        app.addr()
    ))
    .await;
    // auto: a GET without Accept: text/event-stream is passed through (here, as the app's own
    // stream: no retry injected).
    app.answer_with(StatusCode::OK, "text/plain", "plain");
    let reply = get(&proxy.url("/auto"), &[]).await;
    assert_eq!(reply.text(), "plain");
    app.stream_again();
    // always: any GET subscribes.
    let mut client = SseClient::connect(&proxy.url("/always"), &[("accept", "*/*")]).await;
    client.read_until("retry: 3000\n").await;
}

#[tokio::test]
async fn subscriptions_served_by_hyper_behave_the_same() {
    // The first request of a connection is read by ssegate's lean path; an SSE subscription
    // that comes later on a keep-alive connection, or over HTTP/2, is served by hyper.
    use http_body_util::BodyExt;
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/", app.addr(), "").await;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    app.answer_with(StatusCode::OK, "text/plain", "plain");
    let plain = client
        .get(proxy.url("/first").parse().expect("uri"))
        .await
        .expect("plain request");
    let _ = plain.into_body().collect().await;
    app.stream_again();
    let request = http::Request::get(proxy.url("/events"))
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = within("subscription on the same connection", client.request(request))
        .await
        .expect("response");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // The plain request's pooled connection, and the stream's own.
    assert_eq!(app.connections(), 2);
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = http::Request::get(proxy.url("/events"))
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let over_h2 = within("subscription over h2", h2.request(request))
        .await
        .expect("response");
    assert_eq!(over_h2.version(), http::Version::HTTP_2);
    let mut bodies = [response.into_body(), over_h2.into_body()];
    app.wait_requests(2).await;
    app.send("data: both\n\n");
    for body in &mut bodies {
        let text = read_until(body, "data: both\n\n").await;
        assert!(text.starts_with("retry: 3000\n"), "{text:?}");
    }
}
