//! Configuration: the TOML file, parsed once at start into typed, validated settings.
//!
//! Two layers: `raw` mirrors the file key for key (serde, `deny_unknown_fields`, every value
//! optional and spanned); this module turns it into [`Config`] with real types, applying the
//! precedence route > `[defaults]` > the `DEFAULT_*` constants. Every error names the file, the
//! line, the section and the key.

mod error;
mod raw;
mod value;

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;
use toml::Spanned;

pub use error::ConfigError;
use error::Source;
use raw::{RawConfig, RawDefaults, RawRoute};
pub use value::{
    format_duration, format_limit, format_size, format_toggle, parse_duration, parse_size, Cidr,
};

/// Where ssegate listens when `listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The `retry:` sent to clients.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// Idle time after which a heartbeat comment is written.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Events kept per stream for resume.
pub const DEFAULT_BUFFER_EVENTS: usize = 1000;
/// Bytes kept per stream for resume.
pub const DEFAULT_BUFFER_BYTES: u64 = 8 << 20;
/// How long an event stays resumable.
pub const DEFAULT_BUFFER_AGE: Duration = Duration::from_secs(600);
/// Bytes kept for resume across all streams together.
pub const DEFAULT_BUFFER_TOTAL_BYTES: u64 = 256 << 20;
/// How long a stream stays open after its last client left.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(30);
/// The longest a busy stream holds an event to send it with the next ones in one write.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(20);
/// The largest event (or line) accepted from an upstream.
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 1 << 20;
/// First upstream reconnect delay.
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(250);
/// Largest upstream reconnect delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Upstream TCP connect timeout.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long subscribers are kept waiting (with heartbeats) for an upstream that is down.
pub const DEFAULT_UPSTREAM_DOWN_GRACE: Duration = Duration::from_secs(60);
/// How long a stop waits for requests in flight.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a client's socket may stay unwritable before the connection is closed.
pub const DEFAULT_CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Client connections served at once, over all routes.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 50_000;
/// Streams (each with its upstream request) alive at once.
pub const DEFAULT_MAX_STREAMS: u64 = 10_000;
/// How long a client has to send a request head (slowloris protection).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle HTTP/1.1 keep-alive connection stays open between requests.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pass-through request waits for the upstream's response head.
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest any duration setting may be: a year. Durations are added to the clock for
/// deadlines and timers, so each has a bound that keeps that arithmetic far from overflow; past
/// a year no setting means anything useful.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);
/// The longest timeout (`header_read_timeout`, `keepalive_timeout`, `client_write_timeout`,
/// `upstream_connect_timeout`, `upstream_response_timeout`): a day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The longest reconnect delay (`retry`, `reconnect_initial`, `reconnect_max`): an hour. The
/// upstream backoff doubles its delay up to `reconnect_max`.
pub const MAX_RECONNECT: Duration = Duration::from_secs(3600);
/// The longest `heartbeat`: an hour; the idle timeouts heartbeats are for are minutes.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
/// The longest `coalesce`: a minute; an event held longer is no longer live.
pub const MAX_COALESCE: Duration = Duration::from_secs(60);
/// The largest request body passed through.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 64 << 20;
/// Streams one client may have opened, live or lingering, at once.
pub const DEFAULT_MAX_STREAMS_PER_CLIENT: u64 = 100;
/// New streams one client may open per second, on average.
pub const DEFAULT_NEW_STREAMS_PER_CLIENT: u64 = 20;
/// New streams one client may open at once before its rate applies.
pub const DEFAULT_NEW_STREAMS_BURST: u64 = 40;
/// The stream key when a route sets none: one user's stream is never served to another (their
/// credentials), nor one tenant's to another (the Host they asked for).
pub const DEFAULT_STREAM_KEY: &[&str] = &[
    "path",
    "query",
    "header:authorization",
    "header:cookie",
    "header:host",
    "header:origin",
];
/// Headers `response_headers` may not set: they describe the connection or the body's framing
/// (ssegate never compresses), or belong to one client (a cookie).
const FRAMING_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "upgrade",
    "te",
    "trailer",
    "set-cookie",
];
/// Headers a shared stream's key should hold, or it may serve one user's stream to another.
pub const PRIVATE_KEY_HEADERS: &[&str] = &["authorization", "cookie", "host"];

/// Which GET requests of a route are SSE subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SseMode {
    /// GET requests whose `Accept` includes `text/event-stream`.
    Auto,
    /// Every GET request.
    Always,
    /// None: everything is passed through.
    Never,
}

/// Where event ids come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdMode {
    /// ssegate gives every event without an id the id `<epoch>-<seq>`.
    Inject,
    /// The app's ids are kept and resumed by.
    Passthrough,
}

/// How subscriptions map to upstream requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamMode {
    /// One upstream request per stream key, shared by all its clients.
    Shared,
    /// One upstream request per client.
    PerClient,
}

/// What a client resuming from an id the buffer does not hold gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnGap {
    /// The whole buffer.
    Replay,
    /// Only new events.
    Live,
    /// An event of type `gap` with the requested id as data, then new events.
    Event,
}

/// One part of a stream key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The request path.
    Path,
    /// The query string, without `lastEventId`.
    Query,
    /// The values of a request header.
    Header(HeaderName),
}

/// The lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// `[tls]`: certificate and key of the public listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file with the certificate, then its chain.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Lowest version accepted.
    pub min_version: TlsVersion,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Admin listener address, if any.
    pub admin_listen: Option<SocketAddr>,
    /// TLS for the public listener, if set.
    pub tls: Option<TlsSettings>,
    /// Cap on bytes buffered for resume across all streams.
    pub buffer_total_bytes: u64,
    /// How long a stop waits for requests in flight.
    pub shutdown_grace: Duration,
    /// How long a client's socket may stay unwritable (a client that stopped reading).
    pub client_write_timeout: Duration,
    /// Client connections served at once; `None`: no limit but the process's file limit.
    pub max_connections: Option<u64>,
    /// Streams alive at once (each holds an upstream request); `usize::MAX` when "off".
    pub max_streams: usize,
    /// How long a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// How long an idle HTTP/1.1 keep-alive connection stays open between requests.
    pub keepalive_timeout: Duration,
    /// Serve HTTP/1.1 SSE subscriptions on the lean path (a small writer task per client)
    /// rather than with hyper (its 16 KiB of buffers per connection).
    pub lean_http1: bool,
    /// Peers whose `X-Forwarded-For` names the client (load balancers in front of ssegate).
    pub trusted_proxies: Vec<Cidr>,
    /// Streams one client may have opened (live or lingering); `None`: no limit.
    pub max_streams_per_client: Option<usize>,
    /// New streams one client may open per second, and at once; `None`: no limit.
    pub new_streams_per_client: Option<StreamRate>,
    /// Routes, in file order.
    pub routes: Vec<Route>,
}

/// How fast one client may open new streams: a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRate {
    /// Streams per second, on average.
    pub per_second: u64,
    /// Streams at once, before the rate applies.
    pub burst: u64,
}

/// One `[[route]]` with its effective settings.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix, without a trailing slash (except the root, `/`).
    pub path: String,
    /// Where requests go.
    pub upstream: Upstream,
    /// Which requests are SSE subscriptions.
    pub sse: SseMode,
    /// Effective SSE settings.
    pub settings: Settings,
}

/// An upstream base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix put before every request path; empty or starting with `/`, no trailing `/`.
    base_path: String,
}

/// Effective per-route SSE settings (route > `[defaults]` > built-in default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `retry:` sent first to clients; `None` sends none.
    pub retry: Option<Duration>,
    /// Idle time before a heartbeat comment; `None` sends none.
    pub heartbeat: Option<Duration>,
    /// Where ids come from.
    pub ids: IdMode,
    /// Shared or per-client upstream requests.
    pub mode: StreamMode,
    /// What makes two subscriptions the same stream.
    pub stream_key: Vec<KeyPart>,
    /// Events kept per stream.
    pub buffer_events: usize,
    /// Bytes kept per stream.
    pub buffer_bytes: usize,
    /// Longest time an event is kept; `None` keeps it until evicted by count or size.
    pub buffer_age: Option<Duration>,
    /// Resume from an id not in the buffer.
    pub on_gap: OnGap,
    /// How long a stream outlives its last client.
    pub linger: Duration,
    /// The longest a busy stream holds events to write several at once; `None`: never.
    pub coalesce: Option<Duration>,
    /// Largest accepted event.
    pub max_event_bytes: usize,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Upstream TCP connect timeout.
    pub upstream_connect_timeout: Duration,
    /// How long to keep subscribers of an unreachable upstream; `None`: forever.
    pub upstream_down_grace: Option<Duration>,
    /// Requests (SSE subscriptions included) in flight on the route; `None`: no limit.
    pub max_clients: Option<usize>,
    /// How long a pass-through request waits for the response head; `None`: forever.
    pub upstream_response_timeout: Option<Duration>,
    /// The largest request body passed through (larger: 413).
    pub max_request_body: u64,
    /// Whether the upstream gets the path with repeated slashes merged (routing always merges).
    pub merge_slashes: bool,
    /// Whether `%2F`, `%5C` and a backslash may appear in a path (else 400).
    pub allow_encoded_slashes: bool,
    /// Headers every SSE response and every passed-through response of the route carries,
    /// replacing the app's of the same name.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Config {
    /// What is valid but likely a mistake, one sentence each: `ssegate check` prints these, and
    /// ssegate logs them when it loads the config.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for route in &self.routes {
            let settings = &route.settings;
            if settings.mode != StreamMode::Shared || route.sse == SseMode::Never {
                continue;
            }
            let missing: Vec<&str> = PRIVATE_KEY_HEADERS
                .iter()
                .copied()
                .filter(|name| {
                    !settings
                        .stream_key
                        .iter()
                        .any(|part| matches!(part, KeyPart::Header(h) if h.as_str() == *name))
                })
                .collect();
            if !missing.is_empty() {
                warnings.push(format!(
                    "[[route]] {:?}: stream_key leaves out {}: subscriptions that differ only there share one stream, so one user's (or tenant's) events may reach another; fine for a public feed, else add them (and any other header the app reads credentials from, such as \"header:x-api-key\")",
                    route.path,
                    missing
                        .iter()
                        .map(|name| format!("\"header:{name}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        warnings
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::from_toml(&text, &path.display().to_string())?;
        // Files named in the config are found beside it, like an include.
        if let (Some(tls), Some(dir)) = (config.tls.as_mut(), path.parent()) {
            tls.cert = dir.join(&tls.cert);
            tls.key = dir.join(&tls.key);
        }
        Ok(config)
    }

    /// Parses and validates `text`; `origin` names it in errors (usually the file path).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let source = Source { origin, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
        let defaults = raw.defaults.unwrap_or_default();
        let listen = match &raw.listen {
            Some(addr) => parse_addr(&source, addr, "listen")?,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| source.error(0..0, "bad built-in listen"))?,
        };
        let admin_listen = match &raw.admin_listen {
            Some(addr) => {
                let parsed = parse_addr(&source, addr, "admin_listen")?;
                if parsed == listen {
                    return Err(source.error(addr.span(), "`admin_listen` must differ from `listen`"));
                }
                Some(parsed)
            }
            None => None,
        };
        if raw.routes.is_empty() {
            return Err(source.error(
                text.len()..text.len(),
                "no [[route]]: add at least one, with `path` and `upstream`",
            ));
        }
        let bounded = |value: &Option<Spanned<value::DurationValue>>, key: &str, default: Duration, max| {
            let span = value.as_ref().map_or(0..0, Spanned::span);
            let duration = value.as_ref().map_or(default, |v| v.get_ref().0);
            at_most(duration, max).map_err(|why| source.error(span, format!("key `{key}`: {why}")))
        };
        let positive = |value: &Option<Spanned<value::DurationValue>>, key: &str, default: Duration| {
            let duration = bounded(value, key, default, MAX_TIMEOUT)?;
            if duration.is_zero() {
                let span = value.as_ref().map_or(0..0, Spanned::span);
                return Err(source.error(span, format!("key `{key}`: must be above zero")));
            }
            Ok(duration)
        };
        let client_write_timeout = positive(
            &raw.client_write_timeout,
            "client_write_timeout",
            DEFAULT_CLIENT_WRITE_TIMEOUT,
        )?;
        let header_read_timeout = positive(
            &raw.header_read_timeout,
            "header_read_timeout",
            DEFAULT_HEADER_READ_TIMEOUT,
        )?;
        let keepalive_timeout = positive(
            &raw.keepalive_timeout,
            "keepalive_timeout",
            DEFAULT_KEEPALIVE_TIMEOUT,
        )?;
        let shutdown_grace = bounded(
            &raw.shutdown_grace,
            "shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            MAX_DURATION,
        )?;
        let mut trusted_proxies = Vec::new();
        for block in raw.trusted_proxies.iter().flat_map(|list| list.get_ref()) {
            trusted_proxies.push(
                Cidr::parse(block.get_ref())
                    .map_err(|why| source.error(block.span(), format!("key `trusted_proxies`: {why}")))?,
            );
        }
        let max_streams_per_client = raw
            .max_streams_per_client
            .as_ref()
            .map_or(Some(DEFAULT_MAX_STREAMS_PER_CLIENT), |v| v.get_ref().0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let burst = match &raw.new_streams_burst {
            Some(v) if *v.get_ref() == 0 => {
                return Err(source.error(v.span(), "key `new_streams_burst`: must be at least 1"));
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_NEW_STREAMS_BURST,
        };
        let new_streams_per_client = raw
            .new_streams_per_client
            .as_ref()
            .map_or(Some(DEFAULT_NEW_STREAMS_PER_CLIENT), |v| v.get_ref().0)
            .map(|per_second| StreamRate { per_second, burst });
        let max_connections = raw
            .max_connections
            .as_ref()
            .map_or(Some(DEFAULT_MAX_CONNECTIONS), |v| v.get_ref().0);
        let tls = match &raw.tls {
            None => None,
            Some(tls) => {
                let file = |value: &Spanned<String>, key: &str| {
                    if value.get_ref().trim().is_empty() {
                        return Err(source.error(
                            value.span(),
                            format!("key `{key}` in [tls]: a file path is needed"),
                        ));
                    }
                    Ok(PathBuf::from(value.get_ref()))
                };
                let min_version = match tls.min_version.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
                    None | Some(("1.2", _)) => TlsVersion::V1_2,
                    Some(("1.3", _)) => TlsVersion::V1_3,
                    Some((other, span)) => {
                        return Err(source.error(
                            span,
                            format!("key `min_version` in [tls]: {other:?} is not \"1.2\" or \"1.3\""),
                        ));
                    }
                };
                Some(TlsSettings {
                    cert: file(&tls.cert, "cert")?,
                    key: file(&tls.key, "key")?,
                    min_version,
                })
            }
        };
        let mut routes: Vec<(Route, std::ops::Range<usize>)> = Vec::new();
        for raw_route in &raw.routes {
            let route = resolve_route(&source, raw_route.get_ref(), &defaults)?;
            // Routing compares segments regardless of case (see `route::same_segment`), so
            // two prefixes that differ only in case would be one.
            if let Some((_, first)) = routes
                .iter()
                .find(|(r, _)| r.path.eq_ignore_ascii_case(&route.path))
            {
                let line = text[..first.start].matches('\n').count() + 1;
                return Err(source.error(
                    raw_route.get_ref().path.span(),
                    format!("key `path` in [[route]]: duplicate route path {:?}, already used by the route on line {line}", route.path),
                ));
            }
            routes.push((route, raw_route.span()));
        }
        Ok(Config {
            listen,
            admin_listen,
            tls,
            buffer_total_bytes: raw
                .buffer_total_bytes
                .map_or(DEFAULT_BUFFER_TOTAL_BYTES, |v| v.into_inner().0),
            shutdown_grace,
            client_write_timeout,
            max_connections,
            max_streams: raw
                .max_streams
                .as_ref()
                .map_or(Some(DEFAULT_MAX_STREAMS), |v| v.get_ref().0)
                .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            header_read_timeout,
            keepalive_timeout,
            lean_http1: raw.lean_http1.as_ref().is_none_or(|v| *v.get_ref()),
            trusted_proxies,
            max_streams_per_client,
            new_streams_per_client,
            routes: routes.into_iter().map(|(route, _)| route).collect(),
        })
    }
}

/// `duration`, if it is at most `max` (the key's bound); else why not, for the key's error.
fn at_most(duration: Duration, max: Duration) -> Result<Duration, String> {
    if duration <= max {
        return Ok(duration);
    }
    Err(format!(
        "{} is longer than {}, the most this setting allows",
        format_duration(duration),
        format_duration(max)
    ))
}

fn parse_addr(source: &Source<'_>, addr: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
    addr.get_ref().parse().map_err(|_| {
        source.error(
            addr.span(),
            format!(
                "key `{key}`: {:?} is not an address:port such as \"127.0.0.1:8080\"",
                addr.get_ref()
            ),
        )
    })
}

fn resolve_route(
    source: &Source<'_>,
    route: &RawRoute,
    defaults: &RawDefaults,
) -> Result<Route, ConfigError> {
    let path = normalise_path(route.path.get_ref())
        .map_err(|why| source.error(route.path.span(), format!("key `path` in [[route]]: {why}")))?;
    let here = format!("[[route]] {path:?}");
    let fail = |span: std::ops::Range<usize>, key: &str, why: String| {
        source.error(span, format!("key `{key}` in {here}: {why}"))
    };
    let upstream = Upstream::parse(route.upstream.get_ref())
        .map_err(|why| fail(route.upstream.span(), "upstream", why))?;

    // Route > [defaults] > built-in: `pick!(key)` is the spanned value in force, if set anywhere.
    macro_rules! pick {
        ($key:ident) => {
            route.$key.as_ref().or(defaults.$key.as_ref())
        };
    }
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
    };
    Ok(Route {
        path,
        upstream,
        sse: route.sse.as_ref().map_or(SseMode::Auto, |v| *v.get_ref()),
        settings,
    })
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

impl Upstream {
    /// Parses a base URL such as `http://127.0.0.1:3000` or `http://app:8000/api`.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let uri: Uri = text.parse().map_err(|e| format!("{text:?} is not a URL ({e})"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no scheme; write it like \"http://127.0.0.1:3000\""))?;
        if scheme != Scheme::HTTP {
            return Err(format!(
                "{text:?}: only http:// upstreams are supported; ssegate speaks plain HTTP to an app on loopback or a private network"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{text:?}: credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(format!("{text:?}: an upstream base URL cannot have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            scheme,
            authority,
            base_path,
        })
    }

    /// The upstream URL for a request: the base path, then the request's path and query. An
    /// asterisk-form target (`OPTIONS *`) stays `*`: it names the server, not a path.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        if path_and_query == "*" {
            return Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query("*")
                .build();
        }
        let mut joined = String::with_capacity(self.base_path.len() + path_and_query.len());
        joined.push_str(&self.base_path);
        joined.push_str(path_and_query);
        if !joined.starts_with('/') {
            joined.insert(0, '/');
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(joined)
            .build()
    }

    /// `host:port` of the upstream.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Path => f.write_str("path"),
            KeyPart::Query => f.write_str("query"),
            KeyPart::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// `text` as a TOML basic string (Rust's `{:?}` writes `\u{..}`, which TOML does not read):
/// `"` and `\` escaped, control characters as `\uXXXX`, everything else as it is.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() && c != '\t' => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn name_of<T: fmt::Debug>(value: T) -> String {
    // Enum names as the file writes them: `PerClient` → `per-client`.
    let debug = format!("{value:?}");
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The effective configuration as TOML: what `ssegate check` prints.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "listen = \"{}\"", self.listen)?;
        if let Some(admin) = self.admin_listen {
            writeln!(f, "admin_listen = \"{admin}\"")?;
        }
        writeln!(
            f,
            "buffer_total_bytes = \"{}\"",
            format_size(self.buffer_total_bytes)
        )?;
        writeln!(f, "shutdown_grace = \"{}\"", format_duration(self.shutdown_grace))?;
        writeln!(
            f,
            "client_write_timeout = \"{}\"",
            format_duration(self.client_write_timeout)
        )?;
        writeln!(f, "max_connections = {}", format_limit(self.max_connections))?;
        let streams = (self.max_streams != usize::MAX).then_some(self.max_streams as u64);
        writeln!(f, "max_streams = {}", format_limit(streams))?;
        writeln!(
            f,
            "header_read_timeout = \"{}\"",
            format_duration(self.header_read_timeout)
        )?;
        writeln!(
            f,
            "keepalive_timeout = \"{}\"",
            format_duration(self.keepalive_timeout)
        )?;
        writeln!(f, "lean_http1 = {}", self.lean_http1)?;
        let blocks: Vec<String> = self.trusted_proxies.iter().map(|b| format!("\"{b}\"")).collect();
        writeln!(f, "trusted_proxies = [{}]", blocks.join(", "))?;
        writeln!(
            f,
            "max_streams_per_client = {}",
            format_limit(self.max_streams_per_client.map(|n| n as u64))
        )?;
        writeln!(
            f,
            "new_streams_per_client = {}",
            format_limit(self.new_streams_per_client.map(|r| r.per_second))
        )?;
        if let Some(rate) = self.new_streams_per_client {
            writeln!(f, "new_streams_burst = {}", rate.burst)?;
        }
        if let Some(tls) = &self.tls {
            writeln!(f, "\n[tls]")?;
            writeln!(f, "cert = {}", quote(&tls.cert.display().to_string()))?;
            writeln!(f, "key = {}", quote(&tls.key.display().to_string()))?;
            let version = match tls.min_version {
                TlsVersion::V1_2 => "1.2",
                TlsVersion::V1_3 => "1.3",
            };
            writeln!(f, "min_version = \"{version}\"")?;
        }
        for route in &self.routes {
            let s = &route.settings;
            writeln!(f, "\n[[route]]")?;
            writeln!(f, "path = {}", quote(&route.path))?;
            writeln!(f, "upstream = {}", quote(&route.upstream.to_string()))?;
            writeln!(f, "sse = \"{}\"", name_of(route.sse))?;
            writeln!(f, "retry = \"{}\"", format_toggle(s.retry))?;
            writeln!(f, "heartbeat = \"{}\"", format_toggle(s.heartbeat))?;
            writeln!(f, "ids = \"{}\"", name_of(s.ids))?;
            writeln!(f, "mode = \"{}\"", name_of(s.mode))?;
            let key: Vec<String> = s.stream_key.iter().map(|p| quote(&p.to_string())).collect();
            writeln!(f, "stream_key = [{}]", key.join(", "))?;
            writeln!(f, "buffer_events = {}", s.buffer_events)?;
            writeln!(f, "buffer_bytes = \"{}\"", format_size(s.buffer_bytes as u64))?;
            writeln!(f, "buffer_age = \"{}\"", format_toggle(s.buffer_age))?;
            writeln!(f, "on_gap = \"{}\"", name_of(s.on_gap))?;
            writeln!(f, "linger = \"{}\"", format_duration(s.linger))?;
            writeln!(f, "coalesce = \"{}\"", format_toggle(s.coalesce))?;
            writeln!(
                f,
                "max_event_bytes = \"{}\"",
                format_size(s.max_event_bytes as u64)
            )?;
            writeln!(
                f,
                "reconnect_initial = \"{}\"",
                format_duration(s.reconnect_initial)
            )?;
            writeln!(f, "reconnect_max = \"{}\"", format_duration(s.reconnect_max))?;
            writeln!(
                f,
                "upstream_connect_timeout = \"{}\"",
                format_duration(s.upstream_connect_timeout)
            )?;
            writeln!(
                f,
                "upstream_down_grace = \"{}\"",
                format_toggle(s.upstream_down_grace)
            )?;
            writeln!(
                f,
                "max_clients = {}",
                format_limit(s.max_clients.map(|n| n as u64))
            )?;
            writeln!(
                f,
                "upstream_response_timeout = \"{}\"",
                format_toggle(s.upstream_response_timeout)
            )?;
            writeln!(f, "max_request_body = \"{}\"", format_size(s.max_request_body))?;
            writeln!(f, "merge_slashes = {}", s.merge_slashes)?;
            writeln!(f, "allow_encoded_slashes = {}", s.allow_encoded_slashes)?;
            let headers: Vec<String> = s
                .response_headers
                .iter()
                .map(|(name, value)| {
                    format!(
                        "{} = {}",
                        quote(name.as_str()),
                        quote(&String::from_utf8_lossy(value.as_bytes()))
                    )
                })
                .collect();
            writeln!(f, "response_headers = {{ {} }}", headers.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
