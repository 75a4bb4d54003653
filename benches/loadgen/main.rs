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

//!
//! - `reader.rs` parses an HTTP/1.1 body's chunked framing and its SSE lines;
//! - `session.rs` is one client: its connections, its subscription, its leaving and coming back.

mod reader;
mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use session::client;

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
