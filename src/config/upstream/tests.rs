//! `upstream` in its forms: what each accepts, and what each refuses with the key and the line.

use super::*;

/// A fresh directory of this test's own (tests run in parallel).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ssegate-upstream-{}-{name}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml")
}

/// The line and message of the error `text` gives.
fn error(text: &str) -> (usize, String) {
    match load(text) {
        Err(ConfigError::Invalid { line, message, .. }) => (line, message),
        other => panic!("expected an error for {text:?}, got {other:?}"),
    }
}

/// A route to `upstream` on line 3, then `extra` keys from line 4.
fn route(upstream: &str, extra: &str) -> String {
    format!("[[route]]\npath = \"/\"\nupstream = \"{upstream}\"\n{extra}")
}

#[test]
fn three_forms_and_where_each_goes() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "http://127.0.0.1:3000",
            "http://127.0.0.1:3000/a?b",
            "http://127.0.0.1:3000",
        ),
        (
            "http://app:8000/api/",
            "http://app:8000/api/a?b",
            "http://app:8000/api",
        ),
        ("unix:/run/app.sock", "http://localhost/a?b", "unix:/run/app.sock"),
        (
            "unix:/run/app.sock:/api/",
            "http://localhost/api/a?b",
            "unix:/run/app.sock:/api",
        ),
        (
            "unix:/run/app.sock:/v1:beta",
            "http://localhost/v1:beta/a?b",
            "unix:/run/app.sock:/v1:beta",
        ),
    ];
    for (text, uri, shown) in cases {
        let upstream = Upstream::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(upstream.uri_for("/a?b").expect("uri").to_string(), *uri, "{text}");
        assert_eq!(upstream.to_string(), *shown, "{text}");
        // What is shown parses to the same upstream (`check` prints it).
        assert_eq!(Upstream::parse(shown).expect("again"), upstream, "{text}");
    }
    let socket = Upstream::parse("unix:/run/app.sock:/api").expect("unix");
    assert_eq!(
        socket.transport(),
        &Transport::Unix(PathBuf::from("/run/app.sock"))
    );
    assert_eq!(socket.uri_for("*").expect("uri").to_string(), "http://localhost*");
}

#[test]
fn a_relative_socket_path_is_relative_to_the_config_file() {
    let dir = temp_dir("relative");
    std::fs::write(dir.join("ssegate.toml"), route("unix:run/app.sock:/api", "")).expect("write");
    let config = Config::load(&dir.join("ssegate.toml")).expect("valid");
    let upstream = &config.routes[0].upstream;
    assert_eq!(upstream.transport(), &Transport::Unix(dir.join("run/app.sock")));
    assert_eq!(
        upstream.to_string(),
        format!("unix:{}:/api", dir.join("run/app.sock").display())
    );
}

#[test]
fn unclear_or_unusable_upstreams_are_refused_with_the_form_to_write() {
    let long = format!("unix:/{}", "s".repeat(120));
    let cases: &[(&str, &[&str])] = &[
        ("unix://run/app.sock", &["without \"//\"", "unix:/run/app.sock"]),
        ("unix:", &["path is missing"]),
        ("unix::/api", &["path is missing"]),
        ("unix:/run/a:b.sock", &["cannot hold a \":\"", "\"b.sock\""]),
        ("unix:/run/app.sock:/api?x=1", &["cannot have a query"]),
        (
            "http://unix:/run/app.sock:/api",
            &["\"unix:/run/app.sock:/api\"", "Nginx"],
        ),
        ("ftp://app:21", &["scheme ftp", "unix:/run/app.sock"]),
        ("app:3000", &["scheme"]),
        ("http://app:1?x", &["query"]),
        ("http://user@app:1", &["credentials"]),
        (long.as_str(), &["at most 107"]),
    ];
    for (upstream, says) in cases {
        let (line, message) = error(&route(upstream, ""));
        assert_eq!(line, 3, "{upstream}: {message}");
        assert!(message.contains("key `upstream`"), "{upstream}: {message}");
        for part in *says {
            assert!(message.contains(part), "{upstream}: {message:?} lacks {part:?}");
        }
    }
}

#[cfg(unix)]
#[test]
fn a_socket_path_must_name_a_socket_or_nothing_yet() {
    let dir = temp_dir("sockets");
    let socket = dir.join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::fs::write(dir.join("file"), "x").expect("write");

    let ok = load(&route(&format!("unix:{}", socket.display()), "")).expect("a socket");
    assert!(ok.warnings().is_empty(), "{:?}", ok.warnings());

    // Not there yet: valid (the app may start later), with a warning that names it.
    let later = dir.join("later.sock");
    let config = load(&route(&format!("unix:{}", later.display()), "")).expect("missing is fine");
    let warnings = config.warnings();
    assert!(
        warnings.len() == 1
            && warnings[0].contains(&later.display().to_string())
            && warnings[0].contains("does not exist"),
        "{warnings:?}"
    );

    let refused: &[(String, &[&str])] = &[
        (
            format!("unix:{}", dir.join("file").display()),
            &["is a regular file, not a Unix socket"],
        ),
        (format!("unix:{}", dir.display()), &["is a directory"]),
        // The base path written as if the socket were a directory.
        (
            format!("unix:{}/api/v1", socket.display()),
            &["is a socket", &format!("\"unix:{}:/api/v1\"", socket.display())],
        ),
    ];
    for (upstream, says) in refused {
        let (line, message) = error(&route(upstream, ""));
        assert_eq!(line, 3, "{message}");
        for part in *says {
            assert!(message.contains(part), "{upstream}: {message:?} lacks {part:?}");
        }
    }
}
