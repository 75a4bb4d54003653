//! `ssegate demo`'s parts: the naive app alone, and ssegate in front of it with the embedded
//! config.

mod common;

use std::time::Duration;

use common::*;
use ssegate::demo::{self, NaiveApp};
use ssegate::sse::Event;
use ssegate::App;

fn open_streams(stats: &str) -> u64 {
    let rest = stats
        .split("\"open_streams\": ")
        .nth(1)
        .expect("open_streams in stats");
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

#[tokio::test]
async fn the_demo_serves_ids_and_one_app_stream_for_many_clients() {
    let naive = NaiveApp {
        interval: Duration::from_millis(50),
        lifetime: Some(Duration::from_millis(400)),
        ..NaiveApp::default()
    };
    let app_addr = naive
        .spawn("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("app");
    // The app alone: bare data lines, no id, no retry.
    let mut direct = SseClient::connect(&format!("http://{app_addr}/events"), &[]).await;
    let event = direct.next_event().await;
    assert!(
        event.id.is_none() && event.data.starts_with("{\"seq\": "),
        "{event:?}"
    );
    assert!(!direct.text().contains("retry:"));
    drop(direct);

    let config =
        demo::config("127.0.0.1:0".parse().expect("addr"), app_addr, None).expect("embedded config is valid");
    let proxy = App::bind(config).await.expect("bind");
    let addr = proxy.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(proxy.run(async move {
        let _ = stopped.await;
    }));
    // A plain curl-like GET (no Accept header) subscribes on /events.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(SseClient::connect(&format!("http://{addr}/events"), &[("accept", "*/*")]).await);
    }
    // Across the app's own stream ends (every 400 ms), every client sees one gapless sequence.
    let mut sequences = Vec::new();
    for client in &mut clients {
        let events = client.events(15).await;
        assert!(client.text().starts_with("retry: 1000\n"));
        assert!(events.iter().all(|e| e.id.is_some()));
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| {
                e.data["{\"seq\": ".len()..]
                    .split(',')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("seq")
            })
            .collect();
        sequences.push(seqs);
    }
    let stats = get(&format!("http://{app_addr}/stats"), &[]).await.text();
    assert_eq!(open_streams(&stats), 1, "{stats}");
    // Other paths go through the `/` route to the app.
    let page = get(&format!("http://{addr}/"), &[]).await;
    assert!(page.text().contains("a naive SSE app"), "{}", page.text());
    let _ = stop.send(());
    within("ssegate to stop", running).await.expect("run");
    assert!(
        sequences.iter().all(|s| s.windows(2).all(|w| w[1] > w[0])),
        "{sequences:?}"
    );
}

/// The app's event number.
fn seq(event: &Event) -> u64 {
    event.data["{\"seq\": ".len()..]
        .split(',')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a seq in {event:?}"))
}

/// A port the page names, from `const APP_PORT = 1, WIRE_PORT = 2;`.
fn page_port(page: &str, name: &str) -> u16 {
    let rest = page
        .split(&format!("{name} = "))
        .nth(1)
        .unwrap_or_else(|| panic!("{name} in the page"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a port for {name}"))
}

async fn post(url: &str) -> Reply {
    send(
        http::Request::post(url)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request"),
    )
    .await
}

#[tokio::test]
async fn the_demo_page_reaches_ssegate_over_a_wire_it_can_cut_and_resumes_exactly() {
    let demo = demo::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("the demo starts");
    let addr = demo.app.local_addr();
    assert!(
        demo.banner.contains(&format!("http://{addr}/")),
        "{}",
        demo.banner
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(demo.app.run(async move {
        let _ = stopped.await;
    }));

    // The page, through ssegate, names the app's port and the wire's.
    let page = get(&format!("http://{addr}/"), &[]).await;
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let page = page.text();
    assert!(!page.contains("{{"), "a placeholder is left in the page");
    let (app_port, wire_port) = (page_port(&page, "APP_PORT"), page_port(&page, "WIRE_PORT"));

    // Through the wire, a subscription of ssegate's: ids, retry, and the app's CORS header.
    let wire = format!("http://127.0.0.1:{wire_port}/events");
    let mut client = SseClient::connect(&wire, &[("origin", "http://example.test")]).await;
    assert_eq!(
        client
            .headers
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"*"[..])
    );
    let first = client.next_event().await;
    assert!(client.text().starts_with("retry: 1000\n"), "{}", client.text());

    // ssegate's streams, routed to its admin port: one stream, this client on it.
    let streams = get(&format!("http://{addr}/streams"), &[]).await;
    let streams: serde_json::Value = serde_json::from_slice(&streams.body).expect("JSON streams");
    let stream = &streams[0];
    assert_eq!(
        (stream["route"].as_str(), stream["clients"].as_u64()),
        (Some("/events"), Some(1)),
        "{streams}"
    );
    assert!(stream["heartbeats"].is_u64(), "{streams}");
    // The app counts the stream as one asked for through a proxy.
    let stats = get(&format!("http://127.0.0.1:{app_port}/stats"), &[])
        .await
        .text();
    assert!(stats.contains("\"forwarded\": 1, \"direct\": 0"), "{stats}");

    // The cut ends the connection; reconnecting with the last id resumes exactly after it.
    let cut = post(&format!("http://{addr}/demo/cut")).await;
    assert_eq!(cut.status, 202);
    let mut last = first;
    while let Some(event) = within("the cut", client.next_event_or_end()).await {
        last = event;
    }
    let id = last.id.clone().expect("an id");
    let mut again = SseClient::connect(&wire, &[("last-event-id", &id)]).await;
    let next = again.next_event().await;
    assert_eq!(seq(&next), seq(&last) + 1, "resumed after {id}: {next:?}");

    let _ = stop.send(());
    within("ssegate to stop", running).await.expect("run");
}

#[tokio::test]
async fn a_stopped_app_refuses_connections_while_ssegate_keeps_its_clients_and_says_gap() {
    let naive = NaiveApp {
        interval: Duration::from_millis(100),
        lifetime: None,
        ..NaiveApp::default()
    };
    let app_addr = naive
        .spawn("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("app");
    let config = demo::config("127.0.0.1:0".parse().expect("addr"), app_addr, None).expect("config");
    let proxy = App::bind(config).await.expect("bind");
    let (addr, admin) = (
        proxy.local_addr(),
        proxy.admin_addr().expect("the demo has an admin port"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(proxy.run(async move {
        let _ = stopped.await;
    }));
    let mut client = SseClient::connect(&format!("http://{addr}/events"), &[]).await;
    let mut direct = SseClient::connect(&format!("http://{app_addr}/events"), &[]).await;
    let before = client.next_event().await;
    direct.next_event().await;

    let asked = post(&format!("http://{app_addr}/demo/stop")).await;
    assert_eq!(asked.status, 202);
    // The app is gone: its direct stream breaks, new connections are refused.
    while within("the app's stream to end", direct.next_event_or_end())
        .await
        .is_some()
    {}
    assert!(
        tokio::net::TcpStream::connect(app_addr).await.is_err(),
        "the stopped app took a connection"
    );

    // Through ssegate the client stays, gets heartbeats, then a gap event, then events again.
    let mut last = before;
    let gap = loop {
        let event = within("a gap event", client.next_event()).await;
        if event.event.as_deref() == Some("gap") {
            break event;
        }
        last = event;
    };
    assert_eq!(
        Some(gap.data.as_str()),
        last.id.as_deref(),
        "the gap names the last id before the outage"
    );
    let after = client.next_event().await;
    assert!(
        seq(&after) > seq(&last) + 1,
        "events were lost while the app was down: {last:?} {after:?}"
    );
    assert!(
        client.text().contains("\n:\n") || client.text().contains("\n: "),
        "no heartbeat while the app was down"
    );
    let streams = get(&format!("http://{admin}/streams"), &[]).await.text();
    assert!(!streams.contains("\"heartbeats\": 0"), "{streams}");

    let _ = stop.send(());
    within("ssegate to stop", running).await.expect("run");
}
