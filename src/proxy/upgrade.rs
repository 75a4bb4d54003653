//! Upgraded connections (WebSocket). A request whose `Connection` names `upgrade` and whose
//! `Upgrade` lists a protocol the route allows (`upgrades`) goes to the app with both headers;
//! on the app's `101` for one of those protocols, the client's connection and the app's are
//! joined byte for byte until either side closes, or neither sends for `upgrade_idle_timeout`.
//! An upgrade to a protocol the route does not allow passes as a plain request without its
//! upgrade headers, as it would through a proxy that knows no upgrades.
//!
//! Over HTTP/2 a client cannot send these headers (RFC 9113 §8.2.2): it asks with an extended
//! CONNECT for `websocket` (RFC 8441), which the server offers. The app gets the HTTP/1.1
//! handshake (with a `Sec-WebSocket-Key` of ssegate's, whose accept is checked) and the client
//! a 200; the HTTP/2 stream and the app's connection are then joined as above.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
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
/// `Upgrade` lists them; or, over HTTP/2, an extended CONNECT (RFC 8441) for a WebSocket. `None`
/// for a request that asks for no upgrade.
pub(super) fn requested<B>(request: &Request<B>) -> Option<Vec<String>> {
    if request.method() == Method::CONNECT {
        let protocol = request.extensions().get::<hyper::ext::Protocol>()?;
        return protocol
            .as_str()
            .eq_ignore_ascii_case("websocket")
            .then(|| vec!["websocket".to_owned()]);
    }
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
    // Over HTTP/2 the client asked with an extended CONNECT: the app gets the HTTP/1.1
    // handshake it knows, with a key of ssegate's, and the client a 200 once it is done.
    let extended = request.method() == Method::CONNECT;
    let key = extended.then(websocket_key);
    if extended {
        *request.method_mut() = Method::GET;
    }
    let response = match exchange(route, request, from, |headers| {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(value) = HeaderValue::from_str(&offer) {
            headers.insert(header::UPGRADE, value);
        }
        if let Some(key) = key.as_ref().and_then(|key| HeaderValue::from_str(key).ok()) {
            headers.insert(header::SEC_WEBSOCKET_KEY, key);
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
    if let Some(key) = &key {
        let accept = response.headers().get(header::SEC_WEBSOCKET_ACCEPT);
        if accept.map(HeaderValue::as_bytes) != Some(websocket_accept(key).as_bytes()) {
            let source = "the app switched to WebSocket without the Sec-WebSocket-Accept its key asks for";
            let error = ProxyError::Upstream {
                timed_out: false,
                source: source.into(),
            };
            return (rescue(error, &context), None);
        }
    }
    let mut response = response;
    let upstream_side = hyper::upgrade::on(&mut response);
    let (mut parts, _empty) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if extended {
        // RFC 8441 §5: a 2xx opens the tunnel; the accept answers ssegate's key, not the client's.
        parts.status = StatusCode::OK;
        parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    } else {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(value) = HeaderValue::from_str(&chosen) {
            parts.headers.insert(header::UPGRADE, value);
        }
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

/// A `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn websocket_key() -> String {
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    base64(&bytes)
}

/// The `Sec-WebSocket-Accept` that answers `key` (RFC 6455 §4.2.2).
fn websocket_accept(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64(digest.as_ref())
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_of_the_rfc_example_key() {
        // RFC 6455 §1.3.
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(websocket_key().len(), 24);
    }
}
