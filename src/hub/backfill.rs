//! Resume from the cluster's log: a client whose Last-Event-ID is older than this instance's
//! buffer (it was connected to another instance, or this one just started following the
//! stream) gets the events it missed from Redis, then the buffer, then live events, with
//! nothing repeated at the hand-over.
//!
//! Concurrent resumes of one stream are merged: one read at a time per stream, and its result
//! kept for the next resumes that it covers (a reconnect storm after a deploy costs one read).
//! The entries are shared: each client holds a reference and a position, not a copy.

use std::sync::Arc;

use bytes::Bytes;

use super::key::MAX_LAST_EVENT_ID;
use super::ring::Resume;
use super::stream::{Fetched, Stream};

/// Most entries one resume reads from Redis.
const MAX_ENTRIES: u64 = 100_000;

/// The events a resuming client missed, from the log: written before the buffer's.
#[derive(Debug)]
pub(crate) struct Backlog {
    entries: Arc<[Bytes]>,
    /// The next entry to write.
    pub(crate) index: usize,
    /// The log's number of the event after the last entry.
    pub(crate) next: u64,
}

impl Backlog {
    /// The entries not yet written.
    pub(crate) fn rest(&self) -> &[Bytes] {
        self.entries.get(self.index..).unwrap_or_default()
    }
}

/// What a client that last saw `last_id` missed, when this instance's buffer does not have
/// it and the cluster's log does; `None` otherwise (the buffer has it, or nobody has: a gap).
pub(crate) async fn fetch(stream: &Arc<Stream>, last_id: &str) -> Option<Backlog> {
    if stream.private || last_id.len() > MAX_LAST_EVENT_ID {
        return None;
    }
    let cluster = stream.shared.cluster.get()?;
    let (number, first, epoch, app_ids) = {
        let state = stream.lock();
        // A stream read locally has no log to resume from.
        if !matches!(state.cluster, Some(("leader" | "follower", _))) {
            return None;
        }
        if matches!(state.ring.resume(last_id), Resume::At(_)) {
            return None;
        }
        let ring = &state.ring;
        (
            ring.log_number(last_id),
            ring.log_first(),
            ring.epoch().to_owned(),
            state.app_ids,
        )
    };
    let store = cluster.store()?;
    let keys = cluster.keys(&stream.key);
    // One read of the log at a time per stream: a reconnect storm queues here, and what the
    // first read fetched serves the others.
    let mut cached = stream.backfill.lock().await;
    let from = match number {
        Some(n) => n.checked_add(1)?,
        // Another epoch's id, or (when the app gives ids at all) an app's own id older than
        // the buffer: the log knows the latter, within its length. Without app ids nothing is
        // scanned, so a made-up id costs Redis nothing.
        None if !app_ids || last_id.starts_with(epoch.as_str()) => return None,
        None => {
            let limit = usize::try_from(MAX_ENTRIES).unwrap_or(usize::MAX);
            cluster
                .call(store.find_app_id(&keys, last_id, first, limit))
                .await
                .ok()??
                .checked_add(1)?
        }
    };
    if from > first {
        return None;
    }
    if from == first {
        // It saw everything before the buffer: nothing to read, an exact resume.
        cluster.metrics().backfills.inc();
        return Some(Backlog {
            entries: Arc::from(Vec::new()),
            index: 0,
            next: from,
        });
    }
    // The log's first number the buffer may have moved on since.
    let first = stream.lock().ring.log_first();
    let usable = cached
        .as_ref()
        .is_some_and(|fetched| fetched.from <= from && fetched.end() >= first && from < fetched.end());
    if !usable {
        let to = first - 1;
        let count = (to - from + 1).min(MAX_ENTRIES);
        let limit = usize::try_from(count).unwrap_or(usize::MAX);
        let entries = cluster.call(store.range(&keys, from, to, limit)).await.ok()?;
        // Only an unbroken run from `from` to the buffer is a resume; anything else (the log
        // was trimmed past `from`) is a gap.
        let contiguous = entries.iter().zip(from..).all(|(entry, n)| entry.seq == n);
        if entries.first().map(|e| e.seq) != Some(from) || !contiguous {
            return None;
        }
        let fetched = Fetched {
            from,
            entries: entries.into_iter().map(|entry| entry.bytes).collect(),
        };
        *cached = Some(fetched);
    }
    let fetched = cached.as_ref()?;
    cluster.metrics().backfills.inc();
    Some(Backlog {
        entries: fetched.entries.clone(),
        index: usize::try_from(from - fetched.from).ok()?,
        next: fetched.end(),
    })
}
