//! The lean HTTP/1.1 path against hyper: the same requests, sent to one sidecar that serves
//! subscriptions on the lean path and to one that hands every connection to hyper
//! (`lean_http1 = false`), get the same status and the same headers. Only what legitimately
//! differs is left out: the Date's value (both must send one) and the framing, which the lean
//! writer chooses itself (always chunked, `Connection: close`).

mod common;

use common::*;

/// Headers whose presence is compared but not their value.
const VALUE_DIFFERS: &[&str] = &["date"];
/// Framing: the lean writer always chunks and closes; hyper keeps the connection and keeps an
/// upstream's Content-Length.
const FRAMING: &[&str] = &["transfer-encoding", "connection", "content-length"];

/// The status and the comparable headers of a raw response head, sorted.
fn comparable(head: &str) -> (u16, Vec<(String, String)>) {
    let head = head.split("\r\n\r\n").next().unwrap_or_default();
    let mut headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .filter(|(name, _)| !FRAMING.contains(&name.as_str()))
        .map(|(name, value)| {
            let value = if VALUE_DIFFERS.contains(&name.as_str()) {
                String::from("*")
            } else {
                value
            };
            (name, value)
        })
        .collect();
    headers.sort();
    (status_of(head), headers)
}

/// Whether a response head is the lean writer's: it always closes the connection.
fn is_lean(head: &str) -> bool {
    head.to_ascii_lowercase().contains("\r\nconnection: close\r\n")
}

async fn pair(app: &SseApp, answering: &SseApp) -> (Sidecar, Sidecar) {
    let routes = format!(
        "[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\nresponse_headers = {{ \"x-served-by\" = \"ssegate\" }}\n\
         [[route]]\npath = \"/always\"\nupstream = \"http://{}\"\nsse = \"always\"\n\
         [[route]]\npath = \"/private\"\nupstream = \"http://{}\"\n",
        app.addr(),
        app.addr(),
        answering.addr(),
    );
    let lean = Sidecar::start(&routes).await;
    let hyper = Sidecar::start(&format!("lean_http1 = false\n{routes}")).await;
    (lean, hyper)
}

#[tokio::test]
async fn the_lean_path_answers_as_hyper_does() {
    init_logging();
    let app = SseApp::start().await;
    app.set_headers(&[
        ("access-control-allow-origin", "https://app.test"),
        ("x-app", "naive"),
    ]);
    let answering = SseApp::start().await;
    answering.answer_with(http::StatusCode::UNAUTHORIZED, "text/plain", "log in first\n");
    let (lean, hyper) = pair(&app, &answering).await;
    let requests: &[&[u8]] = &[
        b"GET /events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
        b"GET /events/room?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nOrigin: https://app.test\r\nLast-Event-ID: 5\r\n\r\n",
        b"GET /always/feed HTTP/1.1\r\nHost: a\r\n\r\n",
        // A subscription the app answers itself (not a stream): passed on as it is.
        b"GET /private/feed HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
        // No route: ssegate's own 404, on the lean path's side declined before it.
        b"GET /nowhere HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
    ];
    let mut served_lean = 0;
    for raw in requests {
        let shown = String::from_utf8_lossy(raw);
        let from_lean = raw_head(lean.addr, raw).await;
        let from_hyper = raw_head(hyper.addr, raw).await;
        assert!(!is_lean(&from_hyper), "hyper served {shown}:\n{from_hyper}");
        served_lean += usize::from(is_lean(&from_lean));
        let (lean_status, lean_headers) = comparable(&from_lean);
        let (hyper_status, hyper_headers) = comparable(&from_hyper);
        assert_eq!(
            lean_status, hyper_status,
            "{shown}\nlean:\n{from_lean}\nhyper:\n{from_hyper}"
        );
        assert_eq!(
            lean_headers, hyper_headers,
            "{shown}\nlean:\n{from_lean}\nhyper:\n{from_hyper}"
        );
        assert!(
            lean_headers.iter().any(|(name, _)| name == "date"),
            "{shown}: a Date\n{from_lean}"
        );
    }
    // The subscriptions went the lean way (the 404 did not: no route, no subscription).
    assert_eq!(served_lean, 4, "requests the lean path served");
}

#[tokio::test]
async fn with_lean_http1_off_a_subscription_is_served_by_hyper() {
    let app = SseApp::start().await;
    let proxy = Sidecar::start(&format!(
        "lean_http1 = false\n[[route]]\npath = \"/events\"\nupstream = \"http://{}\"\n",
        app.addr()
    ))
    .await;
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(client.status, http::StatusCode::OK);
    within("the app's stream", async {
        while app.send("data: hello\n\n") == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let event = client.next_event().await;
    assert_eq!(event.data, "hello");
    let head = raw_head(
        proxy.addr,
        b"GET /events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(!is_lean(&head), "{head}");
}
