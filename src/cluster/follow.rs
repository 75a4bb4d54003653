//! The follower: one blocking read loop per instance, on its own connection, over every stream
//! this instance follows (not one per stream, and never one per client). Each followed stream
//! gets its new log entries through a small channel its task reads.
//!
//! The redis crate's commands are not cancellation-safe, so the loop never races a blocking
//! read against anything: a stream that starts following while a read is blocked writes to
//! this instance's wake key, which ends the read early; the loop then reads its registry again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::keys::LogKeys;
use super::store::{Logged, Reader};
use super::{Cluster, BLOCK};
use crate::error::chain;

/// Entries a followed stream may have waiting before its task is considered stuck (it is then
/// dropped from the loop and follows again from its own position).
const QUEUE: usize = 32;
/// Most entries read per stream per round.
const COUNT: usize = 512;

/// What a followed stream receives.
#[derive(Debug)]
pub(crate) enum Followed {
    /// New entries of its log, in order.
    Entries(Vec<Logged>),
    /// Its log holds something ssegate did not write (or cannot read): treated as vanished.
    Broken(String),
}

/// The streams this instance follows, and where each stands.
#[derive(Debug)]
pub(crate) struct Follower {
    shared: Arc<Registry>,
    wake_key: String,
}

#[derive(Debug)]
struct Registry {
    streams: Mutex<HashMap<String, Registration>>,
    /// The registry changed while the loop had nothing to read.
    changed: Notify,
    /// A wake is on its way to Redis (one at a time is enough).
    waking: AtomicBool,
    ids: AtomicU64,
}

#[derive(Debug)]
struct Registration {
    id: u64,
    /// The number of the last entry delivered.
    after: u64,
    tx: mpsc::Sender<Followed>,
}

/// A stream's place in the follower; leaving it (drop) stops the reads for it.
#[derive(Debug)]
pub(crate) struct Following {
    shared: Arc<Registry>,
    log: String,
    id: u64,
    /// The entries, in order. Closed when the follower dropped this stream (it fell behind):
    /// follow again from where the stream stands.
    pub(crate) entries: mpsc::Receiver<Followed>,
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut streams = lock(&self.shared.streams);
        if streams.get(&self.log).is_some_and(|r| r.id == self.id) {
            streams.remove(&self.log);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Follower {
    pub(crate) fn new(prefix: &str, node: &str) -> Follower {
        Follower {
            shared: Arc::new(Registry {
                streams: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                waking: AtomicBool::new(false),
                ids: AtomicU64::new(0),
            }),
            wake_key: LogKeys::wake(prefix, node),
        }
    }

    /// Follows the log of `keys` from the entry after number `after`.
    pub(crate) fn follow(&self, cluster: &Cluster, keys: &LogKeys, after: u64) -> Following {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.shared.ids.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.streams).insert(keys.log.clone(), Registration { id, after, tx });
        self.shared.changed.notify_one();
        if !self.shared.waking.swap(true, Ordering::AcqRel) {
            if let Some(store) = cluster.store() {
                let (cluster, key) = (cluster.clone(), self.wake_key.clone());
                tokio::spawn(async move {
                    let _ = cluster.call(store.wake(&key)).await;
                });
            } else {
                self.shared.waking.store(false, Ordering::Release);
            }
        }
        Following {
            shared: self.shared.clone(),
            log: keys.log.clone(),
            id,
            entries: rx,
        }
    }
}

/// The read loop: reads every followed stream's new entries in one blocking call, hands them
/// to their streams, and goes on for as long as the process runs.
pub(crate) async fn run(cluster: Cluster) {
    let follower = cluster.follower();
    let registry = follower.shared.clone();
    let wake_key = follower.wake_key.clone();
    let mut wake_after = String::from("0-0");
    let mut reader: Option<Reader> = None;
    let mut pause = Duration::from_millis(200);
    loop {
        let streams: Vec<(String, u64, u64)> = {
            let streams = lock(&registry.streams);
            streams
                .iter()
                .map(|(log, r)| (log.clone(), r.after, r.id))
                .collect()
        };
        registry.waking.store(false, Ordering::Release);
        if streams.is_empty() {
            registry.changed.notified().await;
            continue;
        }
        let conn = match reader.as_mut() {
            Some(conn) => conn,
            None => match Reader::connect(cluster.config(), BLOCK, super::OP_TIMEOUT).await {
                Ok(conn) => reader.insert(conn),
                Err(error) => {
                    tracing::debug!(error = %chain(&error), "cluster follower: cannot connect to Redis yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        let logs: Vec<(&str, u64)> = streams
            .iter()
            .map(|(log, after, _)| (log.as_str(), *after))
            .collect();
        let read = conn
            .read(&logs, Some((wake_key.as_str(), wake_after.as_str())), COUNT)
            .await;
        let batch = match read {
            Ok(batch) => batch,
            Err(error) => {
                cluster.inner.metrics.redis_errors.inc();
                tracing::debug!(error = %chain(&error), "cluster follower: read failed; reconnecting");
                reader = None;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        pause = Duration::from_millis(200);
        if let Some(id) = batch.wake {
            wake_after = id;
        }
        let mut streams_now = lock(&registry.streams);
        for (index, result) in batch.logs.into_iter().enumerate() {
            let Some((log, _, id)) = streams.get(index) else {
                continue;
            };
            // Only to the registration the read was for: a stream that followed again since
            // (from another position) gets its entries from its own next read.
            let Some(registration) = streams_now.get_mut(log).filter(|r| r.id == *id) else {
                continue;
            };
            let message = match result {
                Ok(entries) => {
                    let Some(last) = entries.last() else { continue };
                    registration.after = last.seq;
                    Followed::Entries(entries)
                }
                Err(error) => Followed::Broken(chain(&error).to_string()),
            };
            if registration.tx.try_send(message).is_err() {
                // Its task is not keeping up (or gone): it follows again from where it is.
                streams_now.remove(log);
            }
        }
    }
}
