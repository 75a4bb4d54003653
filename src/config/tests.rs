//! Config parsing, precedence and errors.

use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml")
}

fn error(text: &str) -> (usize, String) {
    match load(text) {
        Err(ConfigError::Invalid { line, message, .. }) => (line, message),
        other => panic!("expected an error for {text:?}, got {other:?}"),
    }
}

const MINIMAL: &str = "[[route]]\npath = \"/events\"\nupstream = \"http://127.0.0.1:3000\"\n";

#[test]
fn example_file_parses_and_documents_every_key() {
    let text = include_str!("../../config.example.toml");
    let config = load(text).expect("config.example.toml is valid");
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes[0].settings.heartbeat, Some(Duration::from_secs(10)));
    // Every key the effective config prints is mentioned in the example; keys without a
    // default (printed only when set) as a commented-out line. The keys of an https:// route
    // are printed only for one, so one is added to the example's routes.
    let ca = temp_file(
        "example-ca.pem",
        rcgen::generate_simple_self_signed(vec!["app.internal".to_owned()])
            .expect("certificate")
            .cert
            .pem()
            .as_bytes(),
    );
    let with_https = format!(
        "{text}\n[[route]]\npath = \"/internal\"\nupstream = \"https://10.0.0.5:8443\"\nupstream_ca = \"{}\"\nupstream_server_name = \"app.internal\"\n",
        ca.display()
    );
    let printed = load(&with_https).expect("valid").to_string();
    assert!(printed.contains("\nupstream_ca = "), "{printed}");
    for line in printed.lines() {
        if let Some((key, _)) = line.split_once(" = ") {
            assert!(
                text.contains(&format!("\n{key} = ")) || text.contains(&format!("\n# {key} = ")),
                "config.example.toml does not document `{key}`"
            );
        }
    }
}

#[test]
fn built_in_defaults() {
    let config = load(MINIMAL).expect("valid");
    assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    let route = &config.routes[0];
    assert_eq!(route.sse, SseMode::Auto);
    let s = &route.settings;
    assert_eq!(s.retry, Some(DEFAULT_RETRY));
    assert_eq!(s.ids, IdMode::Inject);
    assert_eq!(s.mode, StreamMode::Shared);
    assert_eq!(s.buffer_bytes, 8 << 20);
    assert_eq!(s.stream_key.len(), 6);
    assert!(s.response_headers.is_empty());
    assert!(s.merge_slashes);
    assert!(!s.allow_encoded_slashes);
    assert_eq!(config.max_streams_per_client, Some(100));
    assert_eq!(
        config.new_streams_per_client,
        Some(StreamRate {
            per_second: 20,
            burst: 40
        })
    );
    assert!(config.trusted_proxies.is_empty());
    assert_eq!(s.upstream_down_grace, Some(DEFAULT_UPSTREAM_DOWN_GRACE));
    assert_eq!(s.coalesce, Some(DEFAULT_COALESCE));
}

#[test]
fn route_overrides_defaults_overrides_built_in() {
    let config = load(
        "[defaults]\nheartbeat = \"5s\"\nretry = \"off\"\nbuffer_bytes = 4096\nmax_event_bytes = 1024\n\
         [[route]]\npath = \"/a\"\nupstream = \"http://127.0.0.1:1\"\nheartbeat = \"1s\"\n\
         [[route]]\npath = \"/b/\"\nupstream = \"http://127.0.0.1:1/base/\"\n",
    )
    .expect("valid");
    let (a, b) = (&config.routes[0], &config.routes[1]);
    assert_eq!(a.settings.heartbeat, Some(Duration::from_secs(1)));
    assert_eq!(b.settings.heartbeat, Some(Duration::from_secs(5)));
    assert_eq!(b.settings.retry, None);
    assert_eq!(b.settings.buffer_bytes, 4096);
    assert_eq!(b.path, "/b");
    assert_eq!(
        b.upstream.uri_for("/b/x?y=1").expect("uri").to_string(),
        "http://127.0.0.1:1/base/b/x?y=1"
    );
    assert_eq!(a.settings.linger, DEFAULT_LINGER);
}

#[test]
fn coalesce_takes_a_duration_or_off() {
    let config = load(
        "[defaults]\ncoalesce = \"off\"\n\
         [[route]]\npath = \"/a\"\nupstream = \"http://127.0.0.1:1\"\ncoalesce = \"20ms\"\n\
         [[route]]\npath = \"/b\"\nupstream = \"http://127.0.0.1:1\"\n",
    )
    .expect("valid");
    assert_eq!(
        config.routes[0].settings.coalesce,
        Some(Duration::from_millis(20))
    );
    assert_eq!(config.routes[1].settings.coalesce, None);
    assert!(config.to_string().contains("coalesce = \"20ms\""));
}

#[test]
fn per_client_mode_defaults_to_passthrough_ids_and_rejects_inject() {
    let ok = load(&format!("{MINIMAL}mode = \"per-client\"\n")).expect("valid");
    assert_eq!(ok.routes[0].settings.ids, IdMode::Passthrough);
    let (line, message) = error(&format!("{MINIMAL}mode = \"per-client\"\nids = \"inject\"\n"));
    assert_eq!(line, 5);
    assert!(
        message.contains("`ids`") && message.contains("resumed"),
        "{message}"
    );
}

#[test]
fn errors_name_the_key_and_line() {
    let cases: &[(&str, &str, usize, &[&str])] = &[
        ("unknown key with suggestion", "[defaults]\nhearbeat = \"1s\"\n", 2, &["unknown key `hearbeat`", "did you mean `heartbeat`", "[defaults]"]),
        ("unknown top-level key", "lisen = \"1.2.3.4:5\"\n", 1, &["`lisen`", "did you mean `listen`"]),
        ("unknown route key", "[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\nstrem_key = []\n", 4, &["`strem_key`", "`stream_key`", "[[route]]"]),
        ("bad duration", "[defaults]\nretry = \"3\"\n", 2, &["`retry`", "invalid duration", "\"3\""]),
        ("duration as number", "[defaults]\nlinger = 30\n", 2, &["`linger`", "duration"]),
        ("off where not allowed", "[defaults]\nlinger = \"off\"\n", 2, &["`linger`", "cannot be \"off\""]),
        ("bad size", "[defaults]\nbuffer_bytes = \"8 megs\"\n", 2, &["`buffer_bytes`", "invalid size"]),
        ("bad enum", "[defaults]\nids = \"random\"\n", 2, &["`ids`", "random"]),
        ("bad url", "[[route]]\npath = \"/\"\nupstream = \"not a url\"\n", 3, &["`upstream`", "not a URL"]),
        ("unknown scheme", "[[route]]\npath = \"/\"\nupstream = \"ws://a:1\"\n", 3, &["`upstream`", "not one ssegate speaks"]),
        ("path without slash", "[[route]]\npath = \"events\"\nupstream = \"http://a:1\"\n", 2, &["`path`", "start with"]),
        ("missing upstream", "[[route]]\npath = \"/\"\n", 1, &["upstream"]),
        ("duplicate path", "[[route]]\npath = \"/a\"\nupstream = \"http://a:1\"\n[[route]]\npath = \"/a/\"\nupstream = \"http://b:1\"\n", 5, &["duplicate route path \"/a\"", "line 1"]),
        ("bad listen", "listen = \"localhost\"\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 1, &["`listen`"]),
        ("bad stream key", "[defaults]\nstream_key = [\"path\", \"cookies\"]\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 2, &["`stream_key`", "\"cookies\""]),
        ("buffer smaller than an event", "[defaults]\nbuffer_bytes = \"1KiB\"\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 2, &["`buffer_bytes`", "max_event_bytes"]),
        ("zero buffer events", "[defaults]\nbuffer_events = 0\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 2, &["`buffer_events`"]),
        ("backoff upside down", "[defaults]\nreconnect_initial = \"1m\"\nreconnect_max = \"1s\"\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 2, &["`reconnect_initial`"]),
        ("no routes", "listen = \"127.0.0.1:1\"\n", 2, &["no [[route]]"]),
        ("toml syntax", "listen = \n", 1, &["listen"]),
        ("bad trusted proxy", "trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 1, &["`trusted_proxies`", "\"10.0.0.1/8\"", "network address"]),
        ("trusted proxy not an address", "trusted_proxies = [\"lb.internal\"]\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 1, &["`trusted_proxies`", "not an IP address"]),
        ("zero burst", "new_streams_burst = 0\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 1, &["`new_streams_burst`", "at least 1"]),
        ("zero streams per client", "max_streams_per_client = 0\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 1, &["`max_streams_per_client`", "at least 1"]),
        ("route path not normal", "[[route]]\npath = \"/a/../b\"\nupstream = \"http://a:1\"\n", 2, &["`path`", "normalised"]),
        ("route path with repeated slashes", "[[route]]\npath = \"//a\"\nupstream = \"http://a:1\"\n", 2, &["`path`", "normalised"]),
        ("route path with a decodable escape", "[[route]]\npath = \"/%61\"\nupstream = \"http://a:1\"\n", 2, &["`path`", "percent-escapes"]),
        ("routes differing only in case", "[[route]]\npath = \"/Admin\"\nupstream = \"http://a:1\"\n[[route]]\npath = \"/admin\"\nupstream = \"http://b:1\"\n", 5, &["duplicate route path"]),
        ("response header of the framing", "[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\nresponse_headers = { \"Content-Length\" = \"5\" }\n", 4, &["`response_headers`", "framing"]),
        ("response header name", "[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\nresponse_headers = { \"bad name\" = \"5\" }\n", 4, &["`response_headers`", "not a valid header name"]),
        ("response header value", "[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\nresponse_headers = { \"x-a\" = \"a\\nb\" }\n", 4, &["`response_headers`", "not a valid header value"]),
        ("response header twice", "[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\nresponse_headers = { \"X-A\" = \"1\", \"x-a\" = \"2\" }\n", 4, &["`response_headers`", "set twice"]),
        ("admin on the public address", "listen = \"127.0.0.1:9\"\nadmin_listen = \"127.0.0.1:9\"\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 2, &["`admin_listen`", "differ"]),
        ("merge_slashes not a bool", "[defaults]\nmerge_slashes = \"yes\"\n", 2, &["`merge_slashes`"]),
        ("unknown coding", "[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\ncompress = [\"gzip\",\n  \"deflate\"]\n", 5, &["`compress`", "\"deflate\" is not one of \"br\", \"gzip\""]),
        ("compress not a list", "[defaults]\ncompress = \"gzip\"\n", 2, &["`compress`", "write a list such as [\"gzip\"]"]),
        ("client header twice", "[defaults]\nclient_headers = [\"x-real-ip\", \"X-Real-IP\"]\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 2, &["`client_headers`", "listed twice"]),
        ("unknown client header", "[defaults]\nclient_headers = [\"x-forwarded-for\"]\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n", 2, &["`client_headers`", "\"x-real-ip\", \"forwarded\""]),
    ];
    for (name, text, line, needles) in cases {
        let (got_line, message) = error(text);
        assert_eq!(got_line, *line, "case {name}: wrong line in {message:?}");
        for needle in *needles {
            assert!(
                message.contains(needle),
                "case {name}: {message:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn compression_and_client_headers_are_off_unless_listed() {
    let config = load(
        "[defaults]\ncompress = [\"gzip\", \"br\"]\nclient_headers = [\"X-Real-IP\"]\n\
         [[route]]\npath = \"/api\"\nupstream = \"http://a:1\"\n\
         [[route]]\npath = \"/files\"\nupstream = \"http://a:1\"\ncompress = \"off\"\nclient_headers = [\"forwarded\", \"x-real-ip\"]\n\
         [[route]]\npath = \"/raw\"\nupstream = \"http://a:1\"\ncompress = []\nclient_headers = []\n",
    )
    .expect("valid");
    let settings = |i: usize| &config.routes[i].settings;
    assert_eq!(settings(0).compress, Compress { br: true, gzip: true });
    assert_eq!(
        settings(0).client_headers,
        ClientHeaders {
            x_real_ip: true,
            forwarded: false
        }
    );
    assert!(settings(1).compress.is_off());
    assert_eq!(
        settings(1).client_headers,
        ClientHeaders {
            x_real_ip: true,
            forwarded: true
        }
    );
    assert!(settings(2).compress.is_off());
    assert_eq!(settings(2).client_headers, ClientHeaders::default());
    let printed = config.to_string();
    assert!(
        printed.contains("compress = [\"br\", \"gzip\"]\nclient_headers = [\"x-real-ip\"]\n"),
        "{printed}"
    );
    assert!(
        printed.contains("compress = \"off\"\nclient_headers = [\"x-real-ip\", \"forwarded\"]\n"),
        "{printed}"
    );
    let again = load(&printed).expect("prints as valid TOML");
    for (a, b) in again.routes.iter().zip(&config.routes) {
        assert_eq!(a.settings, b.settings);
    }
    let minimal = load(MINIMAL).expect("valid");
    assert!(
        minimal.routes[0].settings.compress.is_off(),
        "a faithful proxy by default"
    );
    assert_eq!(
        minimal.routes[0].settings.client_headers,
        ClientHeaders::default()
    );
}

#[test]
fn client_limits_and_path_rules() {
    let config = load(
        "trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\nmax_streams_per_client = \"off\"\n\
         new_streams_per_client = 5\nnew_streams_burst = 7\n\
         [defaults]\nmerge_slashes = false\n\
         [[route]]\npath = \"/a%2F\"\nupstream = \"http://127.0.0.1:1\"\nallow_encoded_slashes = true\n",
    )
    .expect("valid");
    assert_eq!(config.trusted_proxies.len(), 2);
    assert_eq!(config.max_streams_per_client, None);
    assert_eq!(
        config.new_streams_per_client,
        Some(StreamRate {
            per_second: 5,
            burst: 7
        })
    );
    let route = &config.routes[0];
    assert_eq!(route.path, "/a%2F");
    assert!(!route.settings.merge_slashes);
    assert!(route.settings.allow_encoded_slashes);
    let with_headers = load(
        "[defaults]\nresponse_headers = { \"Access-Control-Allow-Origin\" = \"https://app.example\", \"X-Quote\" = \"a \\\"b\\\"\" }\n\
         [[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n",
    )
    .expect("valid");
    let headers = &with_headers.routes[0].settings.response_headers;
    assert_eq!(headers.len(), 2);
    assert_eq!(headers[0].0.as_str(), "access-control-allow-origin");
    assert_eq!(headers[1].1.as_bytes(), b"a \"b\"");
    let printed = with_headers.to_string();
    assert_eq!(
        load(&printed).expect("prints as valid TOML").routes[0]
            .settings
            .response_headers,
        *headers
    );
    let off = load("new_streams_per_client = \"off\"\n[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n")
        .expect("valid");
    assert_eq!(off.new_streams_per_client, None);
}

#[test]
fn effective_config_is_itself_a_valid_config_with_the_same_settings() {
    let text = include_str!("../../config.example.toml");
    let config = load(text).expect("valid");
    let printed = config.to_string();
    let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.to_string(), printed);
    assert_eq!(again.routes[0].settings, config.routes[0].settings);
}

// Found by fuzzing: `check` printed strings with Rust's escapes (`\u{..}`), then with the toml
// crate's writer, which overflows (and panics in debug builds) on a run of 256 single quotes.
#[test]
fn printed_strings_load_again_whatever_they_hold() {
    let value = format!("a \\\"b\\\" {} \\\\ c", "'".repeat(300));
    let text = format!(
        "[[route]]\npath = \"/a\u{f3cf}b\"\nupstream = \"http://127.0.0.1:1\"\nresponse_headers = {{ \"x-q\" = \"{value}\" }}\n"
    );
    let config = load(&text).expect("valid");
    let printed = config.to_string();
    let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.to_string(), printed);
    assert_eq!(again.routes[0].path, "/a\u{f3cf}b");
}

#[test]
fn every_duration_has_an_upper_bound() {
    const ROUTE: &str = "[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n";
    // (key, its bound, whether it is a top-level key, other keys it needs at its bound)
    let cases: &[(&str, Duration, bool, &str)] = &[
        ("shutdown_grace", MAX_DURATION, true, ""),
        ("shutdown_delay", MAX_STOP_DELAY, true, ""),
        ("drain_spread", MAX_STOP_DELAY, true, ""),
        ("client_write_timeout", MAX_TIMEOUT, true, ""),
        ("header_read_timeout", MAX_TIMEOUT, true, ""),
        ("keepalive_timeout", MAX_TIMEOUT, true, ""),
        ("retry", MAX_RECONNECT, false, ""),
        ("heartbeat", MAX_HEARTBEAT, false, ""),
        ("buffer_age", MAX_DURATION, false, ""),
        ("linger", MAX_DURATION, false, ""),
        ("coalesce", MAX_COALESCE, false, ""),
        (
            "reconnect_initial",
            MAX_RECONNECT,
            false,
            "reconnect_max = \"1h\"\n",
        ),
        ("reconnect_max", MAX_RECONNECT, false, ""),
        ("upstream_connect_timeout", MAX_TIMEOUT, false, ""),
        ("upstream_down_grace", MAX_DURATION, false, ""),
        ("upstream_response_timeout", MAX_TIMEOUT, false, ""),
        ("upgrade_idle_timeout", MAX_TIMEOUT, false, ""),
    ];
    for &(key, max, top_level, needs) in cases {
        let text = |value: &str| {
            let line = format!("{key} = \"{value}\"\n");
            if top_level {
                format!("{line}{ROUTE}")
            } else {
                format!("{ROUTE}{needs}{line}")
            }
        };
        let at = format_duration(max);
        let config = load(&text(&at)).unwrap_or_else(|e| panic!("{key} = {at:?}: {e}"));
        assert!(config.to_string().contains(&format!("{key} = \"{at}\"")), "{key}");
        let (line, message) = error(&text(&format!("{at} 1s")));
        let want = if top_level { 1 } else { 4 + needs.lines().count() };
        assert_eq!(line, want, "{key}: {message}");
        for needle in [
            format!("`{key}`"),
            "the most this setting allows".to_owned(),
            at.clone(),
        ] {
            assert!(message.contains(&needle), "{key}: {message:?} lacks {needle:?}");
        }
    }
    assert_eq!(format_duration(MAX_DURATION), "1year");
    // "500 years" parses as a duration, and is refused as a setting.
    let (_, message) = error(&format!("{ROUTE}linger = \"500 years\"\n"));
    assert!(message.contains("longer than 1year"), "{message}");
}

/// Writes `contents` to a fresh file in the temp dir and returns its path, for keys that name
/// files.
fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    // A name per call: tests run in parallel and share file names.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ssegate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{n}-{name}"));
    std::fs::write(&path, contents).expect("write");
    path
}

/// A `[cluster]` section with a valid secret file, then `extra` keys.
fn with_cluster(extra: &str) -> String {
    let secret = temp_file("secret", b"0123456789abcdef0123456789abcdef\n");
    format!(
        "{MINIMAL}[cluster]\nsecret_file = \"{}\"\n{extra}",
        secret.display()
    )
}

#[test]
fn both_listeners_may_take_a_port_the_system_picks() {
    let config = load(&format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{MINIMAL}"
    ))
    .expect("valid");
    assert_eq!(config.admin_listen, Some(config.listen));
}

#[test]
fn stop_delays_default_to_none() {
    let config = load(MINIMAL).expect("valid");
    assert_eq!(config.shutdown_delay, Duration::ZERO);
    assert_eq!(config.drain_spread, Duration::ZERO);
    assert!(config.cluster.is_none());
    let config = load(&format!(
        "shutdown_delay = \"5s\"\ndrain_spread = \"30s\"\n{MINIMAL}"
    ))
    .expect("valid");
    assert_eq!(config.shutdown_delay, Duration::from_secs(5));
    assert_eq!(config.drain_spread, Duration::from_secs(30));
    let printed = config.to_string();
    assert!(
        printed.contains("shutdown_delay = \"5s\"\n") && printed.contains("drain_spread = \"30s\"\n"),
        "{printed}"
    );
}

#[test]
fn cluster_section_with_defaults() {
    let config = load(&with_cluster("redis = \"redis://127.0.0.1:6379\"\n")).expect("valid");
    let cluster = config.cluster.expect("[cluster]");
    assert_eq!(cluster.redis, "redis://127.0.0.1:6379");
    assert_eq!(cluster.password, None);
    assert_eq!(cluster.lease, DEFAULT_LEASE);
    assert_eq!(cluster.prefix, DEFAULT_PREFIX);
    assert_eq!(cluster.secret, b"0123456789abcdef0123456789abcdef");
    let (host, suffix) = cluster.node.rsplit_once('-').expect("host-suffix");
    assert!(!host.is_empty());
    assert_eq!(suffix.len(), 6);
    assert!(
        suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "{suffix}"
    );
    // A reload gets the same made-up name.
    let again = load(&with_cluster("redis = \"redis://127.0.0.1:6379\"\n")).expect("valid");
    assert_eq!(again.cluster.expect("[cluster]").node, cluster.node);
}

#[test]
fn cluster_section_with_every_key() {
    let password = temp_file("password", b"s3cret pass\r\n");
    let config = load(&with_cluster(&format!(
        "redis = \"rediss://user@redis.internal:6380/2\"\npassword_file = \"{}\"\nnode = \"web-1.eu_west\"\nlease = \"30s\"\nprefix = \"app:sse-1\"\n",
        password.display()
    )))
    .expect("valid");
    let cluster = config.cluster.as_ref().expect("[cluster]");
    assert_eq!(cluster.redis, "rediss://user@redis.internal:6380/2");
    assert_eq!(cluster.password.as_deref(), Some("s3cret pass"));
    assert_eq!(cluster.node, "web-1.eu_west");
    assert_eq!(cluster.lease, Duration::from_secs(30));
    assert_eq!(cluster.prefix, "app:sse-1");
    let printed = config.to_string();
    let section = format!(
        "\n[cluster]\nredis = \"rediss://user@redis.internal:6380/2\"\npassword_file = \"{}\"\nnode = \"web-1.eu_west\"\nlease = \"30s\"\nprefix = \"app:sse-1\"\nsecret_file = \"",
        password.display()
    );
    assert!(printed.contains(&section), "{printed}");
    // What check prints loads again, to the same settings.
    let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.to_string(), printed);
    assert_eq!(again.cluster, config.cluster);
    assert!(
        !printed.contains("s3cret") && !printed.contains("0123456789abcdef"),
        "{printed}"
    );
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("s3cret") && !debug.contains("0123456789abcdef"),
        "{debug}"
    );

    // The password in the URL: kept there, masked in print.
    let config = load(&with_cluster("redis = \"redis://:hunter2@127.0.0.1:6379\"\n")).expect("valid");
    let cluster = config.cluster.as_ref().expect("[cluster]");
    assert_eq!(cluster.password.as_deref(), Some("hunter2"));
    assert_eq!(cluster.redis_masked(), "redis://:***@127.0.0.1:6379");
    let printed = config.to_string();
    assert!(
        printed.contains("redis = \"redis://:***@127.0.0.1:6379\""),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
    let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(
        again.to_string(),
        printed,
        "the mask is the password now, and prints the same"
    );

    // A unix socket, its database and password in the query.
    let config = load(&with_cluster(
        "redis = \"unix:///run/redis/redis.sock?db=3&pass=hunter2\"\n",
    ))
    .expect("valid");
    let cluster = config.cluster.as_ref().expect("[cluster]");
    assert_eq!(cluster.password.as_deref(), Some("hunter2"));
    assert!(!config.to_string().contains("hunter2"));
}

#[test]
fn cluster_files_are_found_beside_the_config_file() {
    let secret = temp_file("beside-secret", b"0123456789abcdef");
    let name = secret.file_name().expect("name").to_string_lossy();
    let config = secret.with_file_name(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!("{MINIMAL}[cluster]\nredis = \"redis://127.0.0.1\"\nsecret_file = \"{name}\"\n"),
    )
    .expect("write");
    let loaded = Config::load(&config).expect("valid");
    assert_eq!(loaded.cluster.expect("[cluster]").secret, b"0123456789abcdef");
}

#[test]
fn cluster_errors_name_the_key_and_line() {
    let short = temp_file("short-secret", b"too short  \n");
    let large = temp_file("large-secret", &[b'x'; 65 * 1024]);
    let empty = temp_file("empty-password", b"\n");
    let password = temp_file("a-password", b"pw\n");
    let missing = std::env::temp_dir().join("ssegate-no-such-dir/secret");
    let redis = "redis = \"redis://127.0.0.1:6379\"\n";
    // The cluster section starts on line 4, its first key (secret_file) is line 5.
    let cases: Vec<(&str, String, usize, Vec<String>)> = vec![
        (
            "no redis",
            with_cluster(""),
            4,
            vec!["`redis` in [cluster]".into(), "missing".into(), "redis://".into()],
        ),
        (
            "no secret file",
            format!("{MINIMAL}[cluster]\n{redis}"),
            4,
            vec![
                "`secret_file` in [cluster]".into(),
                "keys the digests naming streams in Redis".into(),
                "the same file on every instance".into(),
            ],
        ),
        (
            "secret too short",
            format!(
                "{MINIMAL}[cluster]\n{redis}secret_file = \"{}\"\n",
                short.display()
            ),
            6,
            vec!["`secret_file`".into(), "9 bytes".into(), "at least 16".into()],
        ),
        (
            "secret not a file",
            format!("{MINIMAL}[cluster]\n{redis}secret_file = \"/dev/zero\"\n"),
            6,
            vec!["`secret_file`".into(), "/dev/zero is not a regular file".into()],
        ),
        (
            "secret too large",
            format!(
                "{MINIMAL}[cluster]\n{redis}secret_file = \"{}\"\n",
                large.display()
            ),
            6,
            vec!["`secret_file`".into(), "larger than 64KiB".into()],
        ),
        (
            "secret unreadable",
            format!(
                "{MINIMAL}[cluster]\n{redis}secret_file = \"{}\"\n",
                missing.display()
            ),
            6,
            vec![
                "`secret_file`".into(),
                missing.display().to_string(),
                "No such file".into(),
            ],
        ),
        (
            "bad scheme",
            with_cluster("redis = \"http://127.0.0.1:6379\"\n"),
            6,
            vec![
                "`redis` in [cluster]".into(),
                "\"http\"".into(),
                "rediss://".into(),
            ],
        ),
        (
            "not a url",
            with_cluster("redis = \"127.0.0.1:6379\"\n"),
            6,
            vec!["`redis`".into(), "not a URL".into()],
        ),
        (
            "bad db",
            with_cluster("redis = \"redis://:hunter2@127.0.0.1:6379/x\"\n"),
            6,
            vec!["`redis`".into(), "database".into()],
        ),
        (
            "no host",
            with_cluster("redis = \"redis://\"\n"),
            6,
            vec!["`redis`".into()],
        ),
        (
            "unix without a path",
            with_cluster("redis = \"unix://host\"\n"),
            6,
            vec!["`redis`".into()],
        ),
        (
            "two passwords",
            with_cluster(&format!(
                "redis = \"redis://:hunter2@127.0.0.1\"\npassword_file = \"{}\"\n",
                password.display()
            )),
            7,
            vec!["`password_file`".into(), "line 6".into(), "drop one".into()],
        ),
        (
            "empty password",
            with_cluster(&format!("{redis}password_file = \"{}\"\n", empty.display())),
            7,
            vec!["`password_file`".into(), "empty".into()],
        ),
        (
            "bad node",
            with_cluster(&format!("{redis}node = \"web 1\"\n")),
            7,
            vec!["`node` in [cluster]".into(), "' '".into()],
        ),
        (
            "long node",
            with_cluster(&format!("{redis}node = \"{}\"\n", "n".repeat(65))),
            7,
            vec!["`node`".into(), "1 to 64 bytes".into()],
        ),
        (
            "empty node",
            with_cluster(&format!("{redis}node = \"\"\n")),
            7,
            vec!["`node`".into()],
        ),
        (
            "prefix with a brace",
            with_cluster(&format!("{redis}prefix = \"a{{b}}\"\n")),
            7,
            vec!["`prefix`".into(), "hash tag".into()],
        ),
        (
            "lease too short",
            with_cluster(&format!("{redis}lease = \"500ms\"\n")),
            7,
            vec!["`lease`".into(), "500ms".into(), "1s to 5m".into()],
        ),
        (
            "lease too long",
            with_cluster(&format!("{redis}lease = \"6m\"\n")),
            7,
            vec!["`lease`".into(), "5m".into()],
        ),
        (
            "lease not a duration",
            with_cluster(&format!("{redis}lease = 10\n")),
            7,
            vec!["`lease`".into(), "duration".into()],
        ),
        (
            "unknown key",
            with_cluster(&format!("{redis}leese = \"10s\"\n")),
            7,
            vec![
                "unknown key `leese` in [cluster]".into(),
                "did you mean `lease`".into(),
            ],
        ),
        (
            "shutdown_delay too long",
            format!("shutdown_delay = \"11m\"\n{MINIMAL}"),
            1,
            vec!["`shutdown_delay`".into(), "10m".into()],
        ),
        (
            "drain_spread too long",
            format!("drain_spread = \"1h\"\n{MINIMAL}"),
            1,
            vec!["`drain_spread`".into(), "10m".into()],
        ),
    ];
    for (name, text, line, needles) in cases {
        let (got_line, message) = error(&text);
        assert_eq!(got_line, line, "case {name}: wrong line in {message:?}\n{text}");
        for needle in needles {
            assert!(
                message.contains(&needle),
                "case {name}: {message:?} lacks {needle:?}"
            );
        }
        assert!(
            !message.contains("hunter2"),
            "case {name}: {message:?} shows the password"
        );
    }
}

#[test]
fn upgrades_are_protocol_tokens_and_never_h2c() {
    const ROUTE: &str = "[[route]]\npath = \"/\"\nupstream = \"http://a:1\"\n";
    let config = load(ROUTE).expect("valid");
    assert_eq!(config.routes[0].settings.upgrades, ["websocket"]);
    assert_eq!(
        config.routes[0].settings.upgrade_idle_timeout,
        Duration::from_secs(3600)
    );
    let config = load(&format!("{ROUTE}upgrades = [\"WebSocket\", \"mqtt/5\"]\n")).expect("valid");
    assert_eq!(config.routes[0].settings.upgrades, ["websocket", "mqtt/5"]);
    let config = load(&format!("{ROUTE}upgrades = []\n")).expect("valid");
    assert!(config.routes[0].settings.upgrades.is_empty());
    for (bad, says) in [
        ("\"h2c\"", "reach the app without passing ssegate"),
        ("\"HTTP/2.0\"", "reach the app without passing ssegate"),
        ("\"web socket\"", "is not a protocol name"),
        ("\"\"", "is not a protocol name"),
        ("\"websocket/\"", "is not a protocol name"),
    ] {
        let (line, message) = error(&format!("{ROUTE}upgrades = [{bad}]\n"));
        assert_eq!(line, 4, "{message}");
        assert!(
            message.contains("upgrades") && message.contains(says),
            "{bad}: {message}"
        );
    }
    let (_, message) = error(&format!("{ROUTE}upgrade_idle_timeout = \"0s\"\n"));
    assert!(message.contains("must be above zero"), "{message}");
}
