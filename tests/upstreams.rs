//! Apps behind a Unix socket: pass-through and SSE streams over it, the errors it can end in
//! (a 502 and a log line that says why), and what `ssegate check` says of a socket path.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use http::{StatusCode, Version};
use tokio::net::UnixListener;

/// An SSE app (see [`SseApp`]) on a Unix socket at `path`.
fn app_on_socket(path: &Path) -> SseApp {
    SseApp::serve_on(Listen::Unix(UnixListener::bind(path).expect("bind the socket")))
}

#[tokio::test]
async fn an_app_on_a_unix_socket_gets_plain_requests_and_sse_streams() {
    init_logging();
    let dir = temp_dir("unix");
    let socket = dir.join("app.sock");
    let app = app_on_socket(&socket);
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/\"\nupstream = \"unix:{}:/base\"\nsse = \"auto\"\n",
        socket.display()
    ))
    .await;

    app.answer_with(StatusCode::OK, "text/plain", "hello over a socket");
    for n in 1..=2 {
        let reply = get(&proxy.url(&format!("/page?n={n}")), &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "hello over a socket");
    }
    let seen = app.wait_requests(2).await;
    assert_eq!(
        seen[0].uri.path_and_query().map(|pq| pq.as_str()),
        Some("/base/page?n=1")
    );
    assert_eq!(seen[0].version, Version::HTTP_11);
    let host = proxy.addr.to_string();
    assert_eq!(
        seen[0].header("host"),
        Some(host.as_str()),
        "the client's Host, as for http://"
    );
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(app.connections(), 1, "the connection to the socket is pooled");

    app.stream_again();
    let mut first = SseClient::connect(&proxy.url("/events"), &[]).await;
    let mut second = SseClient::connect(&proxy.url("/events"), &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    app.wait_requests(3).await;
    app.send("data: one\n\n");
    app.send("data: two\n\n");
    let (a, b) = (first.events(2).await, second.events(2).await);
    assert_eq!(data(&a), ["one", "two"]);
    assert_eq!(
        a.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        b.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
    assert!(a[0].id.as_deref().is_some_and(|id| id.ends_with("-1")), "{a:?}");
    assert_eq!(app.open_streams(), 1, "two clients, one stream from the socket");
}

#[tokio::test]
async fn a_missing_socket_is_a_502_naming_it_until_the_app_creates_it() {
    let dir = temp_dir("missing");
    let socket = dir.join("app.sock");
    let instance = Instance::start(&format!(
        "[defaults]\nreconnect_initial = \"50ms\"\nreconnect_max = \"100ms\"\n\
         [[route]]\npath = \"/\"\nupstream = \"unix:{}\"\n",
        socket.display()
    ))
    .await;
    instance
        .wait_for_log(&format!("the socket {} does not exist (yet)", socket.display()))
        .await;

    let reply = get(&instance.url("/page"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let line = instance
        .wait_for_log(&format!("cannot connect to the socket {}", socket.display()))
        .await;
    assert!(
        line.contains("status=502") && line.contains("fault=upstream") && line.contains("No such file"),
        "{line}"
    );
    // A subscription meanwhile is held with 200 and heartbeats, and streams once the app is up.
    let mut client = SseClient::connect(&instance.url("/events"), &[]).await;
    assert_eq!(client.status, StatusCode::OK);

    let app = app_on_socket(&socket);
    app.wait_requests(1).await;
    app.send("data: up\n\n");
    assert_eq!(client.next_event().await.data, "up");
    app.answer_with(StatusCode::OK, "text/plain", "up");
    assert_eq!(get(&instance.url("/page"), &[]).await.status, StatusCode::OK);

    // The app dies and leaves its socket file behind: refused, and said so.
    app.upstream.stop();
    let mark = instance.log_mark();
    let reply = get(&instance.url("/page?again"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let line = instance
        .wait_for_log_since(
            mark,
            &format!("cannot connect to the socket {}", socket.display()),
        )
        .await;
    assert!(line.contains("Connection refused"), "{line}");
}

/// `ssegate check --config FILE` on `text`: exit code, stdout, stderr.
fn check(dir: &Path, text: &str) -> (i32, String, String) {
    let path = dir.join("ssegate.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run ssegate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_warns_of_a_missing_socket_and_refuses_a_path_that_is_no_socket() {
    let dir = temp_dir("check-socket");
    // Not there yet: valid, with a warning.
    let (code, stdout, stderr) = check(
        &dir,
        "[[route]]\npath = \"/\"\nupstream = \"unix:app.sock:/api\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let socket = dir.join("app.sock");
    assert!(
        stderr.contains(&format!(
            "warning: [[route]] \"/\": the socket {} does not exist (yet)",
            socket.display()
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("upstream = \"unix:{}:/api\"", socket.display())),
        "{stdout}"
    );

    std::fs::write(dir.join("file.sock"), "").expect("write");
    let (code, _, stderr) = check(&dir, "[[route]]\npath = \"/\"\nupstream = \"unix:file.sock\"\n");
    assert_eq!(code, 2);
    assert!(
        stderr.contains("ssegate.toml:3:")
            && stderr.contains("key `upstream`")
            && stderr.contains("is a regular file, not a Unix socket"),
        "{stderr}"
    );
}
