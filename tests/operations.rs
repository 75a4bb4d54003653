//! Running ssegate in production: metrics, health and readiness, drain, reload, limits.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;

/// A config file the test can rewrite, in a directory of its own.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ssegate-ops-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("ssegate.toml");
    std::fs::write(&path, text).expect("write");
    path
}

#[tokio::test]
async fn metrics_count_what_happened() {
    init_logging();
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "buffer_events = 3\non_gap = \"live\"").await;
    let r = "{route=\"/events\"}";
    let mut one = SseClient::connect(&proxy.url("/events"), &[]).await;
    let mut two = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: 1\n\ndata: 2\n\ndata: 3\n\n");
    let first = one.events(3).await;
    two.events(3).await;
    assert_eq!(
        proxy.metric(&format!("ssegate_events_received_total{r}")).await,
        3.0
    );
    proxy
        .metric_reaches(&format!("ssegate_events_delivered_total{r}"), 6.0)
        .await;
    assert_eq!(proxy.metric(&format!("ssegate_sse_subscriptions{r}")).await, 2.0);
    assert_eq!(proxy.metric(&format!("ssegate_streams{r}")).await, 1.0);
    assert_eq!(proxy.metric(&format!("ssegate_upstream_streams{r}")).await, 1.0);
    // One exact resume (after 2; 3 is buffered), then, once 1 and 2 are evicted, one gap.
    let _resumed = SseClient::connect(
        &proxy.url("/events"),
        &[("last-event-id", first[1].id.as_deref().expect("id"))],
    )
    .await;
    for n in 4..=5 {
        app.send(&format!("data: {n}\n\n"));
        one.next_event().await;
        two.next_event().await;
    }
    let _gapped = SseClient::connect(
        &proxy.url("/events"),
        &[("last-event-id", first[0].id.as_deref().expect("id"))],
    )
    .await;
    assert_eq!(proxy.metric(&format!("ssegate_resumes_total{r}")).await, 1.0);
    assert_eq!(proxy.metric(&format!("ssegate_resume_gaps_total{r}")).await, 1.0);
    assert_eq!(proxy.metric(&format!("ssegate_sse_subscriptions{r}")).await, 4.0);
    // An oversize event, and an upstream reconnect.
    app.send(&format!("data: {}\n\n", "x".repeat(2 << 20)));
    app.close_streams();
    app.wait_requests(2).await;
    assert_eq!(
        proxy.metric(&format!("ssegate_events_dropped_total{r}")).await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(&format!("ssegate_upstream_reconnects_total{r}"))
            .await,
        1.0
    );
    drop(one);
    proxy
        .metric_reaches(&format!("ssegate_sse_subscriptions{r}"), 3.0)
        .await;
    // Pass-through requests by status class, with their durations.
    app.answer_with(StatusCode::OK, "text/plain", "plain");
    assert_eq!(get(&proxy.url("/events/plain"), &[]).await.status, StatusCode::OK);
    proxy
        .metric_reaches("ssegate_requests_total{route=\"/events\",class=\"2xx\"}", 1.0)
        .await;
    proxy
        .metric_reaches("ssegate_request_duration_seconds_count{route=\"/events\"}", 1.0)
        .await;
    let text = get(&proxy.admin_url("/metrics"), &[]).await;
    assert!(text
        .header("content-type")
        .is_some_and(|t| t.contains("openmetrics")));
    assert!(metric_value(&text.text(), "ssegate_client_connections") >= 3.0);
    assert!(metric_value(&text.text(), "ssegate_buffer_bytes") > 0.0);
}

#[tokio::test]
async fn streams_endpoint_lists_live_streams_without_credentials() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "").await;
    let _alice = SseClient::connect(&proxy.url("/events"), &[("authorization", "Bearer secret-alice")]).await;
    let _alice2 =
        SseClient::connect(&proxy.url("/events"), &[("authorization", "Bearer secret-alice")]).await;
    app.wait_requests(1).await;
    app.send("data: 1\n\n");
    let reply = get(&proxy.admin_url("/streams"), &[]).await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let streams: serde_json::Value = serde_json::from_str(&reply.text()).expect("json");
    let stream = &streams[0];
    assert_eq!(stream["route"], "/events");
    assert_eq!(stream["clients"], 2);
    assert!(!reply.text().contains("secret-alice"), "{}", reply.text());
    assert_eq!(stream["key"].as_str().map(str::len), Some(16));
    assert!(["streaming", "opening"].contains(&stream["upstream"].as_str().unwrap_or("")));
}

#[tokio::test]
async fn health_and_readiness_and_readiness_flips_on_drain() {
    // A pass-through request the upstream holds open keeps the drain going.
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release = std::sync::Arc::new(std::sync::Mutex::new(Some(release_rx)));
    let upstream = Upstream::start(move |_request| {
        let release = release.lock().expect("lock").take();
        async move {
            if let Some(release) = release {
                let _ = release.await;
            }
            Response::new(full("done"))
        }
    })
    .await;
    let mut proxy = Sidecar::route("/", upstream.addr, "").await;
    assert_eq!(
        get(&proxy.admin_url("/healthz"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(get(&proxy.admin_url("/readyz"), &[]).await.status, StatusCode::OK);
    let slow = tokio::spawn(get_owned(proxy.url("/slow")));
    upstream.wait_connections(1).await;
    proxy.begin_stop();
    eventually("/readyz to turn 503", || async {
        match get(&proxy.admin_url("/readyz"), &[]).await.status {
            StatusCode::SERVICE_UNAVAILABLE => Ok(()),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(
        get(&proxy.admin_url("/healthz"), &[]).await.status,
        StatusCode::OK,
        "alive while draining"
    );
    let _ = release_tx.send(());
    let reply = within("the in-flight request", slow).await.expect("task");
    assert_eq!(
        reply.text(),
        "done",
        "the request in flight finished during the drain"
    );
    proxy.stopped().await;
}

async fn get_owned(url: String) -> Reply {
    get(&url, &[]).await
}

#[tokio::test]
async fn drain_ends_sse_cleanly_and_a_fresh_instance_answers_the_resume_per_on_gap() {
    let app = SseApp::start().await;
    let config = format!(
        "[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\non_gap = \"event\"\n",
        app.addr()
    );
    let old = Sidecar::start(&config).await;
    let mut client = SseClient::connect(&old.url("/events"), &[]).await;
    app.wait_requests(1).await;
    app.send("data: 1\n\n");
    client.next_event().await;
    let last = client.last_event_id();
    old.stop().await;
    assert!(client.until_end().await, "a clean end of the response");
    // The browser reconnects to another instance with its Last-Event-ID: foreign there.
    let fresh = Sidecar::start(&config).await;
    let mut back = SseClient::connect(&fresh.url("/events"), &[("last-event-id", &last)]).await;
    let gap = back.next_event().await;
    assert_eq!(
        (gap.event.as_deref(), gap.data.as_str()),
        (Some("gap"), last.as_str())
    );
}

#[tokio::test]
async fn a_bad_reload_keeps_the_running_config() {
    let app = SseApp::start().await;
    let good = format!(
        "[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    );
    let path = config_file("bad-reload", &good);
    let proxy = Sidecar::start_file(&path).await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    app.wait_requests(1).await;
    std::fs::write(
        &path,
        "[[route]]\npath = \"/events\"\nupstream = \"http://x\"\nheartbeat = \"soon\"\n",
    )
    .expect("write");
    let reply = send(
        Request::post(proxy.admin_url("/reload"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("heartbeat"), "{}", reply.text());
    app.send("data: still\n\n");
    assert_eq!(client.next_event().await.data, "still");
    assert_eq!(proxy.metric("ssegate_reloads_total{result=\"error\"}").await, 1.0);
}

#[tokio::test]
async fn a_reload_keeps_every_client_connected_and_applies_new_settings() {
    let app = SseApp::start().await;
    let config = |heartbeat: &str, extra_route: &str| {
        format!(
            "[[route]]\npath = \"/a\"\nupstream = \"http://{0}\"\nheartbeat = \"{heartbeat}\"\n\
             [[route]]\npath = \"/b\"\nupstream = \"http://{0}\"\nheartbeat = \"off\"\n{extra_route}",
            app.addr()
        )
    };
    let removed = format!("[[route]]\npath = \"/c\"\nupstream = \"http://{}\"\n", app.addr());
    let path = config_file("reload", &config("off", &removed));
    let proxy = Sidecar::start_file(&path).await;
    let mut a = SseClient::connect(&proxy.url("/a"), &[]).await;
    let mut b = SseClient::connect(&proxy.url("/b"), &[]).await;
    let mut c = SseClient::connect(&proxy.url("/c"), &[]).await;
    app.wait_requests(3).await;
    app.send("data: 1\n\n");
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.next_event().await.data, "1");
    }
    // /a gets heartbeats, /c is removed.
    std::fs::write(&path, config("100ms", "")).expect("write");
    proxy.control.reload().expect("valid reload");
    assert!(c.until_end().await, "the removed route's stream ends cleanly");
    a.read_until("data: 1\n\n:\n").await;
    app.send("data: 2\n\n");
    assert_eq!(a.next_event().await.data, "2");
    assert_eq!(b.next_event().await.data, "2", "the other route noticed nothing");
    assert!(!b.text().contains("\n:\n"));
    assert_eq!(app.requests().len(), 3, "no stream was reopened upstream");
    assert_eq!(proxy.metric("ssegate_reloads_total{result=\"ok\"}").await, 1.0);
    // New subscriptions use the new settings.
    let mut late = SseClient::connect(&proxy.url("/a"), &[]).await;
    late.read_until("\n\n:\n").await;
}

#[tokio::test]
async fn over_max_connections_new_connections_get_503_not_a_hang() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "max_connections = 2\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    ))
    .await;
    let _one = SseClient::connect(&proxy.url("/events"), &[]).await;
    let _two = SseClient::connect(&proxy.url("/events"), &[]).await;
    let third = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(third.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(
        proxy.metric("ssegate_client_connections_refused_total").await,
        1.0
    );
}

// An HTTP/2 client kept its connection after the 503 (keep-alive off is HTTP/1 only), holding
// one of the few refusal slots until header_read_timeout: once full, the other clients over the
// limit waited unanswered. Now a GOAWAY follows the answer.
#[tokio::test]
async fn over_max_connections_an_h2_client_gets_503_and_its_connection_closes() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "max_connections = 1\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    ))
    .await;
    let _one = SseClient::connect(&proxy.url("/events"), &[]).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    let mut client = h2_client(stream).await;
    let request = || Request::get(proxy.url("/events")).body(()).expect("request");
    assert_eq!(
        h2_status(&mut client, request(), true).await,
        Ok(StatusCode::SERVICE_UNAVAILABLE)
    );
    eventually("the refused h2 connection to close", || async {
        match h2_status(&mut client.clone(), request(), true).await {
            Err(closed) => Ok(closed),
            Ok(status) => Err(status),
        }
    })
    .await;
}

#[tokio::test]
async fn over_a_routes_max_clients_requests_get_503() {
    let app = SseApp::start().await;
    let proxy = Sidecar::route("/events", app.addr(), "max_clients = 1").await;
    let _one = SseClient::connect(&proxy.url("/events"), &[]).await;
    let two = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(two.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(two.header("retry-after"), Some("1"));
    drop(_one);
    // ssegate sees the client leave a moment after it hangs up.
    eventually("the place to free up", || async {
        match SseClient::connect(&proxy.url("/events"), &[]).await.status {
            StatusCode::OK => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_by_the_header_timeout() {
    let (upstream, _) = (
        Upstream::start(|_r| async { Response::new(full("ok")) }).await,
        (),
    );
    let proxy = Sidecar::start(&format!(
        "header_read_timeout = \"300ms\"\n[[route]]\npath = \"/\"\nupstream = \"http://{}\"\n",
        upstream.addr
    ))
    .await;
    let slow = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut from_proxy, mut to_proxy) = slow.into_split();
    // The slowloris: a byte every 50 ms (3.5 s for all 69), and its head never ends.
    let trickle = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if to_proxy.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let answer = until_closed(&mut from_proxy, "the slow client to be cut off").await;
    assert!(
        !trickle.is_finished(),
        "cut off while its head was still coming, not after"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains(" 200 "),
        "never served: {answer:?}"
    );
    trickle.abort();
    // Other clients are unaffected.
    assert_eq!(get(&proxy.url("/"), &[]).await.text(), "ok");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_keepalive_timeout() {
    let upstream = Upstream::start(|_r| async { Response::new(full("ok")) }).await;
    let proxy = Sidecar::start(&format!(
        "keepalive_timeout = \"300ms\"\n[[route]]\npath = \"/\"\nupstream = \"http://{}\"\n",
        upstream.addr
    ))
    .await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let seen = until_closed(&mut client, "the idle connection to be closed").await;
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
        "answered first"
    );
}

#[tokio::test]
async fn an_upstream_that_never_answers_a_plain_request_is_a_504() {
    let upstream = Upstream::start(|_r| async {
        std::future::pending::<()>().await;
        Response::new(full("never"))
    })
    .await;
    let proxy = Sidecar::route("/", upstream.addr, "upstream_response_timeout = \"200ms\"").await;
    let reply = get(&proxy.url("/stuck"), &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413() {
    let upstream = Upstream::start(|request: Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        Response::new(full(format!("got {body}")))
    })
    .await;
    let proxy = Sidecar::route("/", upstream.addr, "max_request_body = \"1KiB\"").await;
    let small = send(
        Request::post(proxy.url("/up"))
            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 1000])))
            .expect("request"),
    )
    .await;
    assert_eq!(small.text(), "got 1000");
    let declared = send(
        Request::post(proxy.url("/up"))
            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 5000])))
            .expect("request"),
    )
    .await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Without a declared length: counted as it streams.
    let (tx, body) = channel_body();
    for _ in 0..5 {
        let _ = tx.send(http_body::Frame::data(Bytes::from(vec![b'x'; 1000])));
    }
    drop(tx);
    let streamed = send(Request::post(proxy.url("/up")).body(body).expect("request")).await;
    assert_eq!(streamed.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn past_max_streams_a_new_stream_is_refused_and_live_ones_are_joined() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "max_streams = 2\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    ))
    .await;
    let _a = SseClient::connect(&proxy.url("/events?room=a"), &[]).await;
    let _b = SseClient::connect(&proxy.url("/events?room=b"), &[]).await;
    let c = SseClient::connect(&proxy.url("/events?room=c"), &[]).await;
    assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(c.header("retry-after"), Some("1"));
    let a_again = SseClient::connect(&proxy.url("/events?room=a"), &[]).await;
    assert_eq!(
        a_again.status,
        StatusCode::OK,
        "a live stream still takes subscribers"
    );
    assert_eq!(app.requests().len(), 2);
}
