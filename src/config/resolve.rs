//! One `[[route]]` resolved into a [`Route`]: its keys over `[defaults]` over the built-in
//! defaults, each value checked, every error naming the route and the line.

use super::*;

pub(super) fn resolve_route(
    source: &Source<'_>,
    route: &RawRoute,
    defaults: &RawDefaults,
    dir: &Path,
) -> Result<Route, ConfigError> {
    let path = normalise_path(route.path.get_ref())
        .map_err(|why| source.error(route.path.span(), format!("key `path` in [[route]]: {why}")))?;
    let here = format!("[[route]] {path:?}");
    let fail = |span: std::ops::Range<usize>, key: &str, why: String| {
        source.error(span, format!("key `{key}` in {here}: {why}"))
    };
    let upstream = Upstream::parse_in(route.upstream.get_ref(), dir)
        .map_err(|why| fail(route.upstream.span(), "upstream", why))?;

    // Route > [defaults] > built-in: `pick!(key)` is the spanned value in force, if set anywhere.
    macro_rules! pick {
        ($key:ident) => {
            route.$key.as_ref().or(defaults.$key.as_ref())
        };
    }
    let upstream_tls = match upstream.transport() {
        Transport::Https(authority) => Some(super::upstream::resolve_tls(
            (authority, &route.upstream),
            pick!(upstream_ca),
            pick!(upstream_server_name),
            dir,
            &fail,
        )?),
        // Set in [defaults] for the https:// routes, these mean nothing to the others; set on
        // a route of another kind, they are a mistake.
        _ => {
            for (key, value) in [
                ("upstream_ca", &route.upstream_ca),
                ("upstream_server_name", &route.upstream_server_name),
            ] {
                if let Some(value) = value {
                    return Err(fail(
                        value.span(),
                        key,
                        format!("only an https:// upstream has TLS to set; this route's is {upstream}"),
                    ));
                }
            }
            None
        }
    };
    let ids = pick!(ids).map(|v| *v.get_ref());
    let mode = pick!(mode).map_or(StreamMode::Shared, |v| *v.get_ref());
    let ids = match (ids, mode) {
        (Some(IdMode::Inject), StreamMode::PerClient) => {
            let span = pick!(ids).map_or(0..0, Spanned::span);
            return Err(fail(
                span,
                "ids",
                "ids = \"inject\" cannot be used with mode = \"per-client\": every client has its own upstream request and no shared buffer, so an injected id could never be resumed from; use ids = \"passthrough\"".to_owned(),
            ));
        }
        (Some(ids), _) => ids,
        (None, StreamMode::PerClient) => IdMode::Passthrough,
        (None, StreamMode::Shared) => IdMode::Inject,
    };
    let stream_key = match pick!(stream_key) {
        Some(parts) => parts
            .get_ref()
            .iter()
            .map(|part| parse_key_part(part.get_ref()).map_err(|why| fail(part.span(), "stream_key", why)))
            .collect::<Result<Vec<_>, _>>()?,
        None => DEFAULT_STREAM_KEY
            .iter()
            .map(|part| parse_key_part(part).map_err(|why| fail(0..0, "stream_key", why)))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let size = |value: Option<&Spanned<value::SizeValue>>,
                key: &str,
                default: u64,
                min: u64|
     -> Result<usize, ConfigError> {
        let bytes = value.map_or(default, |v| v.get_ref().0);
        if bytes < min {
            return Err(fail(
                value.map_or(0..0, Spanned::span),
                key,
                format!("must be at least {min}"),
            ));
        }
        usize::try_from(bytes)
            .map_err(|_| fail(value.map_or(0..0, Spanned::span), key, "too large".to_owned()))
    };
    let max_event_bytes = size(
        pick!(max_event_bytes),
        "max_event_bytes",
        DEFAULT_MAX_EVENT_BYTES,
        16,
    )?;
    let buffer_bytes = size(pick!(buffer_bytes), "buffer_bytes", DEFAULT_BUFFER_BYTES, 1)?;
    if buffer_bytes < max_event_bytes {
        let span = pick!(buffer_bytes)
            .or(pick!(max_event_bytes))
            .map_or(0..0, Spanned::span);
        return Err(fail(
            span,
            "buffer_bytes",
            format!(
                "buffer_bytes ({}) is smaller than max_event_bytes ({}): an event that large could never be kept for resume",
                format_size(buffer_bytes as u64),
                format_size(max_event_bytes as u64)
            ),
        ));
    }
    let buffer_events = match pick!(buffer_events) {
        Some(v) if *v.get_ref() == 0 => {
            return Err(fail(v.span(), "buffer_events", "must be at least 1".to_owned()));
        }
        Some(v) => usize::try_from(*v.get_ref())
            .map_err(|_| fail(v.span(), "buffer_events", "too large".to_owned()))?,
        None => DEFAULT_BUFFER_EVENTS,
    };
    // Every duration has its bound (see `MAX_DURATION`).
    let duration = |value: Option<&Spanned<value::DurationValue>>, key: &str, default: Duration, max| {
        let duration = value.map_or(default, |v| v.get_ref().0);
        at_most(duration, max).map_err(|why| fail(value.map_or(0..0, Spanned::span), key, why))
    };
    let toggle = |value: Option<&Spanned<value::Toggle>>, key: &str, default: Duration, max| {
        let duration = value.map_or(Some(default), |v| v.get_ref().0);
        duration
            .map(|duration| at_most(duration, max))
            .transpose()
            .map_err(|why| fail(value.map_or(0..0, Spanned::span), key, why))
    };
    let reconnect_initial = duration(
        pick!(reconnect_initial),
        "reconnect_initial",
        DEFAULT_RECONNECT_INITIAL,
        MAX_RECONNECT,
    )?;
    let reconnect_max = duration(
        pick!(reconnect_max),
        "reconnect_max",
        DEFAULT_RECONNECT_MAX,
        MAX_RECONNECT,
    )?;
    if reconnect_initial.is_zero() || reconnect_initial > reconnect_max {
        let span = pick!(reconnect_initial)
            .or(pick!(reconnect_max))
            .map_or(0..0, Spanned::span);
        return Err(fail(
            span,
            "reconnect_initial",
            format!(
                "must be above zero and at most reconnect_max ({} > {})",
                format_duration(reconnect_initial),
                format_duration(reconnect_max)
            ),
        ));
    }
    let upstream_connect_timeout = duration(
        pick!(upstream_connect_timeout),
        "upstream_connect_timeout",
        DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
        MAX_TIMEOUT,
    )?;
    if upstream_connect_timeout.is_zero() {
        let span = pick!(upstream_connect_timeout).map_or(0..0, Spanned::span);
        return Err(fail(
            span,
            "upstream_connect_timeout",
            "must be above zero".to_owned(),
        ));
    }
    let mut response_headers = Vec::new();
    for (name, value) in pick!(response_headers).iter().flat_map(|table| table.get_ref()) {
        let bad = |why: String| fail(value.span(), "response_headers", why);
        let parsed = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| bad(format!("{name:?} is not a valid header name")))?;
        if FRAMING_HEADERS.contains(&parsed.as_str()) {
            return Err(bad(format!(
                "{name:?} describes the connection or the body's framing, which ssegate sets itself, or is one client's (a cookie)"
            )));
        }
        let value = HeaderValue::from_str(value.get_ref())
            .map_err(|_| bad(format!("the value of {name:?} is not a valid header value")))?;
        if response_headers.iter().any(|(known, _)| *known == parsed) {
            return Err(bad(format!(
                "{name:?} is set twice (header names are case-insensitive)"
            )));
        }
        response_headers.push((parsed, value));
    }
    // In name order, as `check` prints them.
    response_headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let upgrades = match pick!(upgrades) {
        Some(tokens) => tokens
            .get_ref()
            .iter()
            .map(|token| parse_upgrade(token.get_ref()).map_err(|why| fail(token.span(), "upgrades", why)))
            .collect::<Result<Vec<_>, _>>()?,
        None => DEFAULT_UPGRADES.iter().map(|&token| token.to_owned()).collect(),
    };
    let upgrade_idle_timeout = duration(
        pick!(upgrade_idle_timeout),
        "upgrade_idle_timeout",
        DEFAULT_UPGRADE_IDLE_TIMEOUT,
        MAX_TIMEOUT,
    )?;
    if upgrade_idle_timeout.is_zero() {
        let span = pick!(upgrade_idle_timeout).map_or(0..0, Spanned::span);
        return Err(fail(
            span,
            "upgrade_idle_timeout",
            "must be above zero".to_owned(),
        ));
    }
    let compressions =
        names(pick!(compress), &["br", "gzip"]).map_err(|(span, why)| fail(span, "compress", why))?;
    let compress = Compress {
        br: compressions.contains(&"br"),
        gzip: compressions.contains(&"gzip"),
    };
    let client = names(pick!(client_headers), &["x-real-ip", "forwarded"])
        .map_err(|(span, why)| fail(span, "client_headers", why))?;
    let client_headers = ClientHeaders {
        x_real_ip: client.contains(&"x-real-ip"),
        forwarded: client.contains(&"forwarded"),
    };
    let settings = Settings {
        retry: toggle(pick!(retry), "retry", DEFAULT_RETRY, MAX_RECONNECT)?,
        heartbeat: toggle(pick!(heartbeat), "heartbeat", DEFAULT_HEARTBEAT, MAX_HEARTBEAT)?,
        ids,
        mode,
        stream_key,
        buffer_events,
        buffer_bytes,
        buffer_age: toggle(pick!(buffer_age), "buffer_age", DEFAULT_BUFFER_AGE, MAX_DURATION)?,
        on_gap: pick!(on_gap).map_or(OnGap::Replay, |v| *v.get_ref()),
        linger: duration(pick!(linger), "linger", DEFAULT_LINGER, MAX_DURATION)?,
        coalesce: toggle(pick!(coalesce), "coalesce", DEFAULT_COALESCE, MAX_COALESCE)?,
        max_event_bytes,
        reconnect_initial,
        reconnect_max,
        upstream_connect_timeout,
        upstream_down_grace: toggle(
            pick!(upstream_down_grace),
            "upstream_down_grace",
            DEFAULT_UPSTREAM_DOWN_GRACE,
            MAX_DURATION,
        )?,
        max_clients: pick!(max_clients)
            .and_then(|v| v.get_ref().0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        upstream_response_timeout: toggle(
            pick!(upstream_response_timeout),
            "upstream_response_timeout",
            DEFAULT_UPSTREAM_RESPONSE_TIMEOUT,
            MAX_TIMEOUT,
        )?,
        max_request_body: pick!(max_request_body).map_or(DEFAULT_MAX_REQUEST_BODY, |v| v.get_ref().0),
        merge_slashes: pick!(merge_slashes).is_none_or(|v| *v.get_ref()),
        allow_encoded_slashes: pick!(allow_encoded_slashes).is_some_and(|v| *v.get_ref()),
        response_headers,
        upgrades,
        upgrade_idle_timeout,
        compress,
        client_headers,
    };
    Ok(Route {
        path,
        upstream,
        upstream_tls,
        sse: route.sse.as_ref().map_or(SseMode::Auto, |v| *v.get_ref()),
        settings,
    })
}

/// One protocol of `upgrades`: an HTTP token (RFC 9110 §5.6.2), optionally with a version
/// (`name/version`), kept in lower case. `h2c` is refused: a connection upgraded to HTTP/2 would
/// carry requests to the app that ssegate never routed nor checked.
fn parse_upgrade(token: &str) -> Result<String, String> {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let valid = !token.is_empty()
        && token
            .split_once('/')
            .map_or(token.chars().all(is_tchar), |(name, version)| {
                !name.is_empty()
                    && !version.is_empty()
                    && name.chars().all(is_tchar)
                    && version.chars().all(is_tchar)
            });
    if !valid {
        return Err(format!(
            "{token:?} is not a protocol name (a token such as \"websocket\")"
        ));
    }
    let token = token.to_ascii_lowercase();
    if token == "h2c" || token.starts_with("h2c/") || token == "http" || token.starts_with("http/") {
        return Err(format!(
            "{token:?} would switch the connection to HTTP requests that reach the app without passing ssegate's routing and checks; it cannot be allowed"
        ));
    }
    Ok(token)
}

/// Checks a route path and drops its trailing slash, so `/events/` and `/events` are one prefix.
fn normalise_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with \"/\""));
    }
    if path.contains(['?', '#']) || path.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(format!(
            "{path:?} must be a plain path prefix, without query, fragment or spaces"
        ));
    }
    let trimmed = path.trim_end_matches('/');
    // Request paths are normalised before routing (see `proxy::target`); a prefix that is not
    // in normal form could never match.
    if trimmed
        .split('/')
        .skip(1)
        .any(|segment| matches!(segment, "" | "." | ".."))
        || path.contains('\\')
    {
        return Err(format!(
            "{path:?} must be a normalised path: no empty, \".\" or \"..\" segments, no backslash"
        ));
    }
    let bytes = trimmed.as_bytes();
    for (i, _) in trimmed.match_indices('%') {
        let escape = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok());
        let value = escape.and_then(|hex| u8::from_str_radix(hex, 16).ok());
        let normal = match (escape, value) {
            (Some(hex), Some(v)) => {
                !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~'))
                    && hex == hex.to_ascii_uppercase()
            }
            _ => false,
        };
        if !normal {
            return Err(format!(
                "{path:?} must be a normalised path: percent-escapes only for reserved characters, in upper-case hex (requests are decoded before routing)"
            ));
        }
    }
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// The names of a list key (`compress`, `client_headers`), each one of `known` (ASCII case
/// aside), none twice; else the span of the offending name and why.
fn names(
    list: Option<&Spanned<value::NameList>>,
    known: &[&'static str],
) -> Result<Vec<&'static str>, (std::ops::Range<usize>, String)> {
    let mut found = Vec::new();
    for name in list.iter().flat_map(|list| &list.get_ref().0) {
        let Some(known) = known
            .iter()
            .find(|k| k.eq_ignore_ascii_case(name.get_ref().trim()))
        else {
            let choices: Vec<String> = known.iter().map(|k| format!("{k:?}")).collect();
            return Err((
                name.span(),
                format!(
                    "{:?} is not one of {} (or write \"off\" for none)",
                    name.get_ref(),
                    choices.join(", ")
                ),
            ));
        };
        if found.contains(known) {
            return Err((name.span(), format!("{known:?} is listed twice")));
        }
        found.push(*known);
    }
    Ok(found)
}

fn parse_key_part(part: &str) -> Result<KeyPart, String> {
    match part {
        "path" => Ok(KeyPart::Path),
        "query" => Ok(KeyPart::Query),
        _ => {
            let name = part.strip_prefix("header:").ok_or_else(|| {
                format!("{part:?} is not a key part; use \"path\", \"query\" or \"header:<name>\"")
            })?;
            HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                .map(KeyPart::Header)
                .map_err(|_| format!("{name:?} is not a valid header name"))
        }
    }
}
