//! Routes ready to serve, and the router that picks one: longest path-prefix match on segment
//! boundaries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::header::{HeaderMap, HeaderValue};

use crate::config::{Config, Route};
use crate::metrics::{Metrics, RouteMetrics};
use crate::upstream::UpstreamClient;

/// One route, ready to serve: its settings, its pooled upstream client, its metrics.
#[derive(Debug)]
pub struct RouteEntry {
    /// The route's validated config.
    pub config: Route,
    /// The pooled client to its upstream.
    pub client: UpstreamClient,
    /// The route's metric handles.
    pub metrics: RouteMetrics,
    /// Requests (SSE subscriptions included) in flight on this route, for `max_clients`. Shared
    /// by every version of the route across reloads.
    active: Arc<AtomicUsize>,
    /// The log has said that this route passes event streams through raw.
    told_passed_through: AtomicBool,
    /// The app's CORS answer (its `Access-Control-*` response headers) last seen on this route
    /// for each `Origin`, for subscriptions answered before their stream's app answers.
    cors: Mutex<HashMap<HeaderValue, HeaderMap>>,
}

/// Origins whose CORS answer a route remembers; past it, it starts afresh.
const MAX_CORS_ORIGINS: usize = 256;

/// A place among a route's active requests, held until the response ends.
#[derive(Debug)]
pub struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RouteEntry {
    /// A route with a fresh client for its upstream; `previous` is the same path's entry in the
    /// config being replaced, whose active count carries over.
    pub fn new(config: Route, metrics: &Arc<Metrics>, previous: Option<&RouteEntry>) -> RouteEntry {
        RouteEntry {
            client: UpstreamClient::new(
                config.upstream.clone(),
                config.upstream_tls.as_ref(),
                config.settings.upstream_connect_timeout,
            ),
            metrics: metrics.route(&config.path),
            active: previous.map_or_else(Arc::default, |p| p.active.clone()),
            told_passed_through: AtomicBool::new(false),
            cors: Mutex::new(
                previous
                    .map(|p| p.cors.lock().unwrap_or_else(PoisonError::into_inner).clone())
                    .unwrap_or_default(),
            ),
            config,
        }
    }

    /// A router over the routes of `config`, carrying over state from `previous`.
    pub fn router(
        config: &Config,
        metrics: &Arc<Metrics>,
        previous: Option<&Router<RouteEntry>>,
    ) -> Router<RouteEntry> {
        Router::new(config.routes.iter().map(|route| {
            let before = previous.and_then(|p| p.get(&route.path));
            (
                route.path.clone(),
                Arc::new(RouteEntry::new(route.clone(), metrics, before.map(AsRef::as_ref))),
            )
        }))
    }

    /// An event-stream response went through this `sse = "auto"` route raw: its request was
    /// not taken as a subscription (no `Accept: text/event-stream`, as with plain curl), so it
    /// got no ids, heartbeats, resume or fan-out. Counted; said once per route, with the fix.
    pub fn sse_passed_through(&self, path: &str) {
        self.metrics.sse_passed_through.inc();
        if !self.told_passed_through.swap(true, Ordering::Relaxed) {
            tracing::warn!(route = %self.config.path, %path, "the app answered a GET on this sse = \"auto\" route with an event stream, passed through raw (no ids, heartbeats, resume or fan-out) because the request had no Accept: text/event-stream; send that header (EventSource does), or set sse = \"always\" on the route");
        }
    }

    /// Remembers the app's CORS answer to a request from `origin`, from the headers of its
    /// event-stream response.
    pub fn remember_cors(&self, origin: Option<&HeaderValue>, app: &HeaderMap) {
        let Some(origin) = origin else { return };
        let mut cors = HeaderMap::new();
        for (name, value) in app {
            if name.as_str().starts_with("access-control-") {
                cors.append(name.clone(), value.clone());
            }
        }
        let mut known = self.cors.lock().unwrap_or_else(PoisonError::into_inner);
        if cors.is_empty() {
            known.remove(origin);
            return;
        }
        if known.len() >= MAX_CORS_ORIGINS && !known.contains_key(origin) {
            known.clear();
        }
        known.insert(origin.clone(), cors);
    }

    /// The app's last CORS answer on this route for `origin`, if it gave one: what a
    /// subscription answered before its stream's app answers (held for its client's budget, or
    /// the app down) carries, so the browser does not fail its EventSource for good for want
    /// of it.
    pub fn cors_for(&self, origin: Option<&HeaderValue>) -> HeaderMap {
        origin
            .and_then(|origin| {
                self.cors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(origin)
                    .cloned()
            })
            .unwrap_or_default()
    }

    /// Takes a place among the route's active requests, or `None` at its `max_clients`.
    pub fn admit(&self) -> Option<Admission> {
        let limit = self.config.settings.max_clients.unwrap_or(usize::MAX);
        let mut current = self.active.load(Ordering::Acquire);
        loop {
            if current >= limit {
                self.metrics.refused.inc();
                return None;
            }
            match self
                .active
                .compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Admission(self.active.clone())),
                Err(now) => current = now,
            }
        }
    }
}

/// Finds the route for a request path among routes of type `R`, each with a path prefix.
#[derive(Debug)]
pub struct Router<R> {
    /// Longest prefix first, so the first match is the longest.
    routes: Vec<(String, Arc<R>)>,
}

impl<R> Router<R> {
    /// A router over `(prefix, route)` pairs. Prefixes have no trailing slash except `/` itself.
    pub fn new(routes: impl IntoIterator<Item = (String, Arc<R>)>) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Router { routes }
    }

    /// The route with exactly this prefix.
    pub fn get(&self, prefix: &str) -> Option<&Arc<R>> {
        self.routes
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, route)| route)
    }

    /// Every route, longest prefix first.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<R>> {
        self.routes.iter().map(|(_, route)| route)
    }

    /// The route whose prefix is the longest one matching `path` on a segment boundary:
    /// `/events` matches `/events` and `/events/x`, never `/eventsfoo`.
    pub fn find(&self, path: &str) -> Option<&Arc<R>> {
        self.routes
            .iter()
            .find(|(prefix, _)| matches(prefix, path))
            .map(|(_, route)| route)
    }
}

/// Whether `prefix` matches `path` on segment boundaries, each segment compared as some app
/// behind ssegate may read it (see [`same_segment`]).
fn matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let mut segments = path.split('/');
    prefix
        .split('/')
        .all(|want| segments.next().is_some_and(|have| same_segment(want, have)))
}

/// Whether the request path segment `have` names the route segment `want`, for an app that
/// reads paths leniently: path parameters ignored (`admin;jsessionid=x`, which Java servers
/// strip), ASCII case ignored (case-insensitive servers), trailing dots ignored (Windows). A
/// spelling one app may read as a route's path goes to that route, never around it through a
/// wider one; the upstream still gets the path as sent (normalised).
pub(crate) fn same_segment(want: &str, have: &str) -> bool {
    fn lenient(segment: &str) -> &str {
        let segment = segment.split(';').next().unwrap_or(segment);
        match segment.trim_end_matches('.') {
            "" => segment,
            trimmed => trimmed,
        }
    }
    lenient(want).eq_ignore_ascii_case(lenient(have))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let router = Router::new(
            ["/", "/events", "/events/admin", "/api"].map(|p| (p.to_owned(), Arc::new(p.to_owned()))),
        );
        let cases = [
            ("/events", Some("/events")),
            ("/events/", Some("/events")),
            ("/events/x", Some("/events")),
            ("/eventsfoo", Some("/")),
            ("/events/admin/1", Some("/events/admin")),
            ("/events/administrator", Some("/events")),
            ("/api", Some("/api")),
            ("/", Some("/")),
            ("/other", Some("/")),
        ];
        for (path, expected) in cases {
            assert_eq!(router.find(path).map(|r| r.as_str()), expected, "path {path}");
        }
        // Spellings an app may read as a route's path go to that route.
        for (path, expected) in [
            ("/events;jsessionid=1/x", "/events"),
            ("/EVENTS/Admin/1", "/events/admin"),
            ("/events./admin../1", "/events/admin"),
            ("/events/admin;x", "/events/admin"),
            ("/events%3B/x", "/"),
        ] {
            assert_eq!(
                router.find(path).map(|r| r.as_str()),
                Some(expected),
                "path {path}"
            );
        }
        let no_root = Router::new([("/events".to_owned(), Arc::new(()))]);
        assert!(no_root.find("/eventsfoo").is_none());
        assert!(no_root.find("/").is_none());
    }
}
