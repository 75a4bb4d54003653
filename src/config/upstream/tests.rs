//! `upstream` in its three forms, and the TLS keys: what each accepts, and what each refuses
//! with the key and the line.

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
        (
            "https://app.internal",
            "https://app.internal/a?b",
            "https://app.internal",
        ),
        (
            "https://[::1]:8443/x",
            "https://[::1]:8443/x/a?b",
            "https://[::1]:8443/x",
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
    assert!(matches!(
        Upstream::parse("https://a").expect("https").transport(),
        Transport::Https(_)
    ));
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

/// A CA certificate, as PEM.
fn ca_pem() -> String {
    let made = rcgen::generate_simple_self_signed(vec!["app.internal".to_owned()]).expect("certificate");
    made.cert.pem()
}

#[test]
fn https_takes_a_ca_file_and_a_server_name() {
    let dir = temp_dir("ca");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, format!("{}{}", ca_pem(), ca_pem())).expect("write");
    let text = format!(
        "[defaults]\nupstream_ca = \"{}\"\n\
         [[route]]\npath = \"/a\"\nupstream = \"https://10.0.0.5:8443\"\nupstream_server_name = \"app.internal\"\n\
         [[route]]\npath = \"/b\"\nupstream = \"https://app.internal\"\n\
         [[route]]\npath = \"/c\"\nupstream = \"http://127.0.0.1:3000\"\n",
        ca.display()
    );
    let config = load(&text).expect("valid");
    let a = config.routes[0].upstream_tls.as_ref().expect("tls");
    assert_eq!(a.ca.as_ref().map(|ca| ca.certs.len()), Some(2));
    assert_eq!(a.server_name.to_str(), "app.internal");
    let b = config.routes[1].upstream_tls.as_ref().expect("tls");
    assert_eq!(b.server_name.to_str(), "app.internal", "the URL's host");
    assert!(!b.named);
    // [defaults]' upstream_ca means nothing to an http:// route.
    assert!(config.routes[2].upstream_tls.is_none());

    let printed = config.to_string();
    assert!(
        printed.contains(&format!("upstream_ca = \"{}\"\n", ca.display()))
            && printed.contains("upstream_server_name = \"app.internal\"\n"),
        "{printed}"
    );
    assert_eq!(
        printed.matches("upstream_server_name").count(),
        1,
        "only where it was set"
    );
    let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.to_string(), printed);
    assert_eq!(again.routes[0].upstream_tls, config.routes[0].upstream_tls);

    // An IP address is a name a certificate can be checked for; without a CA, system roots.
    let ip = load(&route("https://[::1]:8443", "")).expect("valid");
    let tls = ip.routes[0].upstream_tls.as_ref().expect("tls");
    assert_eq!(tls.server_name.to_str(), "::1");
    assert!(tls.ca.is_none());
}

#[test]
fn a_ca_file_that_is_not_pem_or_a_bad_server_name_is_refused_at_its_line() {
    let dir = temp_dir("bad-ca");
    let der = rcgen::generate_simple_self_signed(vec!["a".to_owned()])
        .expect("certificate")
        .cert
        .der()
        .to_vec();
    let files: &[(&str, Vec<u8>, &[&str])] = &[
        (
            "der",
            der,
            &["holds no PEM certificate", "openssl x509 -inform der"],
        ),
        (
            "text",
            b"not a certificate\n".to_vec(),
            &["holds no PEM certificate"],
        ),
        ("empty", Vec::new(), &["holds no PEM certificate"]),
        (
            "key-only",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
            &["holds no PEM certificate"],
        ),
        (
            "broken",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec(),
            &["is not a PEM file"],
        ),
        (
            "not-x509",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            &["certificate 1 of", "cannot be used as a trusted root"],
        ),
    ];
    for (name, contents, says) in files {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        let (line, message) = error(&route(
            "https://app:8443",
            &format!("upstream_ca = \"{}\"\n", path.display()),
        ));
        assert_eq!(line, 4, "{name}: {message}");
        assert!(
            message.contains("key `upstream_ca` in [[route]] \"/\""),
            "{name}: {message}"
        );
        for part in *says {
            assert!(message.contains(part), "{name}: {message:?} lacks {part:?}");
        }
    }
    let in_defaults = format!(
        "[defaults]\nupstream_ca = \"{}\"\n{}",
        dir.join("text").display(),
        route("https://a", "")
    );
    assert_eq!(error(&in_defaults).0, 2, "the line of [defaults]' value");
    let (line, message) = error(&route(
        "https://app:8443",
        &format!("upstream_ca = \"{}\"\n", dir.join("none").display()),
    ));
    assert_eq!(line, 4);
    assert!(message.contains("cannot read"), "{message}");
    let (_, message) = error(&route(
        "https://app:8443",
        &format!("upstream_ca = \"{}\"\n", dir.display()),
    ));
    assert!(message.contains("not a regular file"), "{message}");

    for name in ["app.internal:8443", "https://app.internal", "bad name", ""] {
        let (line, message) = error(&route(
            "https://10.0.0.5",
            &format!("upstream_server_name = \"{name}\"\n"),
        ));
        assert_eq!(line, 4, "{name}: {message}");
        assert!(
            message.contains("key `upstream_server_name`")
                && message.contains("not a host name or an IP address"),
            "{name}: {message}"
        );
    }
}

#[test]
fn an_https_host_no_certificate_can_name_needs_a_server_name() {
    let (line, message) = error(&route("https://10.1:8443", ""));
    assert_eq!(line, 3, "{message}");
    assert!(
        message.contains("key `upstream`") && message.contains("set upstream_server_name"),
        "{message}"
    );
    load(&route(
        "https://10.1:8443",
        "upstream_server_name = \"app.internal\"\n",
    ))
    .expect("named");
}

#[test]
fn tls_keys_on_a_route_without_tls_are_refused() {
    for (upstream, key) in [
        ("http://127.0.0.1:3000", "upstream_server_name = \"app\"\n"),
        ("unix:/run/app.sock", "upstream_server_name = \"app\"\n"),
        ("http://127.0.0.1:3000", "upstream_ca = \"ca.pem\"\n"),
    ] {
        let (line, message) = error(&route(upstream, key));
        assert_eq!(line, 4, "{message}");
        assert!(
            message.contains("only an https:// upstream has TLS to set"),
            "{message}"
        );
    }
}
