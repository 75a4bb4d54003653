//! The leader's side of a clustered stream: taking the lease (catching up the log first, or
//! starting a new epoch when Redis lost what it had seen), reading the upstream, sending each
//! batch to the log (fenced) before the ring, renewing the lease and stepping down.

use tokio::time::Instant;

use super::headers::encode_headers;
use super::{ttl, Outgoing, APPEND_RETRY, BATCH};
use crate::cluster::link::Role;
use crate::cluster::store::{Appended, Logged, Position, StoreError};
use crate::config::{IdMode, OnGap};
use crate::error::{chain, Fault};
use crate::hub::replay::Replay;
use crate::hub::ring::new_epoch;
use crate::hub::source::Source;
use crate::hub::task::{encode_at, Task};

impl<S: Source> Task<S> {
    /// Sends the next batch of the outbox to the log, when nothing is in flight.
    pub(in crate::hub::task) fn flush_outbox(&mut self) {
        let inject = self.route.config.settings.ids == IdMode::Inject;
        let lease = self.clustered().link.lease();
        let settings = &self.route.config.settings;
        let (maxlen, ttl) = (settings.buffer_events, ttl(settings, lease));
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Role::Leader(token) = cluster.link.role.clone() else {
            return;
        };
        if cluster.link.busy() || cluster.outbox.is_empty() {
            return;
        }
        let take = cluster.outbox.len().min(BATCH);
        cluster.in_flight = cluster.outbox.drain(..take).collect();
        // The app's id of the batch's last event that has one: where a next leader resumes
        // the app (an id of a later event still in the outbox would skip this batch's rest).
        let upstream_id = cluster
            .in_flight
            .iter()
            .rev()
            .find_map(|out| out.event.id.clone().filter(|id| !id.is_empty()));
        let (first, epoch, events) = {
            let state = self.stream.lock();
            let ring = &state.ring;
            let events: Vec<_> = cluster
                .in_flight
                .iter()
                .enumerate()
                .map(|(k, out)| {
                    let bytes = encode_at(
                        ring,
                        ring.next_seq() + k as u64,
                        &mut self.scratch.encoded,
                        &out.event,
                        out.retry,
                        inject,
                    );
                    let app_id = out.event.id.as_deref().filter(|id| !id.is_empty()).map(Box::from);
                    (bytes, app_id)
                })
                .collect();
            (ring.log_next(), ring.epoch().to_owned(), events)
        };
        if !cluster
            .link
            .append(&token, &epoch, first, events, upstream_id, maxlen, ttl)
        {
            self.go_local("Redis is unavailable");
        }
    }

    pub(super) fn on_won(&mut self, token: String, position: Position) {
        let cluster = self.clustered();
        cluster.link.cluster.metrics().leases_acquired.inc();
        cluster.link.lease_until = Some(Instant::now() + cluster.link.lease() - crate::cluster::OP_TIMEOUT);
        cluster.link.unfollow();
        let (same_epoch, behind, ahead, from) = {
            let state = self.stream.lock();
            let next = state.ring.log_next();
            (
                *state.ring.epoch() == *position.epoch,
                next < position.next,
                next > position.next,
                next,
            )
        };
        if same_epoch && ahead {
            // The log is behind what this instance saw of it: Redis lost acknowledged writes
            // (a failover to a lagging replica). Numbering on from there would give other
            // events the ids clients already have: the stream starts over in a new epoch.
            tracing::warn!(route = %self.stream.path, stream = %self.stream.digest, seen = from, log = position.next, fault = %Fault::Upstream, "cluster: the stream's log in Redis lost events this instance had seen; starting a new epoch");
            let lease = self.clustered().link.lease();
            let ttl = ttl(&self.route.config.settings, lease);
            if !self.clustered().link.restart(&token, &new_epoch(), ttl) {
                self.go_local("Redis is unavailable");
            }
            return;
        }
        if same_epoch && behind {
            // It followed this log: read what it has not yet seen before reading the
            // upstream, so the log goes on where it stands.
            let cluster = self.clustered();
            cluster.taking_over = Some((token, position.clone()));
            if !cluster.link.read(from, position.next - 1) {
                self.go_local("Redis is unavailable");
            }
            return;
        }
        self.take_over(token, position);
    }

    /// Becomes the stream's leader at `position` of the log.
    pub(super) fn take_over(&mut self, token: String, position: Position) {
        let was = self.clustered().link.role.clone();
        let continued = position.next > 1 && !position.fresh;
        // Reading the upstream already (locally, or as the leader whose log changed under
        // it): what it read meanwhile is not in the log, so every instance's clients get one
        // gap, from the log (not a second one from the ring).
        let reading = matches!(was, Role::Local | Role::Leader(_));
        let log_gap = reading && continued && self.route.config.settings.on_gap == OnGap::Event;
        self.adopt(&position, !log_gap);
        let lease = self.clustered().link.lease();
        self.set_role(Role::Leader(token));
        self.clustered().link.at(Instant::now() + lease / 3);
        tracing::info!(route = %self.stream.path, stream = %self.stream.digest, epoch = %position.epoch, next = position.next, was = %was, "cluster: this instance reads the stream's upstream (lease taken)");
        if reading {
            if log_gap {
                self.gap_in_log();
            }
        } else {
            match position.upstream_id.as_deref().filter(|_| continued) {
                Some(id) => {
                    // Resume the app where the last leader left it; what it sends again is
                    // dropped as a repeat.
                    self.parser.set_last_event_id(id);
                    self.scratch.replay = Some(Replay::new(id, self.stream.lock().ring.app_ids()));
                    self.source.open(Some(id));
                }
                None => {
                    if continued {
                        // An app without ids cannot say what it sent meanwhile: a leadership
                        // change is an outage to the clients.
                        self.down_since = Some(Instant::now());
                        self.was_live = true;
                    }
                    self.source.open(None);
                }
            }
        }
        self.share_headers();
        self.next_call();
    }

    /// The app answered the leader's request with a stream: its headers go beside the log.
    pub(in crate::hub::task) fn share_headers(&mut self) {
        let Some(headers) = self.stream.lock().app_headers.clone() else {
            return;
        };
        if let Some(cluster) = self.cluster.as_mut() {
            if matches!(cluster.link.role, Role::Leader(_)) {
                cluster.headers_due = Some(encode_headers(&headers));
                self.next_call();
            }
        }
    }

    pub(super) fn on_appended(&mut self, result: Result<Appended, StoreError>) {
        match result {
            Ok(Appended::Done { .. }) => {
                let batch = std::mem::take(&mut self.clustered().in_flight);
                self.push_local(batch);
            }
            Ok(Appended::Fenced) => {
                let cluster = self.clustered();
                let metrics = cluster.link.cluster.metrics();
                metrics.fenced_appends.inc();
                metrics.leases_lost.inc();
                let dropped = cluster.in_flight.len() + cluster.outbox.len();
                tracing::warn!(route = %self.stream.path, stream = %self.stream.digest, dropped, "cluster: Redis refused this instance's append: another instance holds the stream's lease now; following it (the events it read meanwhile are the new leader's to read)");
                self.stop_reading();
                self.set_role(Role::Claiming);
                self.claim();
            }
            Ok(Appended::Epoch { .. } | Appended::Order { .. }) => {
                // The log vanished or changed under it (a flush, an eviction, a Redis restart
                // without persistence): claim again, which starts a new epoch; what was read
                // meanwhile is sent again under it.
                tracing::warn!(route = %self.stream.path, stream = %self.stream.digest, fault = %Fault::Upstream, "cluster: the stream's log in Redis vanished or changed; starting a new epoch");
                let cluster = self.clustered();
                let mut pending: Vec<Outgoing> = cluster.in_flight.drain(..).collect();
                pending.append(&mut cluster.outbox);
                cluster.outbox = pending;
                self.claim_again_as_leader();
            }
            Err(error) => {
                // The outcome is unknown: send the same batch again (the script skips what it
                // already has) while the lease is known to hold.
                let cluster = self.clustered();
                let lease_ok = cluster
                    .link
                    .lease_until
                    .is_some_and(|until| Instant::now() < until);
                let mut pending: Vec<Outgoing> = cluster.in_flight.drain(..).collect();
                pending.append(&mut cluster.outbox);
                cluster.outbox = pending;
                if lease_ok && cluster.link.cluster.store().is_some() {
                    cluster.link.at(Instant::now() + APPEND_RETRY);
                    cluster.renew_due = false;
                } else {
                    self.go_local(&format!("an append failed: {}", chain(&error)));
                }
            }
        }
    }

    /// Claims the lease again from the leader role (the log changed under it); the outbox
    /// waits for the answer.
    pub(super) fn claim_again_as_leader(&mut self) {
        let lease = self.clustered().link.lease();
        let ttl = ttl(&self.route.config.settings, lease);
        // Keep reading the upstream: the claim decides whether this instance still leads.
        let link = &mut self.clustered().link;
        if !link.claim(&new_epoch(), ttl) {
            self.go_local("Redis is unavailable");
        }
    }

    pub(super) fn on_renewed(&mut self, result: Result<Option<Instant>, StoreError>) {
        let lease = self.clustered().link.lease();
        match result {
            Ok(Some(until)) => {
                let cluster = self.clustered();
                cluster.link.lease_until = Some(until);
                cluster.link.at(Instant::now() + lease / 3);
            }
            Ok(None) => {
                let cluster = self.clustered();
                cluster.link.cluster.metrics().leases_lost.inc();
                tracing::warn!(route = %self.stream.path, stream = %self.stream.digest, "cluster: the stream's lease was taken over; following it");
                self.stop_reading();
                self.set_role(Role::Claiming);
                self.claim();
            }
            Err(_) => self.lease_unconfirmed(),
        }
    }

    /// A renewal could not be confirmed: try again shortly while the lease surely holds; past
    /// that, stop reading for the cluster.
    pub(super) fn lease_unconfirmed(&mut self) {
        let cluster = self.clustered();
        let holds = cluster
            .link
            .lease_until
            .is_some_and(|until| Instant::now() + crate::cluster::OP_TIMEOUT < until);
        if holds {
            cluster.link.at(Instant::now() + APPEND_RETRY);
        } else {
            self.go_local("the stream's lease could not be confirmed in time");
        }
    }

    /// The entries a new leader had not yet seen arrived: take them, then take over.
    pub(super) fn on_read(&mut self, result: Result<Vec<Logged>, StoreError>) {
        let Some((token, position)) = self.clustered().taking_over.take() else {
            return;
        };
        match result {
            Ok(entries) => {
                self.on_entries(entries);
                self.take_over(token, position);
            }
            Err(error) => {
                self.clustered().link.release(&token);
                self.go_local(&format!("catching up with the log failed: {}", chain(&error)));
            }
        }
    }
}
