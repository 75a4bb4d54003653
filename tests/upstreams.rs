//! Apps behind a Unix socket and behind TLS: pass-through and SSE streams over each, the
//! errors each can end in (a 502 and a log line that says why), and what `ssegate check` says
//! of a socket path or a CA file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use http::{StatusCode, Version};
use tokio::net::{TcpListener, UnixListener};

/// ALPN of an app that speaks both.
const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// An SSE app (see [`SseApp`]) on a Unix socket at `path`.
fn app_on_socket(path: &Path) -> SseApp {
    SseApp::serve_on(Listen::Unix(UnixListener::bind(path).expect("bind the socket")))
}

/// An SSE app over TLS with `cert`, offering `alpn`.
async fn app_over_tls(cert: &TestCert, alpn: &[&[u8]]) -> SseApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    SseApp::serve_on(Listen::Tls(listener, tls_acceptor(cert, alpn)))
}

/// Writes `cert`'s PEM as a CA file in `dir`.
fn ca_file(dir: &Path, name: &str, cert: &TestCert) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, &cert.cert_pem).expect("write CA");
    path
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

#[tokio::test]
async fn an_https_app_trusted_through_upstream_ca_speaks_h2_and_streams_over_http1() {
    init_logging();
    let dir = temp_dir("https");
    let cert = TestCert::for_names(&["app.internal"]);
    let app = app_over_tls(&cert, H2_AND_H1).await;
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/\"\nupstream = \"https://{}\"\nupstream_ca = \"{}\"\nupstream_server_name = \"app.internal\"\n",
        app.addr(),
        ca_file(&dir, "ca.pem", &cert).display()
    ))
    .await;

    app.answer_with(StatusCode::OK, "text/plain", "hello over h2");
    let (a, b, c) = (proxy.url("/a"), proxy.url("/b"), proxy.url("/c"));
    let (a, b, c) = tokio::join!(get(&a, &[]), get(&b, &[]), get(&c, &[]));
    for reply in [a, b, c] {
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "hello over h2")
        );
    }
    let seen = app.wait_requests(3).await;
    let host = proxy.addr.to_string();
    for request in &seen {
        assert_eq!(request.version, Version::HTTP_2, "ALPN chose h2");
        assert_eq!(
            request.uri.authority().map(|a| a.as_str()),
            Some(host.as_str()),
            ":authority is the client's Host, as the Host header is over HTTP/1.1"
        );
        assert_eq!(request.header("host"), Some(host.as_str()), "the same");
        assert_eq!(request.uri.scheme_str(), Some("https"));
    }
    assert_eq!(
        app.connections(),
        1,
        "requests at once share one HTTP/2 connection"
    );

    // Whatever Host a client names: a client making up Hosts opens no connection to the app.
    for n in 0..20 {
        let tenant = format!("tenant-{n}.example");
        let reply = get(&proxy.url("/t"), &[("host", tenant.as_str())]).await;
        assert_eq!(reply.status, StatusCode::OK);
        let seen = app.wait_requests(4 + n).await;
        assert_eq!(
            seen[3 + n].uri.authority().map(|a| a.as_str()),
            Some(tenant.as_str())
        );
    }
    assert_eq!(app.connections(), 1);

    // SSE streams go on HTTP/1.1 connections of their own.
    app.stream_again();
    let mut client = SseClient::connect(&proxy.url("/events"), &[]).await;
    let stream = app.wait_requests(24).await.pop().expect("the stream's request");
    assert_eq!(stream.version, Version::HTTP_11);
    assert_eq!(stream.header("host"), Some(host.as_str()));
    app.send("data: secret\n\n");
    assert_eq!(client.next_event().await.data, "secret");
    assert_eq!(app.connections(), 2);
}

#[tokio::test]
async fn after_an_https_app_restarts_its_clients_requests_make_one_connection() {
    let dir = temp_dir("restart");
    let cert = TestCert::for_names(&["localhost"]);
    let app = app_over_tls(&cert, H2_AND_H1).await;
    let addr = app.addr();
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/\"\nupstream = \"https://localhost:{}\"\nupstream_ca = \"{}\"\n",
        addr.port(),
        ca_file(&dir, "ca.pem", &cert).display()
    ))
    .await;
    app.answer_with(StatusCode::OK, "text/plain", "first life");
    assert_eq!(get(&proxy.url("/"), &[]).await.status, StatusCode::OK);

    app.upstream.stop();
    assert_eq!(get(&proxy.url("/"), &[]).await.status, StatusCode::BAD_GATEWAY);
    let listener = TcpListener::bind(addr).await.expect("the same port again");
    let again = SseApp::serve_on(Listen::Tls(listener, tls_acceptor(&cert, H2_AND_H1)));
    again.answer_with(StatusCode::OK, "text/plain", "second life");
    let mut at_once = tokio::task::JoinSet::new();
    for n in 0..8 {
        let url = proxy.url(&format!("/{n}"));
        at_once.spawn(async move { get(&url, &[]).await });
    }
    while let Some(reply) = at_once.join_next().await {
        let reply = reply.expect("request task");
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "second life")
        );
    }
    assert!(again.requests().iter().all(|r| r.version == Version::HTTP_2));
    assert_eq!(
        again.connections(),
        1,
        "eight requests at once waited for one connection"
    );
}

#[tokio::test]
async fn request_bodies_stream_over_http2_and_past_the_limit_get_413() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::BodyExt;

    let dir = temp_dir("bodies");
    let cert = TestCert::for_names(&["localhost"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = Upstream::serve_on(
        Listen::Tls(listener, tls_acceptor(&cert, H2_AND_H1)),
        |request: Request<hyper::body::Incoming>| async move {
            let version = request.version();
            let body = request.into_body().collect().await.map(|b| b.to_bytes().len());
            Response::new(full(format!("{version:?} got {body:?}")))
        },
    );
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/\"\nupstream = \"https://localhost:{}\"\nupstream_ca = \"{}\"\nmax_request_body = \"2MiB\"\n",
        app.addr.port(),
        ca_file(&dir, "ca.pem", &cert).display()
    ))
    .await;
    // Larger than HTTP/2's initial flow-control windows (64 KiB), both ways.
    let big = send(
        Request::post(proxy.url("/up"))
            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 1 << 20])))
            .expect("request"),
    )
    .await;
    assert_eq!(big.text(), "HTTP/2.0 got Ok(1048576)");
    // Without a declared length: counted as it streams, and the client's fault past the limit.
    let (tx, body) = channel_body();
    for _ in 0..3 {
        let _ = tx.send(http_body::Frame::data(Bytes::from(vec![b'x'; 1 << 20])));
    }
    drop(tx);
    let streamed = send(Request::post(proxy.url("/up")).body(body).expect("request")).await;
    assert_eq!(streamed.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn an_https_app_that_offers_only_http1_gets_http1() {
    let dir = temp_dir("https-h1");
    // The URL's host is an IP address: the certificate is checked for it.
    let cert = TestCert::for_names(&["127.0.0.1"]);
    let app = app_over_tls(&cert, &[b"http/1.1"]).await;
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/\"\nupstream = \"https://{}/api\"\nupstream_ca = \"{}\"\n",
        app.addr(),
        ca_file(&dir, "ca.pem", &cert).display()
    ))
    .await;
    app.answer_with(StatusCode::CREATED, "text/plain", "made");
    let reply = get(&proxy.url("/x?y=1"), &[]).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::CREATED, "made")
    );
    let seen = app.wait_requests(1).await;
    assert_eq!(seen[0].version, Version::HTTP_11);
    assert_eq!(seen[0].uri.to_string(), "/api/x?y=1");
    // The connection that offered h2 and got http/1.1, then the pooled HTTP/1.1 one, which every
    // later request reuses whatever its Host.
    assert_eq!(app.connections(), 2);
    for n in 0..10 {
        let tenant = format!("tenant-{n}.example");
        assert_eq!(
            get(&proxy.url("/x"), &[("host", tenant.as_str())]).await.status,
            StatusCode::CREATED
        );
        assert_eq!(
            app.wait_requests(2 + n).await[1 + n].header("host"),
            Some(tenant.as_str())
        );
    }
    assert_eq!(app.connections(), 2);
}

/// A CA certificate for `names`, as an app has that serves the certificate `openssl req -x509`
/// makes by default (basicConstraints CA:TRUE).
fn authority_as_its_own_leaf(names: &[&str]) -> TestCert {
    let key = rcgen::KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("certificate");
    TestCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

#[tokio::test]
async fn each_failed_certificate_check_is_a_502_whose_log_line_names_it() {
    let dir = temp_dir("certs");
    let good = TestCert::named("ssegate test app", &["localhost"]);
    // Another authority; and one of the same name with another key (a CA made again).
    let other = TestCert::for_names(&["localhost"]);
    let same_name = TestCert::named("ssegate test app", &["localhost"]);
    let expired = TestCert::expired();
    let authority = authority_as_its_own_leaf(&["localhost"]);
    let app = app_over_tls(&good, H2_AND_H1).await;
    let old = app_over_tls(&expired, H2_AND_H1).await;
    let ca_app = app_over_tls(&authority, H2_AND_H1).await;
    let plain = SseApp::start().await;
    let (good_ca, other_ca, same_name_ca, expired_ca, authority_ca) = (
        ca_file(&dir, "good.pem", &good),
        ca_file(&dir, "other.pem", &other),
        ca_file(&dir, "same-name.pem", &same_name),
        ca_file(&dir, "expired.pem", &expired),
        ca_file(&dir, "authority.pem", &authority),
    );
    let route = |path: &str, addr: std::net::SocketAddr, ca: &Path, name: &str| {
        format!(
            "[[route]]\npath = \"{path}\"\nupstream = \"https://{addr}\"\nupstream_ca = \"{}\"\nupstream_server_name = \"{name}\"\n",
            ca.display()
        )
    };
    let instance = Instance::start(
        &[
            route("/untrusted", app.addr(), &other_ca, "localhost"),
            route("/another-key", app.addr(), &same_name_ca, "localhost"),
            route("/wrong-name", app.addr(), &good_ca, "other.test"),
            route("/expired", old.addr(), &expired_ca, "localhost"),
            route("/not-tls", plain.addr(), &good_ca, "localhost"),
            route("/ca-as-leaf", ca_app.addr(), &authority_ca, "localhost"),
            route("/good", app.addr(), &good_ca, "localhost"),
        ]
        .concat(),
    )
    .await;
    app.answer_with(StatusCode::OK, "text/plain", "ok");
    assert_eq!(get(&instance.url("/good"), &[]).await.status, StatusCode::OK);

    for (path, says) in [
        ("/untrusted", "not signed by a trusted authority"),
        (
            "/another-key",
            "the signature on the app's certificate does not verify",
        ),
        ("/wrong-name", "not valid for the name checked"),
        ("/expired", "has expired"),
        ("/not-tls", "does not answer in TLS"),
        ("/ca-as-leaf", "presents a CA certificate as its own"),
    ] {
        let mark = instance.log_mark();
        let reply = get(&instance.url(path), &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}");
        let line = instance
            .wait_for_log_since(mark, "upstream TLS handshake failed")
            .await;
        assert!(
            line.contains(says) && line.contains("status=502") && line.contains(&format!("route=\"{path}\"")),
            "{path}: {line}"
        );
    }
    let line = instance.wait_for_log("not valid for the name checked").await;
    assert!(
        line.contains("other.test"),
        "the name checked is in the line: {line}"
    );
    assert_eq!(app.requests().len(), 1, "only /good reached the app");
}

#[tokio::test]
async fn an_app_that_stalls_the_tls_handshake_is_a_504_within_the_connect_timeout() {
    let dir = temp_dir("stall");
    // Accepts and never answers: the TCP connect succeeds, the handshake never ends.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let cert = TestCert::for_names(&["localhost"]);
    let proxy = Sidecar::start(&format!(
        "[[route]]\npath = \"/\"\nupstream = \"https://localhost:{}\"\nupstream_ca = \"{}\"\nupstream_connect_timeout = \"300ms\"\n",
        addr.port(),
        ca_file(&dir, "ca.pem", &cert).display()
    ))
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        get(&proxy.url("/"), &[]).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(300) && took < std::time::Duration::from_secs(3),
        "{took:?}"
    );
    held.abort();
}

#[tokio::test]
async fn without_upstream_ca_the_systems_roots_are_trusted() {
    let dir = temp_dir("system");
    let cert = TestCert::for_names(&["localhost"]);
    let app = app_over_tls(&cert, H2_AND_H1).await;
    app.answer_with(StatusCode::OK, "text/plain", "trusted by the system");
    let toml = format!(
        "[[route]]\npath = \"/\"\nupstream = \"https://localhost:{}\"\n",
        app.addr().port()
    );
    // OpenSSL's variable, which the system's roots are read by: here it names the app's CA.
    let bundle = ca_file(&dir, "bundle.pem", &cert);
    let trusting =
        Instance::start_with_env(&toml, &[("SSL_CERT_FILE", bundle.to_str().expect("utf-8"))]).await;
    let reply = get(&trusting.url("/"), &[]).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "trusted by the system")
    );

    // The distribution's roots do not hold a certificate made by the test.
    let others =
        Instance::start_with_env(&toml, &[("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")]).await;
    assert_eq!(get(&others.url("/"), &[]).await.status, StatusCode::BAD_GATEWAY);
    others.wait_for_log("not signed by a trusted authority").await;
}

#[tokio::test]
async fn a_changed_ca_file_takes_effect_on_reload() {
    let dir = temp_dir("reload");
    let cert = TestCert::for_names(&["localhost"]);
    let app = app_over_tls(&cert, H2_AND_H1).await;
    app.answer_with(StatusCode::OK, "text/plain", "ok");
    let ca = ca_file(&dir, "ca.pem", &TestCert::for_names(&["localhost"]));
    let config = dir.join("ssegate.toml");
    std::fs::write(
        &config,
        "[[route]]\npath = \"/\"\nupstream = \"https://localhost:PORT\"\nupstream_ca = \"ca.pem\"\n"
            .replace("PORT", &app.addr().port().to_string()),
    )
    .expect("write config");
    let proxy = Sidecar::start_file(&config).await;
    assert_eq!(get(&proxy.url("/"), &[]).await.status, StatusCode::BAD_GATEWAY);

    // The CA file (relative to the config file) is read again on reload.
    std::fs::write(&ca, &cert.cert_pem).expect("write CA");
    proxy.control.reload().expect("reload");
    assert_eq!(get(&proxy.url("/"), &[]).await.status, StatusCode::OK);
    // A CA file that is no longer PEM refuses the reload; the running config stays.
    std::fs::write(&ca, "garbage").expect("write CA");
    let refused = proxy.control.reload().expect_err("not PEM");
    assert!(refused.to_string().contains("upstream_ca"), "{refused}");
    assert_eq!(get(&proxy.url("/"), &[]).await.status, StatusCode::OK);
}

/// `ssegate check --config FILE` on `text`: exit code, stdout, stderr.
fn check(dir: &Path, text: &str) -> (i32, String, String) {
    let path = dir.join("ssegate.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .args(["check", "--config"])
        .arg(&path)
        .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
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

#[test]
fn check_refuses_a_ca_file_that_is_no_pem_and_a_server_name_that_is_no_name() {
    let dir = temp_dir("check-tls");
    std::fs::write(dir.join("ca.pem"), "not PEM at all\n").expect("write");
    let (code, _, stderr) = check(
        &dir,
        "[[route]]\npath = \"/\"\nupstream = \"https://app:8443\"\nupstream_server_name = \"app\"\nupstream_ca = \"ca.pem\"\n",
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("ssegate.toml:5:")
            && stderr.contains("key `upstream_ca`")
            && stderr.contains("holds no PEM certificate"),
        "{stderr}"
    );

    let (code, _, stderr) = check(
        &dir,
        "[[route]]\npath = \"/\"\nupstream = \"https://10.0.0.5\"\nupstream_server_name = \"app:8443\"\n",
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("ssegate.toml:4:") && stderr.contains("key `upstream_server_name`"),
        "{stderr}"
    );

    // Valid: the system's roots are counted for the routes that use them.
    let (code, stdout, stderr) = check(
        &dir,
        "[[route]]\npath = \"/\"\nupstream = \"https://app.example\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("# System root certificates: "), "{stdout}");
}
