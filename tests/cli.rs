//! `ssegate check` and the command line, run as a user would: the real binary on real files.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::Instance;

fn ssegate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .args(args)
        .output()
        .expect("run ssegate")
}

/// Writes `text` to a fresh file and returns its path.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ssegate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn check(name: &str, text: &str) -> (i32, String, String) {
    let path = config_file(name, text);
    let out = ssegate(&["check", "--config", path.to_str().expect("utf-8 path")]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn good_config_prints_effective_settings_per_route() {
    let (code, stdout, stderr) = check(
        "good.toml",
        "[defaults]\nheartbeat = \"5s\"\n\n[[route]]\npath = \"/events\"\nupstream = \"http://127.0.0.1:3000\"\nretry = \"1s\"\n\n[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:3001\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let routes: Vec<&str> = stdout.split("[[route]]").skip(1).collect();
    assert_eq!(routes.len(), 2, "{stdout}");
    assert!(
        routes[0].contains("retry = \"1s\"") && routes[0].contains("heartbeat = \"5s\""),
        "{}",
        routes[0]
    );
    assert!(
        routes[1].contains("retry = \"3s\"") && routes[1].contains("heartbeat = \"5s\""),
        "{}",
        routes[1]
    );
    assert!(routes[1].contains(
        "stream_key = [\"path\", \"query\", \"header:authorization\", \"header:cookie\", \"header:host\", \"header:origin\"]"
    ));
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn check_warns_about_a_shared_key_without_credentials() {
    let (code, _stdout, stderr) = check(
        "wide-key.toml",
        "[[route]]\npath = \"/feed\"\nupstream = \"http://127.0.0.1:3000\"\nstream_key = [\"path\", \"header:cookie\"]\n\n[[route]]\npath = \"/private\"\nupstream = \"http://127.0.0.1:3000\"\nmode = \"per-client\"\nstream_key = [\"path\"]\n",
    );
    assert_eq!(code, 0, "a warning is not an error: {stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "only the shared route: {stderr}");
    assert!(warnings[0].contains("\"/feed\""), "{}", warnings[0]);
    assert!(
        warnings[0].contains("\"header:authorization\", \"header:host\""),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("x-api-key"), "{}", warnings[0]);
}

#[test]
fn the_example_config_passes_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = ssegate(&["check", "--config", example]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configs_exit_2_naming_key_and_line() {
    let route = "[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:3000\"\n";
    let cases = [
        (
            "unknown-key.toml",
            format!("{route}heartbaet = \"1s\"\n"),
            &[":4:", "heartbaet", "did you mean `heartbeat`"][..],
        ),
        (
            "bad-duration.toml",
            format!("{route}heartbeat = \"soon\"\n"),
            &[":4:", "`heartbeat`", "invalid duration"][..],
        ),
        (
            "bad-url.toml",
            "[[route]]\npath = \"/\"\nupstream = \"127.0.0.1 3000\"\n".to_owned(),
            &[":3:", "`upstream`"][..],
        ),
        (
            "duplicate.toml",
            format!("{route}{route}"),
            &[":5:", "duplicate route path \"/\""][..],
        ),
    ];
    for (name, text, needles) in cases {
        check_refuses(name, &text, needles);
    }
}

/// `ssegate check` on `text` exits 2, without a panic, with every one of `needles` in what it
/// says.
fn check_refuses(name: &str, text: &str, needles: &[&str]) {
    let (code, _, stderr) = check(name, text);
    assert_eq!(code, 2, "{name}: {stderr}");
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{name}: {stderr:?} lacks {needle:?}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = ssegate(&["check", "--config", "/nonexistent/ssegate.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/ssegate.toml")
    );
    // Running (not checking) with a bad file fails the same way, before binding anything.
    let out = ssegate(&["--config", "/nonexistent/ssegate.toml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_and_help() {
    let out = ssegate(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = ssegate(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config") && help.contains("check"), "{help}");
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let path = config_file(
        "run.toml",
        "listen = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
    );
    let mut running = Instance::start_file(&path).await;
    running.signal("TERM");
    let status = running.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    running.wait_for_log("stopped").await;
}

/// A GET over a plain TCP connection; returns the status line.
fn status_of(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_a_bad_file_is_refused() {
    let first = "listen = \"127.0.0.1:0\"\n[[route]]\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\n";
    let path = config_file("hup.toml", first);
    let running = Instance::start_file(&path).await;
    let addr = running.addr().to_string();
    assert!(status_of(&addr, "/b").contains(" 404 "), "no /b route yet");
    std::fs::write(
        &path,
        format!("{first}[[route]]\npath = \"/b\"\nupstream = \"http://127.0.0.1:9\"\n"),
    )
    .expect("write");
    running.signal("HUP");
    running.wait_for_log("config reloaded").await;
    assert!(
        status_of(&addr, "/b").contains(" 502 "),
        "/b now routes (to a dead upstream)"
    );
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\n[[route]]\npath = \"/a\"\nupstream = 3\n",
    )
    .expect("write");
    running.signal("HUP");
    let refused = running.wait_for_log("reload refused").await;
    assert!(refused.contains("upstream"), "{refused}");
    assert!(status_of(&addr, "/b").contains(" 502 "), "the old config stays");
}

#[tokio::test]
async fn a_second_stop_signal_exits_at_once() {
    // An upstream that accepts and never answers holds a request (and so the drain) open.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    let path = config_file(
        "second.toml",
        &format!("listen = \"127.0.0.1:0\"\nshutdown_grace = \"1m\"\n[[route]]\npath = \"/\"\nupstream = \"http://{upstream_addr}\"\n"),
    );
    let mut running = Instance::start_file(&path).await;
    let addr = running.addr().to_string();
    let hung = std::thread::spawn(move || status_of(&addr, "/hang"));
    let _accepted = upstream.accept().expect("the request reaches the upstream");
    running.signal("TERM");
    running.wait_for_log("draining").await;
    running.signal("TERM");
    let status = running.wait_exit(Duration::from_secs(5)).await;
    assert!(
        !status.success(),
        "an immediate exit is not a clean one: {status}"
    );
    drop(hung);
}

#[test]
fn check_refuses_an_expired_or_mismatched_certificate() {
    let good = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let other_key = rcgen::KeyPair::generate().expect("key");
    let expired_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.self_signed(&expired_key).expect("certificate");
    let route = "[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:3000\"\n";
    let dir = config_file("tls-good.toml", "")
        .parent()
        .expect("dir")
        .to_path_buf();
    std::fs::write(dir.join("good.pem"), good.cert.pem()).expect("write");
    std::fs::write(dir.join("good.key"), good.key_pair.serialize_pem()).expect("write");
    std::fs::write(dir.join("other.key"), other_key.serialize_pem()).expect("write");
    std::fs::write(dir.join("expired.pem"), expired.pem()).expect("write");
    std::fs::write(dir.join("expired.key"), expired_key.serialize_pem()).expect("write");
    let tls = |cert: &str, key: &str| format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n{route}");

    let (code, stdout, stderr) = check("tls-good.toml", &tls("good.pem", "good.key"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("TLS certificate: CN=") || stdout.contains("TLS certificate:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[tls]") && stdout.contains("min_version = \"1.2\""),
        "{stdout}"
    );

    for (name, config, needles) in [
        (
            "tls-expired.toml",
            tls("expired.pem", "expired.key"),
            &["expired.pem", "expired on"][..],
        ),
        (
            "tls-mismatch.toml",
            tls("good.pem", "other.key"),
            &["other.key", "does not match"][..],
        ),
        (
            "tls-missing.toml",
            tls("nowhere.pem", "good.key"),
            &["nowhere.pem", "cannot read"][..],
        ),
        (
            "tls-version.toml",
            format!("[tls]\ncert = \"good.pem\"\nkey = \"good.key\"\nmin_version = \"1.1\"\n{route}"),
            &["min_version"][..],
        ),
    ] {
        check_refuses(name, &config, needles);
    }
}

#[test]
fn check_validates_the_cluster_section_without_connecting() {
    let route = "[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:3000\"\n";
    let dir = config_file("cluster-good.toml", "")
        .parent()
        .expect("dir")
        .to_path_buf();
    std::fs::write(dir.join("cluster-secret"), "a shared secret of 32 bytes ....\n").expect("write");
    // Nothing listens on port 1: check reads the section, it does not connect.
    let (code, stdout, stderr) = check(
        "cluster-good.toml",
        &format!("shutdown_delay = \"5s\"\ndrain_spread = \"20s\"\n{route}\n[cluster]\nredis = \"redis://ssegate:hunter2@127.0.0.1:1/0\"\nnode = \"web-1\"\nsecret_file = \"cluster-secret\"\n"),
    );
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "shutdown_delay = \"5s\"",
        "drain_spread = \"20s\"",
        "\n[cluster]\nredis = \"redis://ssegate:***@127.0.0.1:1/0\"\nnode = \"web-1\"\nlease = \"10s\"\nprefix = \"ssegate\"\n",
    ] {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains("a shared secret"), "{stdout}");
    assert!(stdout.contains("secret_file = \""), "{stdout}");
    // What check prints is a config that passes check.
    let (code, again, stderr) = check("cluster-printed.toml", &stdout);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert_eq!(
        again.lines().skip(1).collect::<Vec<_>>(),
        stdout.lines().skip(1).collect::<Vec<_>>()
    );

    check_refuses(
        "cluster-no-secret.toml",
        &format!("{route}[cluster]\nredis = \"redis://127.0.0.1:6379\"\n"),
        &[
            ":4:",
            "`secret_file` in [cluster]",
            "keys the digests naming streams in Redis",
        ],
    );
    check_refuses(
        "cluster-secret-missing.toml",
        &format!("{route}[cluster]\nredis = \"redis://127.0.0.1:6379\"\nsecret_file = \"no-such-secret\"\n"),
        &[":6:", "`secret_file`", "no-such-secret", "No such file"],
    );
    check_refuses(
        "cluster-bad-url.toml",
        &format!("{route}[cluster]\nredis = \"http://:hunter2@127.0.0.1:6379\"\nsecret_file = \"cluster-secret\"\n"),
        &[":5:", "`redis` in [cluster]", "redis://"],
    );
}

/// `ssegate check --connect` on `text`: exit code, stdout, stderr.
fn check_connect(name: &str, text: &str) -> (i32, String, String) {
    let path = config_file(name, text);
    let out = ssegate(&[
        "check",
        "--connect",
        "--config",
        path.to_str().expect("utf-8 path"),
    ]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `redis-server` on a free port, without persistence, killed on drop. `None` (the test is
/// skipped, saying so) when it is not installed.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start(extra: &[&str]) -> Option<Redis> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(std::env::temp_dir())
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let redis = Redis { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with `[cluster]` pointing at `url`, with `password` in a password file.
fn cluster_config(name: &str, url: &str, password: Option<&str>) -> String {
    let secret = config_file(&format!("{name}.secret"), "a shared secret of the test cluster\n");
    let mut cluster = format!(
        "[cluster]\nredis = \"{url}\"\nsecret_file = \"{}\"\n",
        secret.display()
    );
    if let Some(password) = password {
        let file = config_file(&format!("{name}.password"), &format!("{password}\n"));
        cluster.push_str(&format!("password_file = \"{}\"\n", file.display()));
    }
    format!("{cluster}\n[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:3000\"\n")
}

#[test]
fn check_connect_without_a_cluster_has_nothing_to_connect_to() {
    let (code, stdout, stderr) = check_connect(
        "no-cluster.toml",
        "[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:3000\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("nothing to connect to"), "{stdout}");
}

#[test]
fn check_connect_reports_the_redis_version_or_names_what_to_fix() {
    let Some(redis) = Redis::start(&["--requirepass", "right"]) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", redis.port);

    let (code, stdout, stderr) = check_connect(
        "redis-good.toml",
        &cluster_config("redis-good", &url, Some("right")),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("redis: connected to {url}, Redis 7.")),
        "{stdout}"
    );

    let (code, _, stderr) = check_connect(
        "redis-wrong.toml",
        &cluster_config("redis-wrong", &url, Some("not-the-password-xyz")),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cluster.password_file"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password-xyz"),
        "no password in messages: {stderr}"
    );

    drop(redis);
    let (code, _, stderr) = check_connect(
        "redis-down.toml",
        &cluster_config("redis-down", &url, Some("right")),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&url) && stderr.contains("cannot connect"),
        "{stderr}"
    );
}

/// Runs ssegate with `args` in `dir`, giving it 10 s to exit by itself (a test expecting a
/// refusal must not hang if ssegate starts after all).
fn run_in(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ssegate");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ssegate {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A first run in a directory without ssegate.toml used to say only "cannot read config file
/// ssegate.toml: No such file or directory"; it now says what to do next.
#[test]
fn no_config_file_points_to_config_and_the_demo() {
    let dir = std::env::temp_dir().join(format!("ssegate-noconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for args in [&[][..], &["check"][..]] {
        let (code, stderr) = run_in(&dir, args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        for needle in ["no config file", "ssegate.toml", "--config FILE", "ssegate demo"] {
            assert!(stderr.contains(needle), "{args:?}: {stderr:?} lacks {needle:?}");
        }
    }
}

#[test]
fn a_port_in_use_names_the_address_and_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let route = "[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\n";
    for (key, config) in [
        ("listen", format!("listen = \"{addr}\"\n{route}")),
        (
            "admin_listen",
            format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"{addr}\"\n{route}"),
        ),
    ] {
        let path = config_file(&format!("taken-{key}.toml"), &config);
        let dir = path.parent().expect("dir").to_path_buf();
        let (code, stderr) = run_in(&dir, &["--config", path.to_str().expect("utf-8")]);
        assert_ne!(code, 0, "{stderr}");
        for needle in [addr.as_str(), "already in use", &format!("`{key}`")] {
            assert!(stderr.contains(needle), "{key}: {stderr:?} lacks {needle:?}");
        }
    }
}

/// The TOML parser's own words (``expected newline, `#` ``) told a first-time user nothing.
#[test]
fn toml_mistakes_are_said_in_plain_words_with_the_line() {
    let route = "[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:3000\"\n";
    let cases = [
        (
            "unquoted.toml",
            format!("{route}heartbeat = 15s\n"),
            &[":4:", "text values need quotes", "write heartbeat = \"15s\""][..],
        ),
        (
            "unquoted-path.toml",
            "[[route]]\npath = /events\nupstream = \"http://127.0.0.1:3000\"\n".to_owned(),
            &[":2:", "write path = \"/events\""][..],
        ),
        (
            "unclosed.toml",
            format!("listen = \"127.0.0.1:8080\n{route}"),
            &[":1:", "`listen`", "not closed"][..],
        ),
        (
            "header.toml",
            "[[route]\npath = \"/\"\n".to_owned(),
            &[":1:", "section header is malformed"][..],
        ),
        (
            "twice.toml",
            format!("listen = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n{route}"),
            &[":2:", "`listen` is set twice"][..],
        ),
        (
            "quoted-number.toml",
            format!("{route}buffer_events = \"100\"\n"),
            &[":4:", "`buffer_events`", "a whole number, without quotes"][..],
        ),
        (
            "duration-word.toml",
            format!("{route}heartbeat = \"soon\"\n"),
            &[
                ":4:",
                "invalid duration \"soon\"",
                "must start with a number",
                "\"1.5s\"",
            ][..],
        ),
        (
            "duration-bare.toml",
            format!("{route}heartbeat = \"15\"\n"),
            &[":4:", "needs a unit, such as \"15s\""][..],
        ),
    ];
    for (name, text, needles) in cases {
        check_refuses(name, &text, needles);
        let (_, _, stderr) = check(name, &text);
        for raw in [
            "expected newline",
            "`#`",
            "expected number at",
            "invalid basic string",
        ] {
            assert!(!stderr.contains(raw), "{name}: {stderr:?} still says {raw:?}");
        }
    }
}

#[test]
fn a_known_key_in_the_wrong_place_says_where_it_belongs() {
    let route = "[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:3000\"\n";
    let cases = [
        (
            "top-heartbeat.toml",
            format!("heartbeat = \"5s\"\n{route}"),
            &[
                ":1:",
                "`heartbeat`",
                "put it in [defaults] (for every route) or in a [[route]]",
            ][..],
        ),
        (
            "route-listen.toml",
            format!("{route}listen = \"127.0.0.1:8080\"\n"),
            &[
                ":4:",
                "`listen` is a top-level key",
                "above the first [section] header",
            ][..],
        ),
        (
            "cluster-retry.toml",
            format!("{route}[cluster]\nretry = \"1s\"\n"),
            &[":5:", "`retry` is a route setting"][..],
        ),
        (
            "defaults-upstream.toml",
            format!("[defaults]\nupstream = \"http://127.0.0.1:3000\"\n{route}"),
            &[":2:", "`upstream` belongs in a [[route]]"][..],
        ),
    ];
    for (name, text, needles) in cases {
        check_refuses(name, &text, needles);
    }
}

/// The "ssegate listening" line printed `admin=Some(127.0.0.1:9901)`, Rust's debug form.
#[tokio::test]
async fn the_startup_line_has_plain_fields() {
    let route = "[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\n";
    let with_admin = Instance::start(route).await;
    let line = with_admin.wait_for_log("ssegate listening").await;
    assert!(line.contains(&format!("admin={}", with_admin.admin())), "{line}");
    assert!(!line.contains("Some("), "{line}");
    let path = config_file("no-admin.toml", &format!("listen = \"127.0.0.1:0\"\n{route}"));
    let without = Instance::start_file(&path).await;
    let line = without.wait_for_log("ssegate listening").await;
    assert!(line.contains("admin=off"), "{line}");
}

#[test]
fn the_nginx_replacement_example_passes_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/from-nginx.toml");
    let out = ssegate(&["check", "--config", example]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("path = \"/events\""), "{stdout}");
    assert!(
        stdout.contains("Access-Control-Allow-Origin") || stdout.contains("access-control-allow-origin"),
        "{stdout}"
    );
}
