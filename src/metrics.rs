//! Metrics: every counter and gauge ssegate keeps, registered once, exported by the admin
//! listener in the Prometheus text format (by the `prometheus-client` crate).
//!
//! Hot paths never look a series up: each route resolves its own handles once
//! ([`RouteMetrics`]), and a handle is an `Arc` to an atomic.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `route` label: a route's path prefix.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabel {
    /// The route's `path`.
    pub route: String,
}

/// Labels of a pass-through request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// The route's `path`.
    pub route: String,
    /// Status class of the answer.
    pub class: String,
}

/// Outcome of a reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// All of ssegate's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Client connections open.
    pub connections: Gauge,
    /// Client connections refused for `max_connections`.
    pub connections_refused: Counter,
    /// Connections closed because the client stopped reading.
    pub write_stalls: Counter,
    /// Bytes buffered for resume across all streams.
    pub buffer_bytes: Gauge,
    /// Events evicted early to stay under `buffer_total_bytes`.
    pub cap_evictions: Counter,
    /// Stream tasks that panicked (their streams were ended cleanly).
    pub stream_task_panics: Counter,
    /// Reloads by outcome.
    pub reloads: Family<ReloadLabels, Counter>,
    /// The cluster's metrics (zero without `[cluster]`).
    pub cluster: ClusterMetrics,
    subscriptions: Family<RouteLabel, Gauge>,
    streams: Family<RouteLabel, Gauge>,
    upstream_streams: Family<RouteLabel, Gauge>,
    events_received: Family<RouteLabel, Counter>,
    events_delivered: Family<RouteLabel, Counter>,
    bytes_out: Family<RouteLabel, Counter>,
    resumes: Family<RouteLabel, Counter>,
    resume_gaps: Family<RouteLabel, Counter>,
    outage_gaps: Family<RouteLabel, Counter>,
    sse_passed_through: Family<RouteLabel, Counter>,
    slow_disconnects: Family<RouteLabel, Counter>,
    events_dropped: Family<RouteLabel, Counter>,
    repeats_dropped: Family<RouteLabel, Counter>,
    upstream_reconnects: Family<RouteLabel, Counter>,
    upstream_failures: Family<RouteLabel, Counter>,
    refused: Family<RouteLabel, Counter>,
    held: Family<RouteLabel, Gauge>,
    unsendable_ids: Family<RouteLabel, Counter>,
    held_total: Family<RouteLabel, Counter>,
    upgraded: Family<RouteLabel, Gauge>,
    upgrades: Family<RouteLabel, Counter>,
    upgrades_refused: Family<RouteLabel, Counter>,
    /// Requests refused before routing (bad target, Host or path): the client's fault.
    pub bad_requests: Counter,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

/// The cluster's metrics: how this instance stands with Redis and its streams' leases.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// 1 while Redis answers, 0 while this instance runs its streams locally.
    pub redis_up: Gauge,
    /// Streams whose upstream this instance reads for the cluster (it holds their lease).
    pub streams_led: Gauge,
    /// Streams this instance follows from Redis.
    pub streams_followed: Gauge,
    /// Streams read locally for want of Redis.
    pub streams_local: Gauge,
    /// Leases taken.
    pub leases_acquired: Counter,
    /// Leases lost (taken over, expired, or not confirmed in time).
    pub leases_lost: Counter,
    /// Appends Redis refused because this instance no longer held the lease.
    pub fenced_appends: Counter,
    /// Resumes served from Redis (the id was older than, or unknown to, the local buffer).
    pub backfills: Counter,
    /// Redis calls that failed (error or timeout).
    pub redis_errors: Counter,
    /// Redis call durations.
    pub redis_latency: Histogram,
}

/// One route's handles, resolved once.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// The route label.
    pub route: String,
    /// SSE subscriptions open.
    pub subscriptions: Gauge,
    /// Live streams.
    pub streams: Gauge,
    /// Upstream SSE requests currently streaming.
    pub upstream_streams: Gauge,
    /// Events received from upstreams and buffered.
    pub events_received: Counter,
    /// Events written to clients (one per client per event).
    pub events_delivered: Counter,
    /// Bytes written to SSE clients.
    pub bytes_out: Counter,
    /// Subscriptions resumed exactly from the buffer.
    pub resumes: Counter,
    /// Subscriptions whose Last-Event-ID was not in the buffer.
    pub resume_gaps: Counter,
    /// `gap` events sent to a stream's clients after its app was unreachable for a while.
    pub outage_gaps: Counter,
    /// Event-stream responses passed through raw on an `sse = "auto"` route.
    pub sse_passed_through: Counter,
    /// Clients disconnected for falling behind the buffer.
    pub slow_disconnects: Counter,
    /// Upstream events dropped for exceeding `max_event_bytes`.
    pub events_dropped: Counter,
    /// Events an upstream sent again after a reconnect, dropped.
    pub repeats_dropped: Counter,
    /// Upstream streams that ended or broke and were reopened.
    pub upstream_reconnects: Counter,
    /// Failed upstream attempts for streams.
    pub upstream_failures: Counter,
    /// Requests refused for the route's `max_clients`.
    pub refused: Counter,
    /// Subscriptions held now for their client's stream budget.
    pub held: Gauge,
    /// Subscriptions ever held for their client's stream budget.
    pub held_total: Counter,
    /// App ids a client could not send back, replaced or left out.
    pub unsendable_ids: Counter,
    /// Upgraded connections (WebSockets) open.
    pub upgraded: Gauge,
    /// Connections upgraded.
    pub upgrades: Counter,
    /// Upgrade requests to a protocol the route does not allow, passed as plain requests.
    pub upgrades_refused: Counter,
    /// Pass-through requests by status class, 1xx to 5xx.
    requests: [Counter; 5],
    /// Pass-through request durations.
    duration: Histogram,
    metrics: std::sync::Arc<Metrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under the `ssegate_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ssegate");
        let metrics = Metrics {
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            write_stalls: Counter::default(),
            buffer_bytes: Gauge::default(),
            cap_evictions: Counter::default(),
            stream_task_panics: Counter::default(),
            reloads: Family::default(),
            cluster: ClusterMetrics {
                redis_up: Gauge::default(),
                streams_led: Gauge::default(),
                streams_followed: Gauge::default(),
                streams_local: Gauge::default(),
                leases_acquired: Counter::default(),
                leases_lost: Counter::default(),
                fenced_appends: Counter::default(),
                backfills: Counter::default(),
                redis_errors: Counter::default(),
                // 0.1 ms to about 3 s.
                redis_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            },
            subscriptions: Family::default(),
            streams: Family::default(),
            upstream_streams: Family::default(),
            events_received: Family::default(),
            events_delivered: Family::default(),
            bytes_out: Family::default(),
            resumes: Family::default(),
            resume_gaps: Family::default(),
            outage_gaps: Family::default(),
            sse_passed_through: Family::default(),
            slow_disconnects: Family::default(),
            events_dropped: Family::default(),
            repeats_dropped: Family::default(),
            upstream_reconnects: Family::default(),
            upstream_failures: Family::default(),
            refused: Family::default(),
            held: Family::default(),
            held_total: Family::default(),
            unsendable_ids: Family::default(),
            upgraded: Family::default(),
            upgrades: Family::default(),
            upgrades_refused: Family::default(),
            bad_requests: Counter::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "client_connections",
            "Client connections open",
            metrics.connections.clone(),
        );
        r.register(
            "client_connections_refused",
            "Client connections refused for max_connections",
            metrics.connections_refused.clone(),
        );
        r.register(
            "client_write_stalls",
            "Connections closed because the client stopped reading",
            metrics.write_stalls.clone(),
        );
        r.register(
            "buffer_bytes",
            "Bytes buffered for resume across all streams",
            metrics.buffer_bytes.clone(),
        );
        r.register(
            "buffer_cap_evictions",
            "Events evicted early to stay under buffer_total_bytes",
            metrics.cap_evictions.clone(),
        );
        r.register(
            "stream_task_panics",
            "Stream tasks that panicked; their clients' responses were ended so they resume by id",
            metrics.stream_task_panics.clone(),
        );
        r.register("reloads", "Config reloads by result", metrics.reloads.clone());
        let c = &metrics.cluster;
        r.register(
            "cluster_redis_up",
            "1 while Redis answers; 0 while streams are read locally",
            c.redis_up.clone(),
        );
        r.register(
            "cluster_streams_led",
            "Streams whose upstream this instance reads for the cluster",
            c.streams_led.clone(),
        );
        r.register(
            "cluster_streams_followed",
            "Streams this instance follows from Redis",
            c.streams_followed.clone(),
        );
        r.register(
            "cluster_streams_local",
            "Streams read locally for want of Redis",
            c.streams_local.clone(),
        );
        r.register(
            "cluster_leases_acquired",
            "Stream leases taken",
            c.leases_acquired.clone(),
        );
        r.register(
            "cluster_leases_lost",
            "Stream leases lost: taken over, expired or not confirmed in time",
            c.leases_lost.clone(),
        );
        r.register(
            "cluster_fenced_appends",
            "Appends Redis refused because this instance no longer held the stream's lease",
            c.fenced_appends.clone(),
        );
        r.register(
            "cluster_backfills",
            "Resumes served from Redis (older than, or unknown to, the local buffer)",
            c.backfills.clone(),
        );
        r.register(
            "cluster_redis_errors",
            "Redis calls that failed or timed out",
            c.redis_errors.clone(),
        );
        r.register(
            "cluster_redis_latency_seconds",
            "Redis call durations",
            c.redis_latency.clone(),
        );
        r.register(
            "sse_subscriptions",
            "SSE subscriptions open, by route",
            metrics.subscriptions.clone(),
        );
        r.register("streams", "Live streams, by route", metrics.streams.clone());
        r.register(
            "upstream_streams",
            "Upstream SSE requests streaming now, by route",
            metrics.upstream_streams.clone(),
        );
        r.register(
            "events_received",
            "Events received from upstreams, by route",
            metrics.events_received.clone(),
        );
        r.register(
            "events_delivered",
            "Events written to clients (one per client per event), by route",
            metrics.events_delivered.clone(),
        );
        r.register(
            "sse_bytes_out",
            "Bytes written to SSE clients, by route",
            metrics.bytes_out.clone(),
        );
        r.register(
            "resumes",
            "Subscriptions resumed exactly from the buffer, by route",
            metrics.resumes.clone(),
        );
        r.register(
            "resume_gaps",
            "Subscriptions whose Last-Event-ID was not in the buffer, by route",
            metrics.resume_gaps.clone(),
        );
        r.register(
            "upstream_outage_gaps",
            "Gap events sent to a stream's clients after its app was unreachable, by route",
            metrics.outage_gaps.clone(),
        );
        r.register(
            "sse_passed_through",
            "Event-stream responses passed through raw on an sse = \"auto\" route (the request had no Accept: text/event-stream), by route",
            metrics.sse_passed_through.clone(),
        );
        r.register(
            "slow_client_disconnects",
            "Clients disconnected for falling behind the buffer, by route",
            metrics.slow_disconnects.clone(),
        );
        r.register(
            "events_dropped",
            "Upstream events dropped for exceeding max_event_bytes, by route",
            metrics.events_dropped.clone(),
        );
        r.register(
            "events_repeated",
            "Events an upstream sent again after a reconnect, dropped, by route",
            metrics.repeats_dropped.clone(),
        );
        r.register(
            "upstream_reconnects",
            "Upstream streams reopened after they ended or broke, by route",
            metrics.upstream_reconnects.clone(),
        );
        r.register(
            "upstream_failures",
            "Failed upstream attempts for streams, by route",
            metrics.upstream_failures.clone(),
        );
        r.register(
            "route_refused",
            "Requests refused for the route's max_clients, by route",
            metrics.refused.clone(),
        );
        r.register(
            "held_subscriptions",
            "SSE subscriptions held now until their client may open another stream, by route",
            metrics.held.clone(),
        );
        r.register(
            "subscriptions_held",
            "SSE subscriptions held until their client could open another stream, by route",
            metrics.held_total.clone(),
        );
        r.register(
            "unsendable_ids",
            "App event ids a client could not send back as Last-Event-ID, replaced (inject) or left out (passthrough), by route",
            metrics.unsendable_ids.clone(),
        );
        r.register(
            "upgraded_connections",
            "Upgraded connections (WebSockets) open, by route",
            metrics.upgraded.clone(),
        );
        r.register(
            "upgrades",
            "Connections upgraded (WebSockets) after the app's 101, by route",
            metrics.upgrades.clone(),
        );
        r.register(
            "upgrades_refused",
            "Upgrade requests to a protocol the route does not allow, passed as plain requests, by route",
            metrics.upgrades_refused.clone(),
        );
        r.register(
            "bad_requests",
            "Requests refused with 400 before routing: malformed target, Host or path",
            metrics.bad_requests.clone(),
        );
        r.register(
            "requests",
            "Pass-through requests, by route and status class",
            metrics.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Pass-through request duration until the response body ended, by route",
            metrics.request_duration.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// The handles of `route`.
    pub fn route(self: &std::sync::Arc<Self>, route: &str) -> RouteMetrics {
        let label = RouteLabel {
            route: route.to_owned(),
        };
        RouteMetrics {
            route: route.to_owned(),
            subscriptions: self.subscriptions.get_or_create_owned(&label),
            streams: self.streams.get_or_create_owned(&label),
            upstream_streams: self.upstream_streams.get_or_create_owned(&label),
            events_received: self.events_received.get_or_create_owned(&label),
            events_delivered: self.events_delivered.get_or_create_owned(&label),
            bytes_out: self.bytes_out.get_or_create_owned(&label),
            resumes: self.resumes.get_or_create_owned(&label),
            resume_gaps: self.resume_gaps.get_or_create_owned(&label),
            outage_gaps: self.outage_gaps.get_or_create_owned(&label),
            sse_passed_through: self.sse_passed_through.get_or_create_owned(&label),
            slow_disconnects: self.slow_disconnects.get_or_create_owned(&label),
            events_dropped: self.events_dropped.get_or_create_owned(&label),
            repeats_dropped: self.repeats_dropped.get_or_create_owned(&label),
            upstream_reconnects: self.upstream_reconnects.get_or_create_owned(&label),
            upstream_failures: self.upstream_failures.get_or_create_owned(&label),
            refused: self.refused.get_or_create_owned(&label),
            held: self.held.get_or_create_owned(&label),
            held_total: self.held_total.get_or_create_owned(&label),
            unsendable_ids: self.unsendable_ids.get_or_create_owned(&label),
            upgraded: self.upgraded.get_or_create_owned(&label),
            upgrades: self.upgrades.get_or_create_owned(&label),
            upgrades_refused: self.upgrades_refused.get_or_create_owned(&label),
            // Resolved now, like the rest: a request that ends after its route was removed by
            // a reload must not bring the route's series back.
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                self.requests.get_or_create_owned(&RequestLabels {
                    route: route.to_owned(),
                    class: class.to_owned(),
                })
            }),
            duration: self.request_duration.get_or_create_owned(&label),
            metrics: self.clone(),
        }
    }

    /// Drops every series of the route `route` (a reload removed it), so the exposition lists
    /// only routes that exist. Handles still held by its last requests keep counting, unseen.
    pub fn forget_route(&self, route: &str) {
        let label = RouteLabel {
            route: route.to_owned(),
        };
        for family in [
            &self.subscriptions,
            &self.streams,
            &self.upstream_streams,
            &self.held,
            &self.upgraded,
        ] {
            family.remove(&label);
        }
        for family in [
            &self.events_received,
            &self.events_delivered,
            &self.bytes_out,
            &self.resumes,
            &self.resume_gaps,
            &self.outage_gaps,
            &self.sse_passed_through,
            &self.slow_disconnects,
            &self.events_dropped,
            &self.repeats_dropped,
            &self.upstream_reconnects,
            &self.upstream_failures,
            &self.refused,
            &self.held_total,
            &self.unsendable_ids,
            &self.upgrades,
            &self.upgrades_refused,
        ] {
            family.remove(&label);
        }
        self.request_duration.remove(&label);
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            self.requests.remove(&RequestLabels {
                route: route.to_owned(),
                class: class.to_owned(),
            });
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl RouteMetrics {
    /// Records a finished pass-through request.
    pub fn request(&self, status: http::StatusCode, seconds: f64) {
        let class = usize::from((status.as_u16() / 100).clamp(1, 5)) - 1;
        self.requests[class].inc();
        self.duration.observe(seconds);
    }

    /// The metrics these handles belong to.
    pub fn all(&self) -> &Metrics {
        &self.metrics
    }
}
