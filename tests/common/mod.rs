//! The shared test harness: an in-process ssegate built from a TOML string, upstreams the test
//! scripts, and clients that speak real HTTP (and read SSE streams event by event); for tests
//! with real parts, the ssegate binary as a process (`process`), a `redis-server` (`redis`) and
//! HAProxy (`haproxy`) of the test's own.
#![allow(dead_code)]

pub mod client;
pub mod haproxy;
pub mod process;
pub mod redis;
pub mod sse;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use ssegate::{App, Config};

#[allow(unused_imports)]
pub use self::redis::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use haproxy::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use sse::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use upstream::*;

/// Every wait in the tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `future` for at most [`TIMEOUT`], failing the test with `what` otherwise.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// Asks `probe` again and again, with a backoff from 5 ms to 100 ms, until it answers `Ok`;
/// returns that answer. For conditions only a poll can see (the admin port's `/metrics` and
/// `/readyz`, a client let in again): where the harness sees the event itself (a request at the
/// app, a frame at the client, a connection at the upstream), await that instead.
///
/// Bounded by [`TIMEOUT`]; on timeout it fails the test with `what` and the last `Err` the probe
/// gave, the value it observed.
pub async fn eventually<T, O, F, Fut>(what: &str, mut probe: F) -> T
where
    O: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, O>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        let last = match within(what, probe()).await {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {TIMEOUT:?} waiting for {what}; last observed {last:?}");
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A running ssegate on an ephemeral port. Stops (gracefully) when dropped or on [`stop`].
///
/// [`stop`]: Sidecar::stop
pub struct Sidecar {
    pub addr: SocketAddr,
    /// The admin listener (always on in tests).
    pub admin: SocketAddr,
    pub control: ssegate::Control,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sidecar {
    /// Starts ssegate with the config in `toml` (its listeners moved to ephemeral ports).
    pub async fn start(toml: &str) -> Sidecar {
        let config = Config::from_toml(toml, "test config").unwrap_or_else(|e| panic!("{e}\n{toml}"));
        Sidecar::launch(config, None).await
    }

    /// Starts ssegate from the config file at `path`, so it can reload it.
    pub async fn start_file(path: &std::path::Path) -> Sidecar {
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        Sidecar::launch(config, Some(path)).await
    }

    async fn launch(mut config: Config, path: Option<&std::path::Path>) -> Sidecar {
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.admin_listen = Some("127.0.0.1:0".parse().expect("addr"));
        let app = App::bind_from(config, path).await.expect("bind");
        let addr = app.local_addr();
        let admin = app.admin_addr().expect("admin listener");
        let control = app.control();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Sidecar {
            addr,
            admin,
            control,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts ssegate with one route `path` in front of `upstream`, plus `extra` route keys.
    pub async fn route(path: &str, upstream: SocketAddr, extra: &str) -> Sidecar {
        Sidecar::start(&format!(
            "[[route]]\npath = \"{path}\"\nupstream = \"http://{upstream}\"\n{extra}\n"
        ))
        .await
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://admin{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The value of the metric line that starts with `series` (name and labels), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = get(&self.admin_url("/metrics"), &[]).await.text();
        metric_value(&text, series)
    }

    /// Waits until the metric `series` equals `value` (metrics of SSE deliveries are published
    /// when a client's body catches up, a moment after the client has the bytes).
    pub async fn metric_reaches(&self, series: &str, value: f64) {
        self.metric_until(series, &format!("{value}"), |now| now == value)
            .await;
    }

    /// Waits until the metric `series` goes above `value`; returns what it reached.
    pub async fn metric_above(&self, series: &str, value: f64) -> f64 {
        self.metric_until(series, &format!("above {value}"), |now| now > value)
            .await
    }

    async fn metric_until(&self, series: &str, expected: &str, done: impl Fn(f64) -> bool) -> f64 {
        eventually(&format!("{series} to be {expected}"), || async {
            let now = self.metric(series).await;
            if done(now) {
                Ok(now)
            } else {
                Err(now)
            }
        })
        .await
    }

    /// Starts a graceful stop without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Asks ssegate to stop and waits until it has.
    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            within("ssegate to stop", task).await.expect("app task");
        }
    }

    /// Waits for a stop begun with [`Sidecar::begin_stop`] to complete.
    pub async fn stopped(mut self) {
        if let Some(task) = self.task.take() {
            within("ssegate to stop", task).await.expect("app task");
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of the line of `text` (Prometheus text) that starts with `series`, 0 if none.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Starts logging for a test run once, at the level `RUST_LOG` asks for (off by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
