//! `ssegate check` and the command line, run as a user would: the real binary on real files.

use std::path::PathBuf;
use std::process::{Command, Output};

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
    assert!(
        routes[1].contains("stream_key = [\"path\", \"query\", \"header:authorization\", \"header:cookie\"]")
    );
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
        let (code, _, stderr) = check(name, &text);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{name}: {stderr:?} lacks {needle:?}");
        }
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

#[test]
fn sigterm_stops_the_server_cleanly() {
    use std::io::{BufRead, BufReader};
    let path = config_file(
        "run.toml",
        "listen = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .args(["--config", path.to_str().expect("utf-8 path")])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ssegate");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("ssegate listening"));
    assert!(listening, "ssegate did not report listening");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ssegate did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|line| line.contains("stopped")), "{rest:?}");
}
