//! Per-connection state: requests in flight, and the deadlines of an idle connection.
//!
//! A connection with no request in flight is either waiting for its first request, idle
//! between requests (keep-alive), or receiving a request head. Each has its own deadline:
//! `header_read_timeout` from the accept or from the first byte of a head, `keepalive_timeout`
//! from the end of the last response. A watchdog beside the connection closes it when the one in
//! force passes (`watched` serves a connection under it). While a request is in flight (an SSE
//! response lasts for hours) none applies.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Fault;

/// What the watchdog, the I/O wrapper and the requests of one connection share.
#[derive(Debug)]
pub(crate) struct ConnState {
    inflight: AtomicUsize,
    times: Mutex<Times>,
    changed: Notify,
}

#[derive(Debug)]
struct Times {
    /// No request has started yet.
    first: bool,
    /// Accept, or the end of the last response.
    idle_since: Instant,
    /// First byte received while idle: a request head is on its way.
    head_since: Option<Instant>,
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request head took longer than `header_read_timeout`.
    Head,
    /// Idle between requests longer than `keepalive_timeout`.
    Idle,
}

/// One request in flight on a connection; dropped when its response body ends.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.lock().idle_since = Instant::now();
            self.0.changed.notify_one();
        }
    }
}

impl ConnState {
    /// The state of a connection accepted now.
    pub(crate) fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            inflight: AtomicUsize::new(0),
            times: Mutex::new(Times {
                first: true,
                idle_since: Instant::now(),
                head_since: None,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's head arrived: no deadline until its response ends.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let mut times = self.lock();
        times.first = false;
        times.head_since = None;
        drop(times);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Bytes arrived. While idle, they start a request head and its deadline.
    pub(crate) fn on_read(&self) {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return;
        }
        let mut times = self.lock();
        if times.head_since.is_none() {
            times.head_since = Some(Instant::now());
            drop(times);
            self.changed.notify_one();
        }
    }

    /// The deadline in force, if any.
    fn deadline(&self, header: Duration, keepalive: Duration) -> Option<(Instant, Expiry)> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let times = self.lock();
        Some(match (times.head_since, times.first) {
            (Some(since), _) => (since + header, Expiry::Head),
            (None, true) => (times.idle_since + header, Expiry::Head),
            (None, false) => (times.idle_since + keepalive, Expiry::Idle),
        })
    }

    /// Resolves when the connection has overstayed a deadline.
    pub(crate) async fn expired(&self, header: Duration, keepalive: Duration) -> Expiry {
        // The timer is boxed and made only when a deadline is in force: a connection with a
        // request in flight (an SSE client, for hours) carries none.
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.deadline(header, keepalive) {
                None => {
                    timer = None;
                    changed.await;
                }
                Some((deadline, why)) => {
                    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    sleep.as_mut().reset(deadline);
                    tokio::select! {
                        () = changed => {}
                        () = sleep.as_mut() => {
                            if self.deadline(header, keepalive).is_some_and(|(d, _)| d <= Instant::now()) {
                                return why;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Serves a connection while its watchdog allows (see `conn`): `deadlines` are
/// `header_read_timeout` and `keepalive_timeout`.
pub(crate) async fn watched(
    serving: impl Future<Output = ()>,
    state: Arc<ConnState>,
    deadlines: (Duration, Duration),
    remote: SocketAddr,
) {
    tokio::select! {
        () = serving => {}
        why = state.expired(deadlines.0, deadlines.1) => {
            match why {
                Expiry::Head => tracing::debug!(%remote, fault = %Fault::Client, "request head not complete within header_read_timeout; closing"),
                Expiry::Idle => tracing::debug!(%remote, "keep-alive connection idle past keepalive_timeout; closing"),
            }
        }
    }
}
