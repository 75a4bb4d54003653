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
    // Every key the effective config prints is mentioned in the example.
    for line in config.to_string().lines() {
        if let Some((key, _)) = line.split_once(" = ") {
            assert!(
                text.contains(&format!("\n{key} = ")),
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
        ("https upstream", "[[route]]\npath = \"/\"\nupstream = \"https://a:1\"\n", 3, &["`upstream`", "only http://"]),
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
        ("merge_slashes not a bool", "[defaults]\nmerge_slashes = \"yes\"\n", 2, &["`merge_slashes`"]),
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
