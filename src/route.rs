//! Routes ready to serve, and the router that picks one: longest path-prefix match on segment
//! boundaries.

use std::sync::Arc;

use crate::config::{Config, Route};
use crate::upstream::UpstreamClient;

/// One route, ready to serve: its settings and its pooled upstream client.
#[derive(Debug)]
pub struct RouteEntry {
    /// The route's validated config.
    pub config: Route,
    /// The pooled client to its upstream.
    pub client: UpstreamClient,
}

impl RouteEntry {
    /// A route with a fresh client for its upstream.
    pub fn new(config: Route) -> RouteEntry {
        RouteEntry {
            client: UpstreamClient::new(config.upstream.clone(), config.settings.upstream_connect_timeout),
            config,
        }
    }

    /// A router over the routes of `config`.
    pub fn router(config: &Config) -> Router<RouteEntry> {
        Router::new(
            config
                .routes
                .iter()
                .map(|route| (route.path.clone(), Arc::new(RouteEntry::new(route.clone())))),
        )
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

    /// The route whose prefix is the longest one matching `path` on a segment boundary:
    /// `/events` matches `/events` and `/events/x`, never `/eventsfoo`.
    pub fn find(&self, path: &str) -> Option<&Arc<R>> {
        self.routes
            .iter()
            .find(|(prefix, _)| matches(prefix, path))
            .map(|(_, route)| route)
    }
}

fn matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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
        let no_root = Router::new([("/events".to_owned(), Arc::new(()))]);
        assert!(no_root.find("/eventsfoo").is_none());
        assert!(no_root.find("/").is_none());
    }
}
