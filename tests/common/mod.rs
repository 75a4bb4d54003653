//! The shared test harness: an in-process ssegate built from a TOML string, upstreams the test
//! scripts, and clients that speak real HTTP (and read SSE streams event by event).
#![allow(dead_code)]

pub mod client;
pub mod sse;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use ssegate::{App, Config};

#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use sse::*;
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

/// A running ssegate on an ephemeral port. Stops (gracefully) when dropped or on [`stop`].
///
/// [`stop`]: Sidecar::stop
pub struct Sidecar {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sidecar {
    /// Starts ssegate with the config in `toml` (its `listen` is replaced by 127.0.0.1:0).
    pub async fn start(toml: &str) -> Sidecar {
        let mut config = Config::from_toml(toml, "test config").unwrap_or_else(|e| panic!("{e}\n{toml}"));
        config.listen = "127.0.0.1:0".parse().expect("addr");
        let app = App::bind(config).await.expect("bind");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Sidecar {
            addr,
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

    /// Asks ssegate to stop and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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

/// Starts logging for a test run once, at the level `RUST_LOG` asks for (off by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
