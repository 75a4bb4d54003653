//! A stream's tie to the cluster: its keys, its role, the one Redis call it has in flight, its
//! lease timer and its place in the follower. The stream's task drives it (`hub/task/cluster.rs`
//! decides what each outcome means for the stream's clients); everything here is cancel-safe
//! to poll from the task's `select!`, since calls in flight live in `self`.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{sleep_until, Instant, Sleep};

use super::follow::{Followed, Following};
use super::keys::LogKeys;
use super::store::{Appended, Claim, Logged, Position, StoreError};
use super::Cluster;

/// What the stream is to the cluster now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// Asking Redis for the lease.
    Claiming,
    /// It holds the lease (token): it reads the upstream and appends to the log.
    Leader(String),
    /// Another instance (named) holds it: the stream follows the log.
    Follower(String),
    /// Redis is unavailable: the stream reads its own upstream, in a local epoch.
    Local,
}

impl Role {
    /// The role's name, as `/streams` shows it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Role::Claiming => "claiming",
            Role::Leader(_) => "leader",
            Role::Follower(_) => "follower",
            Role::Local => "local",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened, for the task.
#[derive(Debug)]
pub(crate) enum Happened {
    Claimed(Result<Claim, StoreError>),
    /// The outcome of an append of the batch in flight.
    Appended(Result<Appended, StoreError>),
    /// The lease still holds until the instant given (`None`: it was lost).
    Renewed(Result<Option<Instant>, StoreError>),
    /// The stream started over in a new epoch at the leader's request, with this token
    /// (`None`: the lease is lost).
    Restarted(String, Result<Option<Position>, StoreError>),
    /// The app's headers were stored beside the stream (`false`: the lease is lost).
    HeadersSet(Result<bool, StoreError>),
    /// Log entries read for a resume or a catch-up: from number `from` on.
    Read(Result<Vec<Logged>, StoreError>),
    /// New entries of a followed log (or why it cannot be read).
    Followed(Followed),
    /// The follower dropped this stream (its task fell behind): follow again.
    Unfollowed,
    /// The timer set with [`Link::at`] is due.
    Due,
}

type Call = Pin<Box<dyn Future<Output = Happened> + Send>>;

/// One stream's tie to the cluster.
pub(crate) struct Link {
    pub(crate) cluster: Cluster,
    pub(crate) keys: LogKeys,
    pub(crate) role: Role,
    /// The one Redis call in flight (the log's order depends on one at a time).
    call: Option<Call>,
    timer: Option<Pin<Box<Sleep>>>,
    following: Option<Following>,
    /// Until when the lease is known to hold (monotonic): renewal sent at `t`, confirmed,
    /// holds until `t + lease`.
    pub(crate) lease_until: Option<Instant>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("digest", &self.keys.digest)
            .field("role", &self.role)
            .field("busy", &self.call.is_some())
            .finish()
    }
}

impl Link {
    pub(crate) fn new(cluster: Cluster, key: &[u8]) -> Link {
        Link {
            keys: cluster.keys(key),
            cluster,
            role: Role::Claiming,
            call: None,
            timer: None,
            following: None,
            lease_until: None,
        }
    }

    /// Whether a Redis call is in flight.
    pub(crate) fn busy(&self) -> bool {
        self.call.is_some()
    }

    /// The lease's length.
    pub(crate) fn lease(&self) -> Duration {
        self.cluster.config().lease
    }

    /// The next thing that happened: a call's outcome, followed entries, or the timer.
    pub(crate) async fn next(&mut self) -> Happened {
        poll_fn(|cx| {
            if let Some(call) = self.call.as_mut() {
                if let Poll::Ready(happened) = call.as_mut().poll(cx) {
                    self.call = None;
                    return Poll::Ready(happened);
                }
            }
            if let Some(following) = self.following.as_mut() {
                match following.entries.poll_recv(cx) {
                    Poll::Ready(Some(followed)) => return Poll::Ready(Happened::Followed(followed)),
                    Poll::Ready(None) => {
                        self.following = None;
                        return Poll::Ready(Happened::Unfollowed);
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(timer) = self.timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    self.timer = None;
                    return Poll::Ready(Happened::Due);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Sets the timer (one at a time).
    pub(crate) fn at(&mut self, when: Instant) {
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().reset(when),
            None => self.timer = Some(Box::pin(sleep_until(when))),
        }
    }

    fn start(&mut self, call: impl Future<Output = Happened> + Send + 'static) {
        self.call = Some(Box::pin(call));
    }

    /// Asks for the lease; when the stream's data is missing or not ssegate's, Redis starts
    /// `new_epoch`. False when Redis is unavailable now (nothing was sent).
    pub(crate) fn claim(&mut self, new_epoch: &str, ttl: Duration) -> bool {
        let Some(store) = self.cluster.store() else {
            return false;
        };
        let (cluster, keys, epoch) = (self.cluster.clone(), self.keys.clone(), new_epoch.to_owned());
        let (node, lease) = (cluster.claimant().to_owned(), self.lease());
        self.start(async move {
            Happened::Claimed(cluster.call(store.claim(&keys, &node, lease, &epoch, ttl)).await)
        });
        true
    }

    /// Confirms the lease for another term. False when Redis is unavailable now.
    pub(crate) fn renew(&mut self, token: &str) -> bool {
        let Some(store) = self.cluster.store() else {
            return false;
        };
        let (cluster, keys, token) = (self.cluster.clone(), self.keys.clone(), token.to_owned());
        let lease = self.lease();
        let sent = Instant::now();
        self.start(async move {
            let result = cluster.call(store.renew(&keys, &token, lease)).await;
            // The lease holds a whole term from when the renewal was sent, not answered.
            Happened::Renewed(result.map(|held| held.then_some(sent + lease)))
        });
        true
    }

    /// Appends `events` (numbered from `first`) to the log, fenced by `token`. False when Redis
    /// is unavailable now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append(
        &mut self,
        token: &str,
        epoch: &str,
        first: u64,
        events: Vec<(Bytes, Option<Box<str>>)>,
        upstream_id: Option<String>,
        maxlen: usize,
        ttl: Duration,
    ) -> bool {
        let Some(store) = self.cluster.store() else {
            return false;
        };
        let (cluster, keys) = (self.cluster.clone(), self.keys.clone());
        let (token, epoch) = (token.to_owned(), epoch.to_owned());
        self.start(async move {
            let call = store.append(
                &keys,
                &token,
                &epoch,
                first,
                &events,
                upstream_id.as_deref(),
                maxlen,
                ttl,
            );
            Happened::Appended(cluster.call(call).await)
        });
        true
    }

    /// Stores the app's response headers beside the stream, fenced by `token`. False when Redis
    /// is unavailable now.
    pub(crate) fn set_headers(&mut self, token: &str, headers: Bytes) -> bool {
        let Some(store) = self.cluster.store() else {
            return false;
        };
        let (cluster, keys, token) = (self.cluster.clone(), self.keys.clone(), token.to_owned());
        self.start(async move {
            Happened::HeadersSet(cluster.call(store.set_headers(&keys, &token, &headers)).await)
        });
        true
    }

    /// Starts the stream over in `new_epoch`, fenced by `token`. False when Redis is
    /// unavailable now.
    pub(crate) fn restart(&mut self, token: &str, new_epoch: &str, ttl: Duration) -> bool {
        let Some(store) = self.cluster.store() else {
            return false;
        };
        let (cluster, keys) = (self.cluster.clone(), self.keys.clone());
        let (token, epoch) = (token.to_owned(), new_epoch.to_owned());
        self.start(async move {
            let result = cluster.call(store.restart(&keys, &token, &epoch, ttl)).await;
            Happened::Restarted(token, result)
        });
        true
    }

    /// Reads the log's entries numbered `from..=to`. False when Redis is unavailable now.
    pub(crate) fn read(&mut self, from: u64, to: u64) -> bool {
        let Some(store) = self.cluster.store() else {
            return false;
        };
        let (cluster, keys) = (self.cluster.clone(), self.keys.clone());
        let limit = usize::try_from(to.saturating_sub(from) + 1).unwrap_or(usize::MAX);
        self.start(async move { Happened::Read(cluster.call(store.range(&keys, from, to, limit)).await) });
        true
    }

    /// Follows the log from the entry after number `after`.
    pub(crate) fn follow(&mut self, after: u64) {
        self.following = Some(self.cluster.follower().follow(&self.cluster, &self.keys, after));
    }

    /// Stops following.
    pub(crate) fn unfollow(&mut self) {
        self.following = None;
    }

    /// Gives the lease up, without waiting (the stream is ending or stepping down): another
    /// instance with subscribers takes it at its next claim.
    pub(crate) fn release(&mut self, token: &str) {
        self.call = None;
        let Some(store) = self.cluster.store() else {
            return;
        };
        let (cluster, keys, token) = (self.cluster.clone(), self.keys.clone(), token.to_owned());
        tokio::spawn(async move {
            let _ = cluster.call(store.release(&keys, &token)).await;
        });
    }

    /// Forgets the call in flight (its outcome no longer matters).
    pub(crate) fn abandon(&mut self) {
        self.call = None;
    }
}
