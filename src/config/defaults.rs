//! The defaults of every setting (`DEFAULT_*`), the bounds of every duration (`MAX_*`), and
//! the header lists the checks use.

use std::time::Duration;

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
/// How long a stop keeps serving after `/readyz` turned 503 (none: a process alone needs no
/// load balancer to notice first).
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// Over how long a stop ends its SSE responses (none: all at once).
pub const DEFAULT_DRAIN_SPREAD: Duration = Duration::ZERO;
/// The longest `shutdown_delay` and `drain_spread`: ten minutes; a deploy waits for both.
pub const MAX_STOP_DELAY: Duration = Duration::from_secs(600);
/// How long a stream's lease in Redis lasts without renewal: how long a dead leader's streams
/// may go unread before another instance takes them.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// The shortest `lease`: renewals travel to Redis and back well inside it.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
/// The longest `lease`: five minutes; past it a dead leader leaves its streams unread too long.
pub const MAX_LEASE: Duration = Duration::from_secs(300);
/// The prefix of every Redis key.
pub const DEFAULT_PREFIX: &str = "ssegate";
/// The shortest shared secret (`secret_file`), in bytes.
pub const MIN_SECRET_BYTES: usize = 16;
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
/// The protocols a route lets a client upgrade to, when it names none.
pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];
/// How long an upgraded connection (a WebSocket) stays open with no byte either way.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
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
/// and coding (ssegate's own: it compresses only per the route's `compress`), or belong to one
/// client (a cookie).
pub(super) const FRAMING_HEADERS: &[&str] = &[
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
