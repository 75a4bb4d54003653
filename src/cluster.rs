//! Several instances sharing streams through Redis: one upstream request per stream across the
//! cluster, the same id for the same event on every instance, resume on any instance.
//!
//! - `keys`: the Redis keys of a stream, named by a keyed digest of its key.
//! - `store`: the scripts and reads (claim, renew, release, append, range) and the blocking
//!   reader.
//! - `client`: the Redis client from `[cluster]`, and `ssegate check --connect`.
//! - [`follow`]: the one blocking read loop per instance that feeds followed streams.
//! - [`link`]: a stream's tie to the cluster, driven by its task (`hub/task/cluster.rs`).
//!
//! This module knows Redis and nothing of streams' buffers or subscribers: the stream task
//! decides what a claim, an append or a followed entry means for its clients.

pub(crate) mod client;
pub(crate) mod follow;
pub(crate) mod keys;
pub(crate) mod link;
pub(crate) mod store;
#[cfg(test)]
mod testing;

pub use client::{check as check_connection, ConnectError, Connected};

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ClusterConfig;
use crate::error::{chain, Fault};
use crate::metrics::ClusterMetrics;
use follow::Follower;
use keys::LogKeys;
use store::{Store, StoreError};

/// The longest a Redis call may take before it counts as failed: a stream never waits on
/// Redis longer than this.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the follower's blocking read waits for new entries.
pub(crate) const BLOCK: Duration = Duration::from_secs(1);
/// The first pause after a Redis failure before streams try it again; doubles up to
/// [`BREAKER_MAX`].
const BREAKER_MIN: Duration = Duration::from_millis(500);
const BREAKER_MAX: Duration = Duration::from_secs(5);

/// This instance's part of the cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClusterConfig,
    /// Who claims leases: the node's name and this process's own mark, so that a lease this
    /// process won (even when the answer was lost) is recognised as its own, and never one
    /// of another process configured with the same name.
    claimant: String,
    /// Connected once Redis first answered (the manager reconnects by itself afterwards).
    store: RwLock<Option<Store>>,
    breaker: Mutex<Breaker>,
    follower: Follower,
    metrics: ClusterMetrics,
}

/// Whether streams should try Redis now: after a failure they do not for a while (growing),
/// and run locally instead.
#[derive(Debug)]
struct Breaker {
    /// Redis failed last; streams try again from this instant.
    open_until: Option<Instant>,
    pause: Duration,
    /// Calls failed in a row: one may be a blip, two are not.
    failures: u32,
    /// The log said Redis is down (said once per change).
    told_down: bool,
}

impl Cluster {
    /// Starts this instance's part: connects to Redis in the background (never waiting for
    /// it: without Redis streams run locally) and starts the follower's read loop.
    pub(crate) fn start(config: &ClusterConfig, metrics: ClusterMetrics) -> Cluster {
        let follower = Follower::new(&config.prefix, &config.node);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                config: config.clone(),
                claimant: format!("{}~{:06x}", config.node, fastrand::u32(..0x0100_0000)),
                store: RwLock::new(None),
                breaker: Mutex::new(Breaker {
                    open_until: None,
                    pause: BREAKER_MIN,
                    failures: 0,
                    told_down: false,
                }),
                follower,
                metrics,
            }),
        };
        tokio::spawn(cluster.clone().keep_connected());
        tokio::spawn(follow::run(cluster.clone()));
        cluster
    }

    /// Connects the store, retrying until Redis answers once; then the connection manager
    /// keeps it connected.
    async fn keep_connected(self) {
        let mut pause = BREAKER_MIN;
        loop {
            match Store::connect(&self.inner.config, OP_TIMEOUT).await {
                Ok(store) => {
                    *self.inner.store.write().unwrap_or_else(PoisonError::into_inner) = Some(store);
                    self.succeeded();
                    tracing::info!(redis = %client::shown_url(&self.inner.config.redis), node = %self.inner.config.node, "cluster: connected to Redis");
                    return;
                }
                Err(error) => {
                    self.failed(&error);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BREAKER_MAX);
                }
            }
        }
    }

    /// The store, unless Redis is unconnected or failed a moment ago.
    pub(crate) fn store(&self) -> Option<Store> {
        let breaker = self.inner.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        if breaker.open_until.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        drop(breaker);
        self.inner
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When streams may try Redis again (now if they may).
    pub(crate) fn retry_at(&self) -> Instant {
        let breaker = self.inner.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        breaker.open_until.unwrap_or_else(Instant::now)
    }

    /// Records a failed Redis call: after two in a row (or one that retrying cannot fix:
    /// a refused password or command), streams run locally for a while.
    pub(crate) fn failed(&self, error: &StoreError) {
        self.inner.metrics.redis_errors.inc();
        let mut breaker = self.inner.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        breaker.failures += 1;
        if breaker.failures < 2 && error.is_transient() {
            tracing::debug!(error = %chain(error), "cluster: a Redis call failed");
            return;
        }
        breaker.open_until = Some(Instant::now() + breaker.pause);
        breaker.pause = (breaker.pause * 2).min(BREAKER_MAX);
        self.inner.metrics.redis_up.set(0);
        let redis = client::shown_url(&self.inner.config.redis);
        if std::mem::replace(&mut breaker.told_down, true) {
            tracing::debug!(error = %chain(error), "cluster: Redis call failed");
        } else if error.is_auth() {
            tracing::error!(%redis, error = %chain(error), fault = %Fault::Internal, "cluster: Redis refused the password: check `redis` and `password_file` in [cluster]; streams are read locally by each instance meanwhile");
        } else if !error.is_transient() {
            tracing::error!(%redis, error = %chain(error), cause = %error.fault(), fault = %Fault::Internal, "cluster: Redis refuses what ssegate needs (scripts, streams, or data under its keys); streams are read locally by each instance meanwhile");
        } else {
            tracing::warn!(%redis, error = %chain(error), cause = %error.fault(), fault = %Fault::Upstream, "cluster: Redis unavailable; streams are read locally by each instance (clients stay connected; resume across instances is not exact until Redis is back)");
        }
    }

    /// Records a Redis call that worked.
    pub(crate) fn succeeded(&self) {
        let mut breaker = self.inner.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        breaker.open_until = None;
        breaker.pause = BREAKER_MIN;
        breaker.failures = 0;
        self.inner.metrics.redis_up.set(1);
        if std::mem::replace(&mut breaker.told_down, false) {
            tracing::info!(redis = %client::shown_url(&self.inner.config.redis), "cluster: Redis is back; streams rejoin the cluster");
        }
    }

    /// Whether Redis answered last time it was asked.
    pub(crate) fn is_up(&self) -> bool {
        !self
            .inner
            .breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .told_down
            && self
                .inner
                .store
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
    }

    /// The Redis keys of the stream with `key`.
    pub(crate) fn keys(&self, key: &[u8]) -> LogKeys {
        LogKeys::new(&self.inner.config.prefix, &self.inner.config.secret, key)
    }

    /// The name this process claims leases under.
    pub(crate) fn claimant(&self) -> &str {
        &self.inner.claimant
    }

    /// Whether the lease `token` was given to this process.
    pub(crate) fn owns(&self, token: &str) -> bool {
        token
            .rsplit_once('/')
            .is_some_and(|(claimant, _)| claimant == self.inner.claimant)
    }

    pub(crate) fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    pub(crate) fn metrics(&self) -> &ClusterMetrics {
        &self.inner.metrics
    }

    pub(crate) fn follower(&self) -> &Follower {
        &self.inner.follower
    }

    /// Times a Redis call, recording its outcome in the breaker and the metrics.
    pub(crate) async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = call.await;
        self.inner
            .metrics
            .redis_latency
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.succeeded(),
            Err(error) => self.failed(error),
        }
        result
    }
}
