//! `ssegate demo`'s parts: the naive app alone, and ssegate in front of it with the embedded
//! config.

mod common;

use std::time::Duration;

use common::*;
use ssegate::demo::{self, NaiveApp};
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
        payload: 0,
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
        demo::config("127.0.0.1:0".parse().expect("addr"), app_addr).expect("embedded config is valid");
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
        assert!(client.text().starts_with("retry: 3000\n"));
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
    // The page for the browser comes through the `/` route.
    let page = get(&format!("http://{addr}/"), &[]).await;
    assert!(page.text().contains("new EventSource(\"/events\")"));
    let _ = stop.send(());
    within("ssegate to stop", running).await.expect("run");
    assert!(
        sequences.iter().all(|s| s.windows(2).all(|w| w[1] > w[0])),
        "{sequences:?}"
    );
}
