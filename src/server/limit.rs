//! `max_connections` as a semaphore taken before `accept`: past the limit the listener stops
//! accepting (the kernel's backlog holds the queue), so a flood costs no task and no TLS
//! handshake per connection, except for a small allowance of connections answered 503.
//!
//! A reload may change the limit while connections hold permits: a raise adds permits at once;
//! a cut forgets the free ones and owes the rest, paid by connections that close (their permit
//! is not given back).

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Connections answered 503 at once when the limit is reached. Each lasts at most
/// `header_read_timeout`; past this many, the listener waits instead.
pub(crate) const MAX_REFUSING: usize = 64;

/// The connection limit in force. Cheap to clone; [`ConnectionLimit::set`] changes it.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionLimit {
    inner: Arc<Inner>,
    refusals: Arc<Semaphore>,
}

#[derive(Debug)]
struct Inner {
    permits: Semaphore,
    owed: Mutex<Owed>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Owed {
    /// The limit in force (`Semaphore::MAX_PERMITS` for none).
    capacity: usize,
    /// Permits held by open connections beyond the limit, since a cut: not given back.
    debt: usize,
}

/// What the listener may do with its next connection.
pub(super) enum Admission {
    /// Serve it.
    Serve(Reserved),
    /// Answer it 503 (the permit is one of [`MAX_REFUSING`]).
    Refuse(OwnedSemaphorePermit),
}

/// A place taken before `accept`; [`Reserved::open`] once a connection fills it.
pub(super) struct Reserved(Option<Arc<Inner>>);

/// An open connection's place: gives its permit back (or pays a cut's debt) when dropped.
/// One pointer, as it lives as long as the connection (an idle SSE client for hours).
pub(super) struct Slot(Arc<Inner>);

fn capacity(max: Option<u64>) -> usize {
    max.map_or(Semaphore::MAX_PERMITS, |max| {
        usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS)
    })
}

impl ConnectionLimit {
    /// A limit of `max` connections (`None`: none), counted in `metrics`.
    pub(crate) fn new(max: Option<u64>, metrics: Arc<Metrics>) -> Self {
        let capacity = capacity(max);
        ConnectionLimit {
            inner: Arc::new(Inner {
                permits: Semaphore::new(capacity),
                owed: Mutex::new(Owed { capacity, debt: 0 }),
                metrics,
            }),
            refusals: Arc::new(Semaphore::new(MAX_REFUSING)),
        }
    }

    /// Changes the limit to `max`; open connections stay open.
    pub(crate) fn set(&self, max: Option<u64>) {
        let wanted = capacity(max);
        let mut owed = self.inner.owed.lock().unwrap_or_else(PoisonError::into_inner);
        if wanted >= owed.capacity {
            let grow = wanted - owed.capacity;
            let paid = grow.min(owed.debt);
            owed.debt -= paid;
            self.inner.permits.add_permits(grow - paid);
        } else {
            let cut = owed.capacity - wanted;
            let forgotten = self.inner.permits.forget_permits(cut);
            owed.debt += cut - forgotten;
        }
        owed.capacity = wanted;
    }

    /// A place if one is free now.
    fn try_reserve(&self) -> Option<Reserved> {
        let permit = self.inner.permits.try_acquire().ok()?;
        // The slot gives it back by hand, so it can pay a debt instead.
        permit.forget();
        Some(Reserved(Some(self.inner.clone())))
    }

    /// Waits for a place to serve a connection, or, while the limit is reached, for one of the
    /// few to refuse it. Cancel-safe: nothing is taken until it returns.
    pub(super) async fn admit(&self) -> Admission {
        if let Some(reserved) = self.try_reserve() {
            return Admission::Serve(reserved);
        }
        if let Ok(refusal) = self.refusals.clone().try_acquire_owned() {
            return Admission::Refuse(refusal);
        }
        // Both full: stop accepting until a connection ends or a refusal is done.
        tokio::select! {
            Ok(permit) = self.inner.permits.acquire() => {
                permit.forget();
                Admission::Serve(Reserved(Some(self.inner.clone())))
            }
            Ok(refusal) = self.refusals.clone().acquire_owned() => Admission::Refuse(refusal),
        }
    }

    /// `admission` again after a wait in `accept`: a connection may have closed meanwhile, and
    /// a refused one is then served instead.
    pub(super) fn recheck(&self, admission: Admission) -> Admission {
        match admission {
            Admission::Refuse(refusal) => match self.try_reserve() {
                Some(reserved) => Admission::Serve(reserved),
                None => Admission::Refuse(refusal),
            },
            serve => serve,
        }
    }
}

impl Reserved {
    /// A connection took the place (always `Some`: a place is opened once).
    pub(super) fn open(mut self) -> Option<Slot> {
        let inner = self.0.take()?;
        inner.metrics.connections.inc();
        Some(Slot(inner))
    }
}

impl Inner {
    fn release(&self) {
        let mut owed = self.owed.lock().unwrap_or_else(PoisonError::into_inner);
        if owed.debt > 0 {
            owed.debt -= 1;
        } else {
            // Under the lock: a cut counted in between would take this permit as debt too.
            self.permits.add_permits(1);
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            inner.release();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u64) -> ConnectionLimit {
        ConnectionLimit::new(Some(max), Arc::new(Metrics::new()))
    }

    #[test]
    fn a_slot_costs_one_pointer() {
        assert_eq!(std::mem::size_of::<Option<Slot>>(), std::mem::size_of::<usize>());
    }

    #[tokio::test]
    async fn past_the_limit_connections_are_refused_then_the_listener_waits() {
        let limit = limit(1);
        let Admission::Serve(one) = limit.admit().await else {
            panic!("one place")
        };
        let _one = one.open();
        let mut refusals = Vec::new();
        for _ in 0..MAX_REFUSING {
            match limit.admit().await {
                Admission::Refuse(permit) => refusals.push(permit),
                Admission::Serve(_) => panic!("over the limit"),
            }
        }
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), limit.admit()).await;
        assert!(
            waiting.is_err(),
            "the listener waits once the refusals are all in use"
        );
        refusals.pop();
        assert!(matches!(limit.admit().await, Admission::Refuse(_)));
    }

    #[tokio::test]
    async fn a_cut_is_paid_by_closing_connections_and_a_raise_applies_at_once() {
        let limit = limit(3);
        let mut open = Vec::new();
        for _ in 0..3 {
            let Admission::Serve(reserved) = limit.admit().await else {
                panic!("three places")
            };
            open.push(reserved.open());
        }
        limit.set(Some(1));
        // Two must close before there is room for one more.
        open.pop();
        assert!(limit.try_reserve().is_none());
        open.pop();
        assert!(limit.try_reserve().is_none());
        open.pop();
        assert!(limit.try_reserve().is_some());
        limit.set(Some(3));
        let places: Vec<_> = (0..3).filter_map(|_| limit.try_reserve()).collect();
        assert_eq!(places.len(), 3);
        assert!(limit.try_reserve().is_none());
        drop(places);
        limit.set(None);
        assert!(limit.try_reserve().is_some());
    }
}
