//! `ssegate demo`: a deliberately naive SSE app, and ssegate in front of it.
//!
//! The app is what ssegate is for: bare `data:` lines (no ids, no retry, no heartbeats), a
//! response that ends after a while as a worker timeout would, and one upstream connection per
//! client. It numbers events from one global ticker and counts its open streams on `/stats`, so
//! the difference ssegate makes can be seen (and measured: each event carries its send time).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use crate::config::{Config, ConfigError};

/// The naive app's settings.
#[derive(Debug, Clone)]
pub struct NaiveApp {
    /// Time between events (of the one global ticker every stream sees).
    pub interval: Duration,
    /// Each response ends after this long (a worker timeout); `None` never ends.
    pub lifetime: Option<Duration>,
    /// Extra bytes of padding in each event.
    pub payload: usize,
}

impl Default for NaiveApp {
    fn default() -> Self {
        NaiveApp {
            interval: Duration::from_secs(1),
            lifetime: Some(Duration::from_secs(20)),
            payload: 0,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicU64,
    opened: AtomicU64,
    seq: AtomicU64,
}

/// Holds the open-stream count up while a response lives.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One naive SSE response: events from the ticker until its lifetime is over.
struct NaiveStream {
    events: mpsc::Receiver<Bytes>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    _open: OpenGuard,
}

impl Body for NaiveStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        self.events
            .poll_recv(cx)
            .map(|event| event.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Copies ticks to one response until it is gone. A naive app: a reader that lags simply
/// misses events.
async fn forward_ticks(mut ticks: broadcast::Receiver<Bytes>, out: mpsc::Sender<Bytes>) {
    loop {
        match ticks.recv().await {
            Ok(event) => {
                if out.send(event).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

use std::future::Future as _;

impl NaiveApp {
    /// Binds `addr` and serves the app until the process ends. Returns the bound address.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (ticks, _) = broadcast::channel::<Bytes>(1024);
        tokio::spawn(ticker(self.clone(), counters.clone(), ticks.clone()));
        let app = Arc::new((self, counters, ticks));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(handle(&app.0, &app.1, &app.2, &request)) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(local)
    }
}

/// The shortest time between events (100,000 events/s).
pub const MIN_INTERVAL: Duration = Duration::from_micros(10);

async fn ticker(app: NaiveApp, counters: Arc<Counters>, ticks: broadcast::Sender<Bytes>) {
    // The timer ticks at most once a millisecond: a shorter interval sends the events due by
    // each tick together, so the rate holds. After a stall, what was missed is skipped.
    let interval = app.interval.max(MIN_INTERVAL);
    let step = interval.max(Duration::from_millis(1));
    let interval_ns = interval.as_nanos();
    let per_tick = u64::try_from(step.as_nanos().div_ceil(interval_ns)).unwrap_or(1);
    let mut every = tokio::time::interval(step);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let padding = "x".repeat(app.payload);
    let first = every.tick().await;
    let mut tick = first;
    let mut sent = 0u64;
    loop {
        let due = u64::try_from(tick.duration_since(first).as_nanos() / interval_ns).unwrap_or(u64::MAX);
        let count = due.saturating_add(1).saturating_sub(sent).min(per_tick);
        sent = due.saturating_add(1);
        for _ in 0..count {
            let seq = counters.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let sent_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            let event = if padding.is_empty() {
                format!("data: {{\"seq\": {seq}, \"sent_us\": {sent_us}}}\n\n")
            } else {
                format!("data: {{\"seq\": {seq}, \"sent_us\": {sent_us}, \"pad\": \"{padding}\"}}\n\n")
            };
            let _ = ticks.send(Bytes::from(event));
        }
        tick = every.tick().await;
    }
}

type AppBody = Either<NaiveStream, Full<Bytes>>;

fn handle(
    app: &NaiveApp,
    counters: &Arc<Counters>,
    ticks: &broadcast::Sender<Bytes>,
    request: &Request<Incoming>,
) -> Response<AppBody> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/events") => {
            counters.open.fetch_add(1, Ordering::Relaxed);
            counters.opened.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(forward_ticks(ticks.subscribe(), tx));
            let body = NaiveStream {
                events: rx,
                deadline: app
                    .lifetime
                    .map(|lifetime| Box::pin(tokio::time::sleep(lifetime))),
                _open: OpenGuard(counters.clone()),
            };
            let mut response = Response::new(Either::Left(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/event-stream"),
            );
            response
        }
        (&Method::GET, "/stats") => text(
            StatusCode::OK,
            "application/json",
            format!(
                "{{\"open_streams\": {}, \"streams_opened\": {}, \"events\": {}}}\n",
                counters.open.load(Ordering::Relaxed),
                counters.opened.load(Ordering::Relaxed),
                counters.seq.load(Ordering::Relaxed)
            ),
        ),
        (&Method::GET, "/") => text(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_owned()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    }
}

/// A page that shows the events an EventSource receives, and its reconnects.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>ssegate demo</title>
<style>body{font:14px system-ui;margin:2em} #log{font:12px monospace;white-space:pre}</style>
<h1>ssegate demo</h1>
<p>Status: <b id="status">connecting</b>. Events: <b id="count">0</b>. Last id: <b id="id">-</b>.</p>
<div id="log"></div>
<script>
const source = new EventSource("/events");
let count = 0;
const log = (line) => { const el = document.getElementById("log"); el.textContent = line + "\n" + el.textContent.slice(0, 4000); };
source.onopen = () => { document.getElementById("status").textContent = "open"; log("open"); };
source.onerror = () => { document.getElementById("status").textContent = "reconnecting"; log("error: reconnecting"); };
source.onmessage = (e) => {
  document.getElementById("count").textContent = ++count;
  document.getElementById("id").textContent = e.lastEventId;
  log(e.lastEventId + "  " + e.data);
};
source.addEventListener("gap", (e) => log("gap after " + e.data));
</script>
"#;

/// The config `ssegate demo` runs: every path of ssegate on `listen` goes to the app at
/// `upstream`; every GET of `/events` is a shared subscription (so a plain `curl` is one), with
/// ids, retry and heartbeats.
pub fn config(listen: SocketAddr, upstream: SocketAddr) -> Result<Config, ConfigError> {
    let text = format!(
        "listen = \"{listen}\"\n\
         [defaults]\nheartbeat = \"15s\"\nretry = \"3s\"\n\
         [[route]]\npath = \"/events\"\nupstream = \"http://{upstream}\"\nsse = \"always\"\n\
         [[route]]\npath = \"/\"\nupstream = \"http://{upstream}\"\n"
    );
    Config::from_toml(&text, "embedded demo config")
}

/// What `ssegate demo` prints once both are up.
pub fn banner(proxy: SocketAddr, app: SocketAddr) -> String {
    format!(
        "ssegate demo\n\
         \n\
         naive app: http://{app}  (bare `data:` lines, one event a second, ends its stream every 20 s)\n\
         ssegate:   http://{proxy}  (in front of it)\n\
         \n\
         Try:\n\
         \x20 curl -N http://{proxy}/events\n\
         \x20     retry first, an id on every event, heartbeats; the app's 20 s drops never show\n\
         \x20 curl -N -H 'Last-Event-ID: <an id you saw>' http://{proxy}/events\n\
         \x20     resumes exactly after that id, from ssegate's buffer\n\
         \x20 curl -N http://{app}/events\n\
         \x20     the app itself: no ids, no retry, ends after 20 s\n\
         \x20 curl http://{app}/stats\n\
         \x20     the app holds one stream however many clients watch through ssegate\n\
         \x20 http://{proxy}/ in a browser: an EventSource through ssegate\n\
         \n\
         Ctrl-C stops both.\n"
    )
}
