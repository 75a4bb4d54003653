//! The load generator of `bench/run.sh`: opens N SSE connections at a given ramp rate (spread
//! over 127.0.0.x source addresses), reads the events, and prints one JSON report: connections
//! established and failed, events delivered per second, end-to-end latency percentiles from the
//! send time the upstream embeds in each event (`"sent_us": …`), sequence gaps and duplicates
//! (`"seq": …`), errors, and for resuming clients the time to catch up.
//!
//! ```sh
//! cargo bench --bench loadgen -- --url http://127.0.0.1:8080/events --clients 1000 --duration 10s
//! ```
//!
//! It speaks HTTP/1.1 over plain TCP or TLS, or HTTP/2 over TLS (a connection per client, as
//! browsers open them to different pages), and scans events without allocating, so that on a
//! small machine it costs less CPU than what it measures. With `--streams` the clients carry
//! credentials of their own (a stream each, or one of N); with `--churn` they come and go.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Opens SSE connections and measures what arrives.
#[derive(Debug, Parser)]
struct Args {
    /// The SSE endpoint: http://HOST:PORT/PATH.
    #[arg(long)]
    url: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Connections opened per second.
    #[arg(long, default_value_t = 5000)]
    ramp: u64,
    /// Measurement window, after every connection is open and `warmup` has passed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between the last connection opening and the measurement window.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Hold the connections without expecting events.
    #[arg(long)]
    idle: bool,
    /// Send this Last-Event-ID.
    #[arg(long)]
    last_event_id: Option<String>,
    /// With --last-event-id: the seq a client must reach to count as caught up.
    #[arg(long)]
    catch_up_seq: Option<u64>,
    /// With --last-event-id: the seq of that id; the first event must then be the next one.
    #[arg(long)]
    resume_seq: Option<u64>,
    /// Source addresses to spread connections over: 127.0.0.1 … 127.0.0.N.
    #[arg(long, default_value_t = 200)]
    sources: u8,
    /// Give the clients N streams of their own (`authorization: Bearer user-K`, client i on
    /// K = i mod N); without it no client sends credentials (one shared stream).
    #[arg(long)]
    streams: Option<u64>,
    /// Clients that leave (and as many that join) per second: half come back resuming with
    /// Last-Event-ID on their stream, half as new clients on one of the --streams.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// With --churn: the streams new clients pick from slide by this many a second, so that old
    /// streams lose their last client and new ones open.
    #[arg(long, default_value_t = 0.0)]
    rotate: f64,
    /// For an https:// URL: the CA certificate (PEM) to trust.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// For an https:// URL: the name the certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// For an https:// URL: speak HTTP/2 (each client its own connection).
    #[arg(long)]
    h2: bool,
}

/// What every client adds up to.
#[derive(Default)]
struct Totals {
    established: AtomicU64,
    failed: AtomicU64,
    errors: AtomicU64,
    events: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    catch_up_ms: Mutex<Vec<u32>>,
    first_error: Mutex<Option<String>>,
    /// --churn: sessions ended by leaving, and of those the ones that came back resuming.
    left: AtomicU64,
    resumed: AtomicU64,
}

impl Totals {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        first.get_or_insert(what);
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The number after `"name": ` in `data`.
fn field(data: &[u8], name: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(data, name)? + name.len();
    let digits = &data[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Per-connection state of the response parser: HTTP/1.1 chunked framing, then SSE lines.
struct Reader {
    chunked: bool,
    /// Bytes left in the current chunk (chunked) .
    chunk_left: usize,
    /// Partial chunk-size line carried over between reads.
    line: Vec<u8>,
    /// Partial SSE line carried over between reads (and chunks).
    sse_line: Vec<u8>,
    in_size_line: bool,
    /// Bytes of the CRLF after a chunk still to skip.
    skip: usize,
}

struct Seen {
    last_seq: Option<u64>,
    events: u64,
    gaps: u64,
    duplicates: u64,
    latencies: Vec<u32>,
    caught_up: Option<Duration>,
}

impl Reader {
    /// Feeds response body bytes (after the head); calls `line` for each SSE line.
    fn feed(&mut self, mut bytes: &[u8], on_line: &mut impl FnMut(&[u8])) -> Result<(), String> {
        if !self.chunked {
            self.lines(bytes, on_line);
            return Ok(());
        }
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.in_size_line {
                match memchr::memchr(b'\n', bytes) {
                    Some(end) => {
                        self.line.extend_from_slice(&bytes[..end]);
                        bytes = &bytes[end + 1..];
                        let text = std::str::from_utf8(&self.line).map_err(|e| e.to_string())?;
                        let hex = text.trim().split(';').next().unwrap_or("");
                        let size =
                            usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {text:?}"))?;
                        self.line.clear();
                        if size == 0 {
                            return Err("response ended".to_owned());
                        }
                        self.chunk_left = size;
                        self.in_size_line = false;
                    }
                    None => {
                        self.line.extend_from_slice(bytes);
                        return Ok(());
                    }
                }
            } else {
                let n = self.chunk_left.min(bytes.len());
                let (data, rest) = bytes.split_at(n);
                self.sse_lines(data, on_line);
                self.chunk_left -= n;
                bytes = rest;
                if self.chunk_left == 0 {
                    self.in_size_line = true;
                    self.skip = 2;
                }
            }
        }
        Ok(())
    }

    fn lines(&mut self, bytes: &[u8], on_line: &mut impl FnMut(&[u8])) {
        self.sse_lines(bytes, on_line);
    }

    /// SSE payload: complete lines go to `on_line` (LF-terminated; the upstreams here use LF).
    fn sse_lines(&mut self, mut bytes: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            if self.sse_line.is_empty() {
                on_line(&bytes[..end]);
            } else {
                self.sse_line.extend_from_slice(&bytes[..end]);
                on_line(&self.sse_line);
                self.sse_line.clear();
            }
            bytes = &bytes[end + 1..];
        }
        self.sse_line.extend_from_slice(bytes);
    }
}

/// What every session needs: the arguments, where to connect, the shared counters.
struct Ctx {
    args: Args,
    target: SocketAddr,
    path: String,
    /// The https:// client settings; `None` over http://.
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    totals: Totals,
    measuring: AtomicBool,
    stop: AtomicBool,
    began: Instant,
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

async fn client(index: usize, ctx: Arc<Ctx>) {
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
    let mut reader = Reader {
        chunked: head_text.contains("transfer-encoding: chunked"),
        chunk_left: 0,
        line: Vec::new(),
        sse_line: Vec::new(),
        in_size_line: true,
        skip: 0,
    };
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
    let mut reader = Reader {
        chunked: false,
        chunk_left: 0,
        line: Vec::new(),
        sse_line: Vec::new(),
        in_size_line: false,
        skip: 0,
    };
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

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (secure, rest) = if let Some(rest) = args.url.strip_prefix("https://") {
        (true, rest)
    } else {
        let rest = args
            .url
            .strip_prefix("http://")
            .ok_or("--url must start with http:// or https://")?;
        (false, rest)
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let target: SocketAddr = authority.parse()?;
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    };
    if args.h2 && !secure {
        return Err("--h2 needs an https:// URL".into());
    }
    let tls = if secure {
        use rustls::pki_types::pem::PemObject;
        let ca = args.ca.as_ref().ok_or("an https:// URL needs --ca")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![if args.h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let name = rustls::pki_types::ServerName::try_from(args.server_name.clone())?;
        Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    } else {
        None
    };
    let clients = args.clients;
    let ramp = args.ramp;
    let warmup = args.warmup;
    let duration = args.duration;
    let ctx = Arc::new(Ctx {
        args,
        target,
        path,
        tls,
        totals: Totals::default(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        began: Instant::now(),
    });
    let mut tasks = Vec::with_capacity(clients);
    let began = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / ramp.max(1) as f64);
    for index in 0..clients {
        let due = began + gap.mul_f64(index as f64);
        tokio::time::sleep_until(due.into()).await;
        tasks.push(tokio::spawn(client(index, ctx.clone())));
    }
    let ramp_seconds = began.elapsed().as_secs_f64();
    tokio::time::sleep(warmup).await;
    ctx.measuring.store(true, Ordering::SeqCst);
    let window = Instant::now();
    let (left0, resumed0) = (
        ctx.totals.left.load(Ordering::Relaxed),
        ctx.totals.resumed.load(Ordering::Relaxed),
    );
    println!("{{\"phase\": \"measuring\"}}");
    tokio::time::sleep(duration).await;
    ctx.measuring.store(false, Ordering::SeqCst);
    let seconds = window.elapsed().as_secs_f64();
    let (left, resumed) = (
        ctx.totals.left.load(Ordering::Relaxed) - left0,
        ctx.totals.resumed.load(Ordering::Relaxed) - resumed0,
    );
    ctx.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        let _ = task.await;
    }
    let totals = &ctx.totals;
    let mut latencies = std::mem::take(
        &mut *totals
            .latencies_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    latencies.sort_unstable();
    let mut catch_up = std::mem::take(
        &mut *totals
            .catch_up_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    catch_up.sort_unstable();
    let events = totals.events.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "clients": clients,
        "established": totals.established.load(Ordering::Relaxed),
        "failed": totals.failed.load(Ordering::Relaxed),
        "errors": totals.errors.load(Ordering::Relaxed),
        "first_error": totals.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        "ramp_s": ramp_seconds,
        "window_s": seconds,
        "events": events,
        "events_per_s": events as f64 / seconds,
        "gaps": totals.gaps.load(Ordering::Relaxed),
        "duplicates": totals.duplicates.load(Ordering::Relaxed),
        "left_per_s": left as f64 / seconds,
        "resumed_per_s": resumed as f64 / seconds,
        "latency_us": {
            "samples": latencies.len(),
            "p50": percentile(&latencies, 50.0),
            "p99": percentile(&latencies, 99.0),
            "p999": percentile(&latencies, 99.9),
            "max": latencies.last().copied().unwrap_or(0),
        },
        "catch_up_ms": {
            "clients": catch_up.len(),
            "p50": percentile(&catch_up, 50.0),
            "p99": percentile(&catch_up, 99.0),
            "max": catch_up.last().copied().unwrap_or(0),
        },
    });
    println!("{report}");
    Ok(())
}
