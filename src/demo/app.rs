//! The naive app: bare `data:` lines from one global ticker, responses that end after a while,
//! `/stats`, and (for the demo page) a way to stop it for a few seconds.

use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

use super::wire::Wire;

/// The naive app's settings.
#[derive(Debug, Clone)]
pub struct NaiveApp {
    /// Time between events (of the one global ticker every stream sees).
    pub interval: Duration,
    /// Each response ends after this long (a worker timeout); `None` never ends.
    pub lifetime: Option<Duration>,
    /// Extra bytes of padding in each event.
    pub payload: usize,
    /// Stretches of silence, when the app has nothing to say.
    pub quiet: Option<Quiet>,
    /// Each response gets its events from a ticker of its own, started when it was asked for
    /// and numbered from 1 (so streams tick at different moments, as different users' do),
    /// instead of the one global ticker.
    pub stagger: bool,
}

/// A repeating schedule of silence: `after` of events, then `length` without any.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    /// Events flow this long...
    pub after: Duration,
    /// ...then the app says nothing for this long, and so on.
    pub length: Duration,
}

impl Default for NaiveApp {
    fn default() -> Self {
        NaiveApp {
            interval: Duration::from_secs(1),
            lifetime: Some(Duration::from_secs(20)),
            payload: 0,
            quiet: None,
            stagger: false,
        }
    }
}

/// How long `POST /demo/stop` stops the app.
pub const STOP_FOR: Duration = Duration::from_secs(5);

/// The shortest time between events (100,000 events/s).
pub const MIN_INTERVAL: Duration = Duration::from_micros(10);

#[derive(Debug, Default)]
struct Counters {
    /// Open streams asked for through a proxy (the request carries `X-Forwarded-For`).
    forwarded: AtomicU64,
    /// Open streams asked for directly.
    direct: AtomicU64,
    opened: AtomicU64,
    seq: AtomicU64,
}

/// Holds an open-stream count up while a response lives.
struct OpenGuard(Arc<Counters>, bool);

impl OpenGuard {
    fn new(counters: &Arc<Counters>, forwarded: bool) -> OpenGuard {
        counters.count(forwarded).fetch_add(1, Ordering::Relaxed);
        counters.opened.fetch_add(1, Ordering::Relaxed);
        OpenGuard(counters.clone(), forwarded)
    }
}

impl Counters {
    fn count(&self, forwarded: bool) -> &AtomicU64 {
        if forwarded {
            &self.forwarded
        } else {
            &self.direct
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.count(self.1).fetch_sub(1, Ordering::Relaxed);
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

/// What every connection of the app shares.
struct Shared {
    app: NaiveApp,
    /// The app's address.
    local: SocketAddr,
    counters: Arc<Counters>,
    ticks: broadcast::Sender<Bytes>,
    /// True while the app is stopped: connections close, the listener is gone.
    stopped: watch::Sender<bool>,
    /// The demo page's parts, when the app serves it.
    page: Option<Page>,
}

/// What the demo page needs to know: where the app is, and the wire it can cut.
pub(crate) struct Page {
    pub(crate) wire: Wire,
}

impl NaiveApp {
    /// Binds `addr` and serves the app until the process ends. Returns the bound address.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        self.serve(addr, None).await
    }

    /// Like [`NaiveApp::spawn`], serving the demo page at `/` too.
    pub(crate) async fn serve(self, addr: SocketAddr, page: Option<Page>) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (ticks, _) = broadcast::channel::<Bytes>(1024);
        tokio::spawn(ticker(self.clone(), counters.clone(), ticks.clone()));
        let shared = Arc::new(Shared {
            app: self,
            local,
            counters,
            ticks,
            stopped: watch::Sender::new(false),
            page,
        });
        tokio::spawn(accept(listener, local, shared));
        Ok(local)
    }
}

/// Serves connections; while the app is stopped, there is no listener (connections are
/// refused) and every open connection is closed.
async fn accept(mut listener: TcpListener, local: SocketAddr, shared: Arc<Shared>) {
    let mut stopped = shared.stopped.subscribe();
    loop {
        let stop = tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(connection(stream, shared.clone()));
                    }
                    // Out of file descriptors, say: let some close.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
                false
            }
            open = async { stopped.wait_for(|stopped| *stopped).await.is_ok() } => {
                if !open {
                    return;
                }
                true
            }
        };
        if stop {
            drop(listener);
            if stopped.wait_for(|stopped| !*stopped).await.is_err() {
                return;
            }
            listener = match rebind(local).await {
                Some(listener) => listener,
                None => return,
            };
        }
    }
}

/// Binds the app's address again after a stop, for a while if another process holds it.
async fn rebind(local: SocketAddr) -> Option<TcpListener> {
    for _ in 0..50 {
        match TcpListener::bind(local).await {
            Ok(listener) => return Some(listener),
            Err(error) => {
                tracing::warn!(%local, %error, "the demo app cannot listen again yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracing::error!(%local, "the demo app could not listen again: it stays stopped");
    None
}

async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut stopped = shared.stopped.subscribe();
    let service = {
        let shared = shared.clone();
        service_fn(move |request| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(&shared, &request)) }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let serving = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = serving => {}
        // A stopped app drops its connections mid-stream, as a killed process would.
        _ = stopped.wait_for(|stopped| *stopped) => {}
    }
}

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
        let elapsed = tick.duration_since(first);
        let due = u64::try_from(elapsed.as_nanos() / interval_ns).unwrap_or(u64::MAX);
        let count = due.saturating_add(1).saturating_sub(sent).min(per_tick);
        sent = due.saturating_add(1);
        if !app.quiet.is_some_and(|quiet| quiet.holds(elapsed)) {
            for _ in 0..count {
                let seq = counters.seq.fetch_add(1, Ordering::Relaxed) + 1;
                let _ = ticks.send(event(seq, &padding));
            }
        }
        tick = every.tick().await;
    }
}

/// Event number `seq`, stamped with the time it is sent.
fn event(seq: u64, padding: &str) -> Bytes {
    let sent_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    Bytes::from(if padding.is_empty() {
        format!("data: {{\"seq\": {seq}, \"sent_us\": {sent_us}}}\n\n")
    } else {
        format!("data: {{\"seq\": {seq}, \"sent_us\": {sent_us}, \"pad\": \"{padding}\"}}\n\n")
    })
}

/// The events of one response with a ticker of its own (`stagger`): one per interval from
/// when it was asked for, numbered from 1.
async fn own_ticks(app: NaiveApp, out: mpsc::Sender<Bytes>) {
    let padding = "x".repeat(app.payload);
    let interval = app.interval.max(MIN_INTERVAL);
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for seq in 1.. {
        every.tick().await;
        if out.send(event(seq, &padding)).await.is_err() {
            return;
        }
    }
}

impl Quiet {
    /// Whether the app is silent `elapsed` after it started.
    fn holds(self, elapsed: Duration) -> bool {
        let cycle = (self.after + self.length).as_nanos();
        cycle > 0 && elapsed.as_nanos() % cycle >= self.after.as_nanos()
    }
}

type AppBody = Either<NaiveStream, Full<Bytes>>;

fn handle(shared: &Shared, request: &Request<Incoming>) -> Response<AppBody> {
    let counters = &shared.counters;
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    let mut response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/events") => {
            let forwarded = request.headers().contains_key("x-forwarded-for");
            let (tx, rx) = mpsc::channel(64);
            if shared.app.stagger {
                tokio::spawn(own_ticks(shared.app.clone(), tx));
            } else {
                tokio::spawn(forward_ticks(shared.ticks.subscribe(), tx));
            }
            let body = NaiveStream {
                events: rx,
                deadline: shared
                    .app
                    .lifetime
                    .map(|lifetime| Box::pin(tokio::time::sleep(lifetime))),
                _open: OpenGuard::new(counters, forwarded),
            };
            let mut response = Response::new(Either::Left(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            response
        }
        (&Method::GET, "/stats") => {
            let forwarded = counters.forwarded.load(Ordering::Relaxed);
            let direct = counters.direct.load(Ordering::Relaxed);
            text(
                StatusCode::OK,
                "application/json",
                format!(
                    "{{\"open_streams\": {}, \"forwarded\": {forwarded}, \"direct\": {direct}, \"streams_opened\": {}, \"events\": {}}}\n",
                    forwarded + direct,
                    counters.opened.load(Ordering::Relaxed),
                    counters.seq.load(Ordering::Relaxed)
                ),
            )
        }
        (&Method::POST, "/demo/stop") => {
            stop_for(shared.stopped.clone(), STOP_FOR);
            text(
                StatusCode::ACCEPTED,
                "text/plain",
                format!("stopping for {} s\n", STOP_FOR.as_secs()),
            )
        }
        (&Method::POST, "/demo/cut") => match &shared.page {
            Some(page) => {
                page.wire.cut_soon();
                text(StatusCode::ACCEPTED, "text/plain", "cutting\n".to_owned())
            }
            None => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "no wire to cut: only `ssegate demo` has one\n".to_owned(),
            ),
        },
        (&Method::GET, "/") => match &shared.page {
            Some(page) => text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                super::page(shared.local.port(), page.wire.port()),
            ),
            None => text(
                StatusCode::OK,
                "text/plain",
                "a naive SSE app: GET /events (an event stream), GET /stats (JSON)\n".to_owned(),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    // The demo page reads the app directly too, from another origin.
    if matches!(request.uri().path(), "/events" | "/stats") {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    response
}

/// Stops the app for `length`, just after the answer that asked for it has gone out; a stop
/// asked for while one is on is part of it.
fn stop_for(stopped: watch::Sender<bool>, length: Duration) {
    if *stopped.borrow() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stopped.send_replace(true) {
            return;
        }
        tracing::info!(seconds = length.as_secs(), "the demo app stops (as asked)");
        tokio::time::sleep(length).await;
        stopped.send_replace(false);
        tracing::info!("the demo app is back");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_holds_for_its_length_after_each_stretch_of_events() {
        let quiet = Quiet {
            after: Duration::from_secs(25),
            length: Duration::from_secs(5),
        };
        let at = |s: f64| quiet.holds(Duration::from_secs_f64(s));
        assert!(!at(0.0) && !at(24.9) && at(25.0) && at(29.9) && !at(30.0) && at(55.5) && !at(61.0));
        // Nothing to repeat: never quiet.
        let none = Quiet {
            after: Duration::ZERO,
            length: Duration::ZERO,
        };
        assert!(!none.holds(Duration::from_secs(3)));
    }
}
