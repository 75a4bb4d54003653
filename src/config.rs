//! Configuration: the TOML file, parsed once at start into typed, validated settings.
//!
//! Two layers: `raw` mirrors the file key for key (serde, `deny_unknown_fields`, every value
//! optional and spanned); this module turns it into [`Config`] with real types, applying the
//! precedence route > `[defaults]` > the `DEFAULT_*` constants. Every error names the file, the
//! line, the section and the key.

mod cluster;
mod defaults;
mod error;
mod print;
mod raw;
mod resolve;
mod upstream;
mod value;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;
use toml::Spanned;

use defaults::FRAMING_HEADERS;
pub use defaults::*;
pub use error::ConfigError;
use error::Source;
use raw::{RawConfig, RawDefaults, RawRoute};
use resolve::resolve_route;
pub use upstream::{CaFile, Transport, Upstream, UpstreamTls};
pub use value::{
    format_duration, format_limit, format_size, format_toggle, parse_duration, parse_size, Cidr,
};

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

/// The content codings a route may give its passed-through responses (`compress`); none by
/// default, so the app's bytes reach the client as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compress {
    /// Brotli (`br`).
    pub br: bool,
    /// gzip.
    pub gzip: bool,
}

impl Compress {
    /// Whether no coding is on.
    pub fn is_off(&self) -> bool {
        !self.br && !self.gzip
    }
}

/// The headers besides `X-Forwarded-*` that tell a route's upstream who the client is
/// (`client_headers`); none by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientHeaders {
    /// `X-Real-IP`: the client's address, as ssegate determined it.
    pub x_real_ip: bool,
    /// `Forwarded` (RFC 7239): the chain of hops, ssegate's own last.
    pub forwarded: bool,
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
    /// Several instances sharing streams through Redis (`[cluster]`); `None`: one process.
    pub cluster: Option<ClusterConfig>,
    /// How long a stop keeps serving after `/readyz` turned 503, so a load balancer stops
    /// sending new clients first.
    pub shutdown_delay: Duration,
    /// Over how long a stop ends its SSE responses (in jittered batches), so their clients do
    /// not all reconnect to the other instances at once.
    pub drain_spread: Duration,
    /// Where `[cluster]`'s secret and password came from (for printing).
    pub(crate) cluster_files: Option<cluster::ClusterFiles>,
}

/// `[cluster]`: the Redis server instances share streams through, and this instance's part.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://`, `rediss://` or `unix://` URL (the password, if any, already removed when
    /// `password_file` gave one).
    pub redis: String,
    /// The password, from the URL or `password_file`.
    pub password: Option<String>,
    /// This instance's name, unique in the cluster (lease holders are shown by it).
    pub node: String,
    /// How long a stream's lease lasts without renewal.
    pub lease: Duration,
    /// Prefix of every Redis key.
    pub prefix: String,
    /// The shared secret that keys the digests naming streams in Redis.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &self.redis)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("node", &self.node)
            .field("lease", &self.lease)
            .field("prefix", &self.prefix)
            .field("secret", &"<hidden>")
            .finish()
    }
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
    /// How an `https://` upstream is trusted; `None` for the other transports.
    pub upstream_tls: Option<UpstreamTls>,
    /// Which requests are SSE subscriptions.
    pub sse: SseMode,
    /// Effective SSE settings.
    pub settings: Settings,
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
    /// Protocols a client may upgrade a request to (lower-case tokens, e.g. `websocket`).
    pub upgrades: Vec<String>,
    /// How long an upgraded connection stays open with no byte either way.
    pub upgrade_idle_timeout: Duration,
    /// The content codings passed-through responses may be given, by the client's
    /// `Accept-Encoding`.
    pub compress: Compress,
    /// Headers besides `X-Forwarded-*` that tell the upstream who the client is.
    pub client_headers: ClientHeaders,
}

impl Config {
    /// What is valid but likely a mistake, one sentence each: `ssegate check` prints these, and
    /// ssegate logs them when it loads the config.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for route in &self.routes {
            if let Some(warning) = route.upstream.warning() {
                warnings.push(format!("[[route]] {:?}: {warning}", route.path));
            }
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
        // Files named in the config are found beside it, like an include.
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut config = Config::parse(&text, &path.display().to_string(), dir)?;
        if let Some(tls) = config.tls.as_mut() {
            tls.cert = dir.join(&tls.cert);
            tls.key = dir.join(&tls.key);
        }
        Ok(config)
    }

    /// Parses and validates `text`; `origin` names it in errors (usually the file path). Files
    /// it names (`[cluster]`'s `secret_file`, `password_file`, `upstream_ca`, a `unix:` socket)
    /// are looked for relative to the current directory.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse(text, origin, Path::new(""))
    }

    /// [`Config::from_toml`], with the files it names read relative to `dir`.
    fn parse(text: &str, origin: &str, dir: &Path) -> Result<Config, ConfigError> {
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
                // Port 0 twice is two ports the system picks.
                if parsed == listen && parsed.port() != 0 {
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
        let shutdown_delay = bounded(
            &raw.shutdown_delay,
            "shutdown_delay",
            DEFAULT_SHUTDOWN_DELAY,
            MAX_STOP_DELAY,
        )?;
        let drain_spread = bounded(
            &raw.drain_spread,
            "drain_spread",
            DEFAULT_DRAIN_SPREAD,
            MAX_STOP_DELAY,
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
        let (cluster, cluster_files) = match &raw.cluster {
            Some(section) => {
                let (cluster, files) = cluster::resolve_cluster(&source, section, dir)?;
                (Some(cluster), Some(files))
            }
            None => (None, None),
        };
        let mut routes: Vec<(Route, std::ops::Range<usize>)> = Vec::new();
        for raw_route in &raw.routes {
            let route = resolve_route(&source, raw_route.get_ref(), &defaults, dir)?;
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
            cluster,
            shutdown_delay,
            drain_spread,
            cluster_files,
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

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Path => f.write_str("path"),
            KeyPart::Query => f.write_str("query"),
            KeyPart::Header(name) => write!(f, "header:{name}"),
        }
    }
}

#[cfg(test)]
mod tests;
