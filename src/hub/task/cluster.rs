//! The stream task's part in a cluster: what a claim, an append, a renewal or a followed entry
//! means for this stream's clients.
//!
//! - **Leader** (holds the lease): reads the upstream; each batch of events goes to the log
//!   (one fenced script call), and only once Redis has it into the ring, with the id it carries
//!   on every instance (`<epoch>-<n>`, n its number in the log).
//! - **Follower**: the upstream is not read here; the follower loop hands over the log's new
//!   entries, which go into the ring as they are (same bytes, same ids). Every few seconds it
//!   asks for the lease, and takes over when the leader is gone.
//! - **Local**: Redis is unavailable: the upstream is read here, in a local epoch, so clients
//!   never wait on Redis. Back in the cluster, clients get one `gap` (per `on_gap`).
//!
//! The leader's work is in `cluster/leader.rs`, the follower's in `cluster/follower.rs`, the
//! app's headers as kept in Redis in `cluster/headers.rs`; the roles' changes and the local
//! mode are here.
//!
//! An epoch change (local to cluster and back, or a log that vanished) starts the ring over
//! ([`Ring::restart`]): cursors stay valid, and the clients still connected get one `gap` event
//! when `on_gap = "event"`.

use std::ops::ControlFlow::{self, Continue};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

mod follower;
mod headers;
mod leader;

use super::{push_event, Task};
use crate::cluster::follow::Followed;
use crate::cluster::link::{Happened, Link, Role};
use crate::cluster::store::{Claim, Position};
use crate::cluster::Cluster;
use crate::config::{IdMode, OnGap};
use crate::error::{chain, Fault};
use crate::hub::ring::new_epoch;
use crate::hub::source::Source;
use crate::hub::stream::End;
use crate::sse::{encode_event, Event};

/// Most events sent to Redis in one append.
const BATCH: usize = 256;
/// How often a local stream looks whether Redis is back (at most).
const LOCAL_RETRY: Duration = Duration::from_secs(1);
/// How soon a new follower asks again for the app's headers the leader has not stored yet,
/// and how many times before its subscribers are served without them.
const HEADERS_POLL: Duration = Duration::from_millis(100);
const MAX_HEADER_POLLS: u8 = 10;
/// How long a leader waits before sending again an append whose outcome it did not learn.
const APPEND_RETRY: Duration = Duration::from_millis(100);

/// An event read by the leader, waiting for the log.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) event: Event,
    /// The app's `retry:` that came just before it.
    pub(crate) retry: Option<u64>,
}

/// A shared stream's state in the cluster.
#[derive(Debug)]
pub(crate) struct Clustered {
    link: Link,
    /// Events read from the upstream, not yet sent to the log.
    outbox: Vec<Outgoing>,
    /// The batch the append in flight carries.
    in_flight: Vec<Outgoing>,
    /// A catch-up read is in flight; then the lease (this token, at this position) is taken.
    taking_over: Option<(String, Position)>,
    /// The app's headers to store beside the stream (a leader's, after its upstream answered).
    headers_due: Option<Bytes>,
    /// The headers last taken from the log's metadata (a follower's).
    headers_seen: Option<Bytes>,
    /// Claims a new follower made while waiting for the leader's headers.
    header_polls: u8,
    /// The lease is due for renewal (sent when no call is in flight).
    renew_due: bool,
    /// The log's number of the last event this stream got, so entries are taken once.
    role_gauge: Option<RoleGauge>,
}

/// Counts the stream under its role (`cluster_streams_led` and so on) while it has it.
#[derive(Debug)]
struct RoleGauge(prometheus_client::metrics::gauge::Gauge);

impl Drop for RoleGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Clustered {
    pub(crate) fn new(cluster: Cluster, key: &[u8]) -> Clustered {
        Clustered {
            link: Link::new(cluster, key),
            outbox: Vec::new(),
            in_flight: Vec::new(),
            taking_over: None,
            headers_due: None,
            headers_seen: None,
            header_polls: 0,
            renew_due: false,
            role_gauge: None,
        }
    }

    /// Where the leader's events go before the ring; `None` unless this stream leads.
    pub(super) fn outbox(&mut self) -> Option<&mut Vec<Outgoing>> {
        matches!(self.link.role, Role::Leader(_)).then_some(&mut self.outbox)
    }

    fn set_role(&mut self, role: Role) -> (&'static str, Option<String>) {
        let metrics = self.link.cluster.metrics();
        let gauge = match &role {
            Role::Leader(_) => Some(metrics.streams_led.clone()),
            Role::Follower(_) => Some(metrics.streams_followed.clone()),
            Role::Local => Some(metrics.streams_local.clone()),
            Role::Claiming => None,
        };
        self.role_gauge = gauge.map(|gauge| {
            gauge.inc();
            RoleGauge(gauge)
        });
        let holder = match &role {
            Role::Leader(_) => Some(self.link.cluster.config().node.clone()),
            Role::Follower(holder) => Some(node_of(holder).to_owned()),
            Role::Local | Role::Claiming => None,
        };
        let name = role.name();
        self.link.role = role;
        (name, holder)
    }
}

/// What happened to the stream's tie to the cluster (pends forever without one).
pub(super) async fn next(cluster: &mut Option<Box<Clustered>>) -> Happened {
    match cluster {
        Some(cluster) => cluster.link.next().await,
        None => std::future::pending().await,
    }
}

/// The node's name in a lease token (`<node>~<mark>/<generation>`).
fn node_of(token: &str) -> &str {
    token.split(['~', '/']).next().unwrap_or_default()
}

/// How long Redis keeps a stream nobody appends to: as long as its events may be resumed
/// from, and at least as long as it lingers, plus a lease.
fn ttl(settings: &crate::config::Settings, lease: Duration) -> Duration {
    settings
        .buffer_age
        .unwrap_or(Duration::from_secs(24 * 3600))
        .max(settings.linger)
        + lease
}

/// A pause of up to a quarter of `base` more, so instances do not ask in step.
fn jitter(base: Duration) -> Duration {
    base + base.mul_f64(fastrand::f64() / 4.0)
}

impl<S: Source> Task<S> {
    /// Gives the stream its role, shown in `/streams`.
    fn set_role(&mut self, role: Role) {
        let shown = self.clustered().set_role(role);
        self.stream.lock().cluster = Some(shown);
    }

    fn clustered(&mut self) -> &mut Clustered {
        match self.cluster.as_mut() {
            Some(cluster) => cluster,
            None => unreachable!("cluster handlers run only for clustered streams"),
        }
    }

    /// The stream opened: asks for its lease (or runs locally while Redis is unavailable).
    pub(super) fn join_cluster(&mut self) {
        self.claim();
    }

    fn claim(&mut self) {
        let lease = self.clustered().link.lease();
        let ttl = ttl(&self.route.config.settings, lease);
        let link = &mut self.clustered().link;
        if link.busy() {
            return;
        }
        if !link.claim(&new_epoch(), ttl) {
            self.go_local("Redis is unavailable");
        }
    }

    /// The stream ends: its lease is given up at once, so another instance with subscribers
    /// takes it over without waiting for it to expire.
    pub(super) fn leave_cluster(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        cluster.link.unfollow();
        if let Role::Leader(token) = cluster.link.role.clone() {
            cluster.link.release(&token);
            tracing::debug!(route = %self.stream.path, stream = %self.stream.digest, "cluster: lease released");
        }
        self.set_role(Role::Claiming);
    }

    /// ssegate is stopping: a leader gives the lease up at once (another instance takes the
    /// upstream over) and follows the stream from Redis until its clients are ended.
    pub(super) fn hand_over(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Role::Leader(token) = cluster.link.role.clone() else {
            return;
        };
        cluster.link.release(&token);
        self.stop_reading();
        let after = self.stream.lock().ring.log_next().saturating_sub(1);
        self.clustered().link.follow(after);
        self.set_role(Role::Follower(String::new()));
        tracing::info!(route = %self.stream.path, stream = %self.stream.digest, "cluster: draining; the stream's lease is handed over");
    }

    pub(super) fn on_cluster(&mut self, happened: Happened) -> ControlFlow<End> {
        match happened {
            Happened::Claimed(Ok(Claim::Won { token, position })) => self.on_won(token, position),
            // A claim of this process whose answer was lost (a timeout): the lease is its own.
            Happened::Claimed(Ok(Claim::Held { holder, position }))
                if self.clustered().link.cluster.owns(&holder) && !self.stream.shared.is_shutting_down() =>
            {
                self.on_won(holder, position);
            }
            Happened::Claimed(Ok(Claim::Held { holder, position })) => self.on_held(holder, position),
            Happened::Claimed(Err(error)) => {
                if self.clustered().link.cluster.store().is_some() {
                    // One failure may be a blip: ask again shortly.
                    self.clustered().link.at(Instant::now() + APPEND_RETRY);
                } else {
                    self.go_local(&format!("Redis failed: {}", chain(&error)));
                }
            }
            Happened::Appended(result) => self.on_appended(result),
            Happened::Renewed(result) => self.on_renewed(result),
            Happened::Restarted(token, Ok(Some(position))) => self.take_over(token, position),
            Happened::Restarted(_, Ok(None)) => {
                self.set_role(Role::Claiming);
                self.claim();
            }
            Happened::Restarted(_, Err(error)) => self.go_local(&format!("Redis failed: {}", chain(&error))),
            Happened::HeadersSet(Ok(true)) => {}
            // A lost lease shows at the next append or renewal; a failure, at the next call.
            Happened::HeadersSet(Ok(false) | Err(_)) => {}
            Happened::Read(result) => self.on_read(result),
            Happened::Followed(Followed::Entries(entries)) => self.on_entries(entries),
            Happened::Followed(Followed::Broken(why)) => {
                tracing::warn!(route = %self.stream.path, stream = %self.stream.digest, why, fault = %Fault::Upstream, "cluster: the stream's log holds data ssegate did not write; starting it over");
                self.clustered().link.unfollow();
                self.claim();
            }
            Happened::Unfollowed => {
                if matches!(self.clustered().link.role, Role::Follower(_)) {
                    let after = self.stream.lock().ring.log_next().saturating_sub(1);
                    self.clustered().link.follow(after);
                }
            }
            // A draining instance takes no lease.
            Happened::Due if self.stream.shared.is_shutting_down() => {}
            Happened::Due => match self.clustered().link.role.clone() {
                Role::Leader(_) => self.clustered().renew_due = true,
                Role::Follower(_) | Role::Local | Role::Claiming => self.claim(),
            },
        }
        self.next_call();
        Continue(())
    }

    /// Sends what waits when nothing is in flight: a renewal first, then the outbox.
    fn next_call(&mut self) {
        let cluster = self.clustered();
        if cluster.link.busy() {
            return;
        }
        let Role::Leader(token) = cluster.link.role.clone() else {
            return;
        };
        if cluster.renew_due {
            cluster.renew_due = false;
            if !cluster.link.renew(&token) {
                self.lease_unconfirmed();
            }
            return;
        }
        if let Some(headers) = cluster.headers_due.take() {
            if !cluster.link.set_headers(&token, headers) {
                self.go_local("Redis is unavailable");
            }
            return;
        }
        self.flush_outbox();
    }

    /// Takes the log's epoch and numbering (a `gap` for clients still connected when
    /// `announce`). Returns whether the ring started over.
    fn adopt(&mut self, position: &Position, announce: bool) -> bool {
        let same = {
            let mut state = self.stream.lock();
            state.app_ids |= position.upstream_id.is_some();
            *state.ring.epoch() == *position.epoch
        };
        // In the same epoch a follower may well be ahead of a position Redis gave a moment
        // ago (entries followed meanwhile); a leader's lost writes are handled in `on_won`.
        if same {
            return false;
        }
        // Another epoch (the stream is new here, was read locally, or its log vanished):
        // start over at the log.
        self.restart_ring(&position.epoch, position.next, announce);
        true
    }

    /// Starts the ring over in `epoch` before the event numbered `next`: clients still
    /// connected get a `gap` event (per `on_gap`) when this stream served anything before.
    fn restart_ring(&mut self, epoch: &str, next: u64, announce: bool) {
        let settings = &self.route.config.settings;
        let (inject, gap) = (
            settings.ids == IdMode::Inject,
            announce && settings.on_gap == OnGap::Event,
        );
        let (freed, added, announce) = {
            let mut state = self.stream.lock();
            let served = state.ring.next_seq() > 1;
            let last = state.ring.newest_id().unwrap_or_default();
            if !(served && gap) {
                (state.ring.restart(epoch, next), 0, false)
            } else {
                // The gap takes the number before `next`, so the log's own entries keep theirs.
                let freed = state.ring.restart(epoch, next.saturating_sub(1));
                let event = Event {
                    event: Some("gap".to_owned()),
                    data: last,
                    id: None,
                };
                let id = inject.then(|| state.ring.injected_id(state.ring.next_seq()));
                encode_event(&event, id.as_deref(), &mut self.scratch.encoded);
                let bytes = self.scratch.encoded.split().freeze();
                let added = bytes.len();
                let freed_more = state.ring.push(None, bytes, tokio::time::Instant::now()).1;
                (freed + freed_more, added, true)
            }
        };
        self.stream.shared.account(added, freed);
        if announce {
            self.stream.metrics.outage_gaps.inc();
            self.stream.wake(&mut self.scratch.wakers);
        }
    }

    /// Puts a `gap` event in the log, for every instance's clients.
    fn gap_in_log(&mut self) {
        if self.route.config.settings.on_gap == OnGap::Event {
            self.announce_outage();
        }
    }

    /// Stops reading the upstream (another instance does).
    fn stop_reading(&mut self) {
        self.source.close();
        self.live = None;
        self.retry = None;
        self.down_since = None;
        self.scratch.replay = None;
        let cluster = self.clustered();
        cluster.outbox.clear();
        cluster.in_flight.clear();
        cluster.taking_over = None;
        cluster.link.abandon();
    }

    /// Redis is unavailable: the stream reads its own upstream in a local epoch until it can
    /// rejoin (clients never wait on Redis).
    fn go_local(&mut self, why: &str) {
        let cluster = self.clustered();
        cluster.link.unfollow();
        cluster.link.abandon();
        cluster.taking_over = None;
        // At least once a second (a breaker's pause may be longer): a local stream rejoins soon
        // after Redis is back, whoever noticed it.
        let now = Instant::now();
        let retry = cluster.link.cluster.retry_at().clamp(now, now + LOCAL_RETRY) + jitter(LOCAL_RETRY / 2);
        cluster.link.at(retry);
        let was = cluster.link.role.clone();
        if was == Role::Local {
            return;
        }
        if let Role::Leader(_) = was {
            cluster.link.cluster.metrics().leases_lost.inc();
        }
        let pending: Vec<Outgoing> = cluster
            .in_flight
            .drain(..)
            .chain(cluster.outbox.drain(..))
            .collect();
        self.set_role(Role::Local);
        tracing::warn!(route = %self.stream.path, stream = %self.stream.digest, was = %was, fault = %Fault::Upstream, "cluster: {why}; this instance reads the stream's upstream itself (local epoch) until Redis is back");
        let next = self.stream.lock().ring.log_next();
        if was != Role::Claiming {
            self.restart_ring(&new_epoch(), next, true);
        }
        // Events read but not yet in the log reach this instance's clients, under local ids.
        self.push_local(pending);
        if !matches!(was, Role::Leader(_)) {
            let last = self.parser.last_event_id().to_owned();
            self.source.open((!last.is_empty()).then_some(last.as_str()));
        }
        self.serve();
    }

    /// Appends events to the ring here, with this ring's ids.
    fn push_local(&mut self, events: Vec<Outgoing>) {
        if events.is_empty() {
            return;
        }
        let inject = self.route.config.settings.ids == IdMode::Inject;
        let now = tokio::time::Instant::now();
        let (mut added, mut freed) = (0, 0);
        {
            let mut state = self.stream.lock();
            for out in &events {
                state.app_ids |= out.event.id.as_deref().is_some_and(|id| !id.is_empty());
                let (a, f) = push_event(
                    &mut state.ring,
                    &mut self.scratch.encoded,
                    &out.event,
                    out.retry,
                    inject,
                    now,
                );
                added += a;
                freed += f;
            }
        }
        self.stream.shared.account(added, freed);
        self.delivered();
    }

    /// Events reached the ring: wake the subscribers; the stream was just heard from.
    fn delivered(&mut self) {
        let subscribers = self.stream.lock().subscribers;
        if let Some(live) = self.live.as_mut() {
            live.got_event = true;
        }
        if self.pacer.appended(super::coalesce_window(
            self.route.config.settings.coalesce,
            subscribers,
        )) {
            self.stream.wake(&mut self.scratch.wakers);
        }
        self.reset_heartbeat();
    }
}
