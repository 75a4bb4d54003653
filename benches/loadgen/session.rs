//! One client: its connections (TCP, TLS, HTTP/1.1 or HTTP/2), its subscription, the events it
//! reads, and with --churn its leaving and coming back.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::reader::{field, Reader};
use crate::{now_us, Ctx, Totals};

struct Seen {
    last_seq: Option<u64>,
    events: u64,
    gaps: u64,
    duplicates: u64,
    latencies: Vec<u32>,
    caught_up: Option<Duration>,
}

/// One client across its sessions: with --churn it leaves, and comes back either resuming (same
/// stream, Last-Event-ID, the sequence check carried over) or as a new client.
struct Life {
    stream: Option<u64>,
    /// The id of the last event seen (kept only with --churn).
    last_id: String,
    seen: Seen,
    started: Instant,
}

/// How a session ended.
enum Ended {
    /// The benchmark is over.
    Stopped,
    /// The client's time to leave came (--churn).
    Left,
    /// Counted as failed or as an error already.
    Failed,
}

impl Seen {
    /// One SSE line of the response.
    fn line(&mut self, ctx: &Ctx, line: &[u8], last_id: &mut String, started: Instant) {
        if ctx.args.churn > 0.0 {
            if let Some(id) = line.strip_prefix(b"id: ") {
                last_id.clear();
                last_id.push_str(&String::from_utf8_lossy(id));
                return;
            }
        }
        let Some(data) = line.strip_prefix(b"data: ") else {
            return;
        };
        let Some(seq) = field(data, b"\"seq\": ") else {
            return;
        };
        if let Some(last) = self.last_seq {
            if seq <= last {
                self.duplicates += 1;
                return;
            }
            if seq > last + 1 {
                self.gaps += seq - last - 1;
            }
        }
        self.last_seq = Some(seq);
        if self.caught_up.is_none() && ctx.args.catch_up_seq.is_some_and(|target| seq >= target) {
            self.caught_up = Some(started.elapsed());
        }
        if ctx.measuring.load(Ordering::Relaxed) {
            self.events += 1;
            if let Some(sent) = field(data, b"\"sent_us\": ") {
                self.latencies
                    .push(now_us().saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
            }
        }
    }
}

/// The stream client `index` starts on (or a new client joins): none, its own, or one of
/// --streams, from a window that slides by --rotate streams a second.
fn pick_stream(ctx: &Ctx, index: usize, rng: Option<&mut fastrand::Rng>) -> Option<u64> {
    let count = ctx.args.streams?;
    let count = count.max(1);
    let base = (ctx.began.elapsed().as_secs_f64() * ctx.args.rotate) as u64;
    Some(match rng {
        Some(rng) => base + rng.u64(0..count),
        None => index as u64 % count,
    })
}

pub(crate) async fn client(index: usize, ctx: Arc<Ctx>) {
    let mut rng = fastrand::Rng::with_seed(index as u64);
    let mut life = Life {
        stream: pick_stream(&ctx, index, None),
        last_id: String::new(),
        seen: Seen {
            last_seq: ctx.args.resume_seq,
            events: 0,
            gaps: 0,
            duplicates: 0,
            latencies: Vec::new(),
            caught_up: None,
        },
        started: Instant::now(),
    };
    let mut resuming = ctx.args.last_event_id.is_some();
    if let Some(id) = &ctx.args.last_event_id {
        life.last_id.clone_from(id);
    }
    loop {
        // Exponential stays: on average --clients / --churn seconds, so that --churn leave (and
        // join) a second in the steady state.
        let leave_at = (ctx.args.churn > 0.0).then(|| {
            let mean = ctx.args.clients as f64 / ctx.args.churn;
            Instant::now() + Duration::from_secs_f64(-mean * (1.0 - rng.f64()).ln())
        });
        match session(index, &ctx, &mut life, resuming, leave_at).await {
            Ended::Stopped | Ended::Failed => break,
            Ended::Left => {
                ctx.totals.left.fetch_add(1, Ordering::Relaxed);
                resuming = rng.bool() && !life.last_id.is_empty();
                if resuming {
                    ctx.totals.resumed.fetch_add(1, Ordering::Relaxed);
                } else {
                    life.stream = pick_stream(&ctx, index, Some(&mut rng));
                    life.seen.last_seq = None;
                    life.last_id.clear();
                }
            }
        }
    }
    let seen = life.seen;
    let totals = &ctx.totals;
    totals.events.fetch_add(seen.events, Ordering::Relaxed);
    totals.gaps.fetch_add(seen.gaps, Ordering::Relaxed);
    totals.duplicates.fetch_add(seen.duplicates, Ordering::Relaxed);
    if !seen.latencies.is_empty() {
        totals
            .latencies_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(seen.latencies);
    }
    if let Some(caught_up) = seen.caught_up {
        totals
            .catch_up_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(caught_up.as_millis() as u32);
    }
}

fn failed(totals: &Totals, what: String) -> Ended {
    totals.failed.fetch_add(1, Ordering::Relaxed);
    totals.error(what);
    Ended::Failed
}

/// One connection: connect (TLS if https://), subscribe, read until told to stop or to leave.
async fn session(
    index: usize,
    ctx: &Ctx,
    life: &mut Life,
    resuming: bool,
    leave_at: Option<Instant>,
) -> Ended {
    let totals = &ctx.totals;
    let source = Ipv4Addr::new(
        127,
        0,
        0,
        1 + (index % usize::from(ctx.args.sources.max(1))) as u8,
    );
    let socket = match TcpSocket::new_v4() {
        Ok(socket) => socket,
        Err(e) => return failed(totals, format!("socket: {e}")),
    };
    let _ = socket.bind(SocketAddr::from((source, 0)));
    life.started = Instant::now();
    let stream = match tokio::time::timeout(Duration::from_secs(10), socket.connect(ctx.target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return failed(totals, format!("connect: {e}")),
        Err(_) => return failed(totals, "connect: timed out".to_owned()),
    };
    let _ = stream.set_nodelay(true);
    let mut head = Vec::new();
    if let Some(stream) = life.stream {
        head.push(("authorization", format!("Bearer user-{stream}")));
    }
    if resuming {
        head.push(("last-event-id", life.last_id.clone()));
    }
    let Some((connector, name)) = &ctx.tls else {
        return h1(ctx, life, stream, &head, leave_at).await;
    };
    let tls =
        match tokio::time::timeout(Duration::from_secs(10), connector.connect(name.clone(), stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return failed(totals, format!("TLS: {e}")),
            Err(_) => return failed(totals, "TLS: timed out".to_owned()),
        };
    if ctx.args.h2 {
        h2(ctx, life, tls, &head, leave_at).await
    } else {
        h1(ctx, life, tls, &head, leave_at).await
    }
}

/// What the read loop does next: read again (up to this long), or end the session.
fn next_step(ctx: &Ctx, leave_at: Option<Instant>) -> Result<Duration, Ended> {
    if ctx.stop.load(Ordering::Relaxed) {
        return Err(Ended::Stopped);
    }
    let wait = Duration::from_millis(200);
    match leave_at {
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(Ended::Left)
            } else {
                Ok(wait.min(left))
            }
        }
        None => Ok(wait),
    }
}

/// The session ended by `failure` (unless the benchmark is over).
fn broken(ctx: &Ctx, failure: String) -> Ended {
    if ctx.stop.load(Ordering::Relaxed) {
        Ended::Stopped
    } else {
        ctx.totals.error(failure);
        Ended::Failed
    }
}

async fn h1<S>(
    ctx: &Ctx,
    life: &mut Life,
    mut stream: S,
    head: &[(&str, String)],
    leave_at: Option<Instant>,
) -> Ended
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let totals = &ctx.totals;
    let mut request = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n",
        ctx.path, ctx.target
    );
    for (name, value) in head {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return failed(totals, format!("write: {e}"));
    }
    // The response head.
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    let body_start = loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return failed(totals, "connection closed before the response head".to_owned()),
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
                    break end + 4;
                }
            }
        }
    };
    let head_text = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
    if !head_text.starts_with("http/1.1 200") {
        return failed(
            totals,
            format!("status: {}", head_text.lines().next().unwrap_or("")),
        );
    }
    totals.established.fetch_add(1, Ordering::Relaxed);
    let mut reader = Reader::new(head_text.contains("transfer-encoding: chunked"));
    let Life {
        last_id,
        seen,
        started,
        ..
    } = life;
    let started = *started;
    let mut on_line = |line: &[u8]| seen.line(ctx, line, last_id, started);
    if let Err(failure) = reader.feed(&head[body_start..], &mut on_line) {
        return broken(ctx, failure);
    }
    loop {
        let wait = match next_step(ctx, leave_at) {
            Ok(wait) => wait,
            Err(ended) => return ended,
        };
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) => return broken(ctx, "connection closed by the server".to_owned()),
            Ok(Err(e)) => return broken(ctx, format!("read: {e}")),
            Ok(Ok(n)) => {
                if !ctx.args.idle {
                    if let Err(failure) = reader.feed(&buf[..n], &mut on_line) {
                        return broken(ctx, failure);
                    }
                }
            }
        }
    }
}

async fn h2<S>(
    ctx: &Ctx,
    life: &mut Life,
    stream: S,
    head: &[(&str, String)],
    leave_at: Option<Instant>,
) -> Ended
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let totals = &ctx.totals;
    let (mut client, connection) = match h2::client::handshake(stream).await {
        Ok(pair) => pair,
        Err(e) => return failed(totals, format!("h2 handshake: {e}")),
    };
    let driver = tokio::spawn(connection);
    let _stop_driver = AbortOnDrop(driver);
    let mut request = http::Request::get(format!("https://{}{}", ctx.target, ctx.path))
        .header("accept", "text/event-stream");
    for (name, value) in head {
        request = request.header(*name, value.as_str());
    }
    let Ok(request) = request.body(()) else {
        return failed(totals, "request: not valid".to_owned());
    };
    let response = match client.send_request(request, true) {
        Ok((response, _)) => response,
        Err(e) => return failed(totals, format!("h2 request: {e}")),
    };
    // An idle client holds its stream from the request on: a proxy may send the response head
    // only with the first bytes of the body (Nginx over HTTP/2 does), which an idle stream
    // never has.
    let mut response = Box::pin(response);
    let deadline = (!ctx.args.idle).then(|| Instant::now() + Duration::from_secs(10));
    if ctx.args.idle {
        totals.established.fetch_add(1, Ordering::Relaxed);
    }
    let response = loop {
        let wait = match next_step(ctx, leave_at) {
            Ok(wait) => wait,
            Err(ended) => return ended,
        };
        match tokio::time::timeout(wait, response.as_mut()).await {
            Ok(Ok(response)) => break response,
            Ok(Err(e)) => return failed(totals, format!("h2 response: {e}")),
            Err(_) if deadline.is_some_and(|at| Instant::now() >= at) => {
                return failed(totals, "h2 response: timed out".to_owned())
            }
            Err(_) => {}
        }
    };
    if response.status() != http::StatusCode::OK {
        return failed(totals, format!("status: {}", response.status()));
    }
    if !ctx.args.idle {
        totals.established.fetch_add(1, Ordering::Relaxed);
    }
    let mut body = response.into_body();
    let mut reader = Reader::new(false);
    let Life {
        last_id,
        seen,
        started,
        ..
    } = life;
    let started = *started;
    let mut on_line = |line: &[u8]| seen.line(ctx, line, last_id, started);
    loop {
        let wait = match next_step(ctx, leave_at) {
            Ok(wait) => wait,
            Err(ended) => return ended,
        };
        match tokio::time::timeout(wait, body.data()).await {
            Err(_) => continue,
            Ok(None) => return broken(ctx, "stream ended by the server".to_owned()),
            Ok(Some(Err(e))) => return broken(ctx, format!("read: {e}")),
            Ok(Some(Ok(data))) => {
                let _ = body.flow_control().release_capacity(data.len());
                if !ctx.args.idle {
                    if let Err(failure) = reader.feed(&data, &mut on_line) {
                        return broken(ctx, failure);
                    }
                }
            }
        }
    }
}

/// Ends the connection's driver task with the session.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), h2::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
