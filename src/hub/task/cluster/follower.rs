//! The follower's side of a clustered stream: another instance reads the upstream; this one
//! takes the log's entries (and the app's headers stored beside it) into its ring as they are.

use bytes::Bytes;
use tokio::time::Instant;

use super::headers::decode_headers;
use super::{jitter, HEADERS_POLL, MAX_HEADER_POLLS};
use crate::cluster::link::Role;
use crate::cluster::store::{Logged, Position};
use crate::hub::source::Source;
use crate::hub::stream::Phase;
use crate::hub::task::Task;

impl<S: Source> Task<S> {
    pub(super) fn on_held(&mut self, holder: String, position: Position) {
        let was = self.clustered().link.role.clone();
        if let Role::Leader(_) | Role::Local = was {
            self.stop_reading();
        }
        let restarted = self.adopt(&position, true);
        self.take_headers(position.headers.as_ref());
        if was != Role::Follower(holder.clone()) {
            tracing::info!(route = %self.stream.path, stream = %self.stream.digest, holder = %holder, was = %was, "cluster: following the stream from Redis");
        }
        let after = self.stream.lock().ring.log_next().saturating_sub(1);
        let opening = *self.stream.phase.borrow() == Phase::Opening;
        let cluster = self.clustered();
        if restarted || !matches!(cluster.link.role, Role::Follower(_)) {
            cluster.link.follow(after);
        }
        let wait = position.headers.is_none() && opening && cluster.header_polls < MAX_HEADER_POLLS;
        cluster.header_polls += 1;
        let poll = if wait {
            // The leader's app has not answered yet: its headers (CORS among them) are
            // worth a short wait before the first subscribers here are answered without
            // them (they are answered anyway after `upstream_connect_timeout`).
            HEADERS_POLL
        } else {
            jitter(cluster.link.lease() / 4)
        };
        cluster.link.at(Instant::now() + poll);
        self.set_role(Role::Follower(holder));
        if !wait {
            self.serve();
        }
    }

    /// The app's headers as the leader stored them: every subscriber here gets them, as the
    /// leader's subscribers do.
    pub(super) fn take_headers(&mut self, stored: Option<&Bytes>) {
        let Some(stored) = stored else { return };
        let cluster = self.clustered();
        if cluster.headers_seen.as_ref() == Some(stored) {
            return;
        }
        cluster.headers_seen = Some(stored.clone());
        let headers = decode_headers(stored);
        self.keep_app_headers(&headers);
    }

    /// New entries of the log: into the ring as they are.
    pub(super) fn on_entries(&mut self, entries: Vec<Logged>) {
        let now = tokio::time::Instant::now();
        let (mut added, mut freed, mut any) = (0, 0, false);
        let mut missed = None;
        {
            let mut state = self.stream.lock();
            for entry in entries {
                let expected = state.ring.log_next();
                if entry.seq < expected {
                    tracing::debug!(route = %self.stream.path, stream = %self.stream.digest, seq = entry.seq, expected, "cluster: an entry already taken, skipped");
                    continue;
                }
                if entry.seq > expected && missed.is_none() {
                    missed = Some((expected, entry.seq));
                }
                if entry.seq > expected {
                    // Entries it never read were trimmed meanwhile: the ring jumps (its
                    // clients resume with a gap).
                    let epoch = state.ring.epoch().to_owned();
                    freed += state.ring.restart(&epoch, entry.seq);
                }
                added += entry.bytes.len();
                state.app_ids |= entry.app_id.is_some();
                freed += state.ring.push(entry.app_id, entry.bytes, now).1;
                any = true;
            }
        }
        self.stream.shared.account(added, freed);
        self.stream.metrics.events_received.inc_by(u64::from(any));
        if let Some((expected, got)) = missed {
            tracing::warn!(route = %self.stream.path, stream = %self.stream.digest, expected, got, "cluster: entries of the log were trimmed before this instance read them");
        }
        if any {
            self.delivered();
        }
    }
}
