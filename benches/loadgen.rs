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
//! It speaks HTTP/1.1 over plain TCP and scans events without allocating, so that on a small
//! machine it costs less CPU than what it measures.

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

async fn client(
    index: usize,
    args: Arc<Args>,
    target: SocketAddr,
    path: String,
    totals: Arc<Totals>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let source = Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(args.sources.max(1))) as u8);
    let socket = match TcpSocket::new_v4() {
        Ok(socket) => socket,
        Err(e) => {
            totals.failed.fetch_add(1, Ordering::Relaxed);
            totals.error(format!("socket: {e}"));
            return;
        }
    };
    let _ = socket.bind(SocketAddr::from((source, 0)));
    let started = Instant::now();
    let mut stream = match tokio::time::timeout(Duration::from_secs(10), socket.connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            totals.failed.fetch_add(1, Ordering::Relaxed);
            totals.error(format!("connect: {e}"));
            return;
        }
        Err(_) => {
            totals.failed.fetch_add(1, Ordering::Relaxed);
            totals.error("connect: timed out".to_owned());
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {target}\r\naccept: text/event-stream\r\n");
    if let Some(id) = &args.last_event_id {
        request.push_str(&format!("last-event-id: {id}\r\n"));
    }
    request.push_str("\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        totals.failed.fetch_add(1, Ordering::Relaxed);
        totals.error(format!("write: {e}"));
        return;
    }
    // The response head.
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    let body_start = loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                totals.error("connection closed before the response head".to_owned());
                return;
            }
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
        totals.failed.fetch_add(1, Ordering::Relaxed);
        totals.error(format!("status: {}", head_text.lines().next().unwrap_or("")));
        return;
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
    let mut seen = Seen {
        last_seq: args.resume_seq,
        events: 0,
        gaps: 0,
        duplicates: 0,
        latencies: Vec::new(),
        caught_up: None,
    };
    let mut on_line = |line: &[u8]| {
        let Some(data) = line.strip_prefix(b"data: ") else {
            return;
        };
        let Some(seq) = field(data, b"\"seq\": ") else {
            return;
        };
        if let Some(last) = seen.last_seq {
            if seq <= last {
                seen.duplicates += 1;
                return;
            }
            if seq > last + 1 {
                seen.gaps += seq - last - 1;
            }
        }
        seen.last_seq = Some(seq);
        if seen.caught_up.is_none() && args.catch_up_seq.is_some_and(|target| seq >= target) {
            seen.caught_up = Some(started.elapsed());
        }
        if measuring.load(Ordering::Relaxed) {
            seen.events += 1;
            if let Some(sent) = field(data, b"\"sent_us\": ") {
                seen.latencies
                    .push(now_us().saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
            }
        }
    };
    let rest = head[body_start..].to_vec();
    let mut failure = reader.feed(&rest, &mut on_line).err();
    while failure.is_none() && !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) => failure = Some("connection closed by the server".to_owned()),
            Ok(Err(e)) => failure = Some(format!("read: {e}")),
            Ok(Ok(n)) => {
                if !args.idle {
                    failure = reader.feed(&buf[..n], &mut on_line).err();
                }
            }
        }
    }
    if let Some(failure) = failure {
        if !stop.load(Ordering::Relaxed) {
            totals.error(failure);
        }
    }
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

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let rest = args
        .url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let target: SocketAddr = authority.parse()?;
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    };
    let totals = Arc::new(Totals::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(args.clients);
    let began = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(1) as f64);
    for index in 0..args.clients {
        let due = began + gap.mul_f64(index as f64);
        tokio::time::sleep_until(due.into()).await;
        tasks.push(tokio::spawn(client(
            index,
            args.clone(),
            target,
            path.clone(),
            totals.clone(),
            measuring.clone(),
            stop.clone(),
        )));
    }
    let ramp_seconds = began.elapsed().as_secs_f64();
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::SeqCst);
    let window = Instant::now();
    println!("{{\"phase\": \"measuring\"}}");
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::SeqCst);
    let seconds = window.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        let _ = task.await;
    }
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
        "clients": args.clients,
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
