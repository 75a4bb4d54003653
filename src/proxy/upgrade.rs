//! Upgraded connections (WebSocket). A request whose `Connection` names `upgrade` and whose
//! `Upgrade` lists a protocol the route allows (`upgrades`) goes to the app with both headers;
//! on the app's `101` for one of those protocols, the client's connection and the app's are
//! joined byte for byte until either side closes, or neither sends for `upgrade_idle_timeout`.
//! An upgrade to a protocol the route does not allow passes as a plain request without its
//! upgrade headers, as it would through a proxy that knows no upgrades.
//!
//! HTTP/1.1 only: an HTTP/2 client cannot send these headers (RFC 9113 §8.2.2), and extended
//! CONNECT (RFC 8441) is not offered, so browsers open their WebSockets over HTTP/1.1.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{exchange, routed, ProxyBody, RequestBody};
use crate::error::{rescue, ProxyError};
use crate::metrics::RouteMetrics;
use crate::peer::{Peer, Upgrades};
use crate::route::{Admission, RouteEntry};
use crate::upstream::headers::{list_items, strip_hop_by_hop, Forwarding};

/// The protocols a request asks to upgrade to, in lower case: `Connection` names `upgrade` and
/// `Upgrade` lists them. `None` for a request that asks for no upgrade.
pub(super) fn requested<B>(request: &Request<B>) -> Option<Vec<String>> {
    let headers = request.headers();
    let asks = request.version() == Version::HTTP_11
        && list_items(headers.get_all(header::CONNECTION)).any(|item| item.eq_ignore_ascii_case("upgrade"))
        && headers.contains_key(header::UPGRADE);
    asks.then(|| {
        list_items(headers.get_all(header::UPGRADE))
            .map(str::to_ascii_lowercase)
            .collect()
    })
}

/// Of the protocols `asked`, those the route allows; none: logged and counted, and the request
/// goes on as a plain one.
pub(super) fn allowed(
    route: &RouteEntry,
    asked: Vec<String>,
    path: &str,
    remote: Peer,
) -> Option<Vec<String>> {
    let allowed = &route.config.settings.upgrades;
    let kept: Vec<String> = asked.iter().filter(|p| allowed.contains(p)).cloned().collect();
    if kept.is_empty() {
        route.metrics.upgrades_refused.inc();
        tracing::info!(
            route = %route.config.path, %path, remote = %remote.addr, asked = %asked.join(", "),
            "upgrade to a protocol the route does not allow (`upgrades`): passed as a plain request without its upgrade headers"
        );
        return None;
    }
    Some(kept)
}

/// Asks the app to upgrade to one of `protocols`; on its 101, answers 101 and joins the two
/// connections. Any other answer of the app is passed through as it is.
/// `from` says who the client is, as every upstream request of the route does.
pub(super) async fn upgrade<B: RequestBody>(
    route: &RouteEntry,
    mut request: Request<B>,
    from: Forwarding<'_>,
    protocols: Vec<String>,
    admission: Admission,
) -> (Response<ProxyBody>, Option<Admission>) {
    let remote = from.peer;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let context = routed(route, &method, &path, remote.addr);
    let Some(upgrades) = request.extensions_mut().remove::<Upgrades>() else {
        // Not from a connection that can be upgraded (the server inserts this for HTTP/1.1).
        let why = ProxyError::BadRequest("an upgrade on a connection that cannot be upgraded".to_owned());
        return (rescue(why, &context), None);
    };
    let client_side = hyper::upgrade::on(&mut request);
    let offer = protocols.join(", ");
    let response = match exchange(route, request, from, |headers| {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(value) = HeaderValue::from_str(&offer) {
            headers.insert(header::UPGRADE, value);
        }
    })
    .await
    {
        Ok(response) => response,
        Err(answer) => return (answer, None),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused: an answer like any other, counted under max_clients while it streams.
        return (super::answer(route, response), Some(admission));
    }
    let chosen = response
        .headers()
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_ascii_lowercase());
    let Some(chosen) = chosen.clone().filter(|chosen| protocols.contains(chosen)) else {
        let source = format!(
            "the app switched protocols to {:?}, which was not asked for (asked: {offer})",
            chosen.unwrap_or_default()
        );
        let error = ProxyError::Upstream {
            timed_out: false,
            source: source.into(),
        };
        return (rescue(error, &context), None);
    };
    let mut response = response;
    let upstream_side = hyper::upgrade::on(&mut response);
    let (mut parts, _empty) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(value) = HeaderValue::from_str(&chosen) {
        parts.headers.insert(header::UPGRADE, value);
    }
    let tunnel = Tunnel {
        _admission: admission,
        route: route.config.path.clone(),
        protocol: chosen,
        remote,
        idle: route.config.settings.upgrade_idle_timeout,
        metrics: route.metrics.clone(),
    };
    upgrades.spawn(tunnel.run(client_side, upstream_side));
    (
        Response::from_parts(parts, ProxyBody::full(bytes::Bytes::new())),
        None,
    )
}

/// One upgraded connection, once both sides have switched.
struct Tunnel {
    /// Its place under the route's `max_clients`.
    _admission: Admission,
    route: String,
    protocol: String,
    remote: Peer,
    idle: Duration,
    metrics: RouteMetrics,
}

impl Tunnel {
    async fn run(self, client: OnUpgrade, upstream: OnUpgrade) {
        let Tunnel {
            _admission,
            route,
            protocol,
            remote,
            idle,
            metrics,
        } = self;
        let remote = remote.addr;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%route, %remote, %error, "upgrade not completed");
                return;
            }
        };
        metrics.upgrades.inc();
        metrics.upgraded.inc();
        let _open = scopeguard(metrics.upgraded.clone());
        let started = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Active::new(TokioIo::new(client), started, last.clone());
        let mut upstream = Active::new(TokioIo::new(upstream), started, last.clone());
        tracing::debug!(%route, %remote, %protocol, "connection upgraded");
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                Ok((up, down)) => tracing::debug!(%route, %remote, %protocol, bytes_to_app = up, bytes_to_client = down, "upgraded connection closed"),
                Err(error) => tracing::debug!(%route, %remote, %protocol, %error, "upgraded connection ended with an error"),
            },
            () = quiet_for(idle, started, &last) => {
                tracing::debug!(%route, %remote, %protocol, idle = ?idle, "upgraded connection idle past upgrade_idle_timeout; closed");
            }
        }
    }
}

/// Decrements the gauge when dropped.
fn scopeguard(gauge: prometheus_client::metrics::gauge::Gauge) -> impl Drop {
    struct Guard(prometheus_client::metrics::gauge::Gauge);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Guard(gauge)
}

/// Resolves once no byte has moved either way for `idle` (`last`: milliseconds after
/// `started` of the last byte).
async fn quiet_for(idle: Duration, started: Instant, last: &AtomicU64) {
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = started + since + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// An I/O object that records when bytes last moved through it.
struct Active<T> {
    inner: T,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Active<T> {
    fn new(inner: T, started: Instant, last: Arc<AtomicU64>) -> Self {
        Active { inner, started, last }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(millis, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
