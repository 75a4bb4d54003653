//! The resume buffer of one stream: encoded events in order, bounded by count, bytes and age.
//!
//! Every event gets a sequence number, rising by one from 1. A subscriber's cursor is the
//! sequence number of the next event it should get, so replay and live delivery are one and the
//! same read: `get(cursor)`, then `cursor + 1`. Nothing is copied per subscriber.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

// The clock of timers, so that an aged event leaves when its timer says (and under paused time
// in tests, as the timers do).
use tokio::time::Instant;

use bytes::Bytes;

/// One buffered event: its wire bytes (id included), encoded once for every subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Position in the stream.
    pub seq: u64,
    /// The app's id, when the event came with one (injected ids are derived from `seq`).
    pub app_id: Option<Box<str>>,
    /// The encoded event.
    pub bytes: Bytes,
    /// When it was buffered.
    pub at: Instant,
}

/// The bounds of one ring: what it keeps at most (`buffer_events`, `buffer_bytes`,
/// `buffer_age`). Not `server::Limits`, the connection settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Most events kept.
    pub events: usize,
    /// Most bytes kept (of encoded events).
    pub bytes: usize,
    /// Longest time an event is kept, if limited.
    pub age: Option<Duration>,
}

/// Where a resuming client starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// The id is known: deliver from this sequence number on.
    At(u64),
    /// The id is not (or no longer) known: a gap.
    Gap,
}

/// The bounded buffer of a stream.
#[derive(Debug)]
pub(crate) struct Ring {
    epoch: Box<str>,
    /// What to add to a sequence number here to get the one its id carries (`<epoch>-<n>`):
    /// 0 until a cluster's log gives the numbers (see [`Ring::restart`]). Wrapping arithmetic.
    shift: u64,
    inject: bool,
    limits: Bounds,
    entries: VecDeque<Entry>,
    bytes: usize,
    next_seq: u64,
    /// App ids of buffered events, for resume and for dropping an upstream's repeats.
    ids: HashMap<Box<str>, u64>,
    /// The newest evicted event's app id and sequence number: resuming from exactly it is no
    /// gap, since everything after it is still here.
    evicted_tail: Option<(Box<str>, u64)>,
}

impl Ring {
    /// An empty ring with a fresh epoch. `inject` says ids are `<epoch>-<seq>`.
    pub(crate) fn new(limits: Bounds, inject: bool) -> Ring {
        Ring {
            epoch: new_epoch(),
            shift: 0,
            inject,
            limits,
            entries: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            ids: HashMap::new(),
            evicted_tail: None,
        }
    }

    /// The injected id of sequence number `seq`.
    pub(crate) fn injected_id(&self, seq: u64) -> String {
        let mut id = String::with_capacity(self.epoch.len() + 12);
        let _ = write!(id, "{}-{}", self.epoch, seq.wrapping_add(self.shift));
        id
    }

    /// The epoch the ids of this ring's events carry.
    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The number the id of the next event will carry (its place in a cluster's log).
    pub(crate) fn log_next(&self) -> u64 {
        self.next_seq.wrapping_add(self.shift)
    }

    /// The number the id of the oldest buffered event carries (`log_next` when empty).
    pub(crate) fn log_first(&self) -> u64 {
        self.first_seq().wrapping_add(self.shift)
    }

    /// The number an injected id of this ring's epoch carries (`<epoch>-<n>`); `None` for
    /// any other id.
    pub(crate) fn log_number(&self, id: &str) -> Option<u64> {
        id.strip_prefix(&*self.epoch)
            .and_then(|rest| rest.strip_prefix('-'))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok())
    }

    /// The sequence number here of the event numbered `n` in the log.
    pub(crate) fn seq_of(&self, n: u64) -> u64 {
        n.wrapping_sub(self.shift)
    }

    /// Starts over in `epoch`, where the next event is numbered `log_next` (a cluster's log,
    /// or a new local epoch): every buffered event is dropped (its id belongs to the old
    /// epoch) while sequence numbers here go on, so subscribers' cursors stay valid and they
    /// simply get what comes next. Returns the bytes freed.
    pub(crate) fn restart(&mut self, epoch: &str, log_next: u64) -> usize {
        let freed = self.bytes;
        self.entries.clear();
        self.ids.clear();
        self.bytes = 0;
        self.evicted_tail = None;
        self.epoch = epoch.into();
        self.shift = log_next.wrapping_sub(self.next_seq);
        freed
    }

    /// The sequence number the next event will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence number of the oldest buffered event (`next_seq` when empty).
    pub(crate) fn first_seq(&self) -> u64 {
        self.entries.front().map_or(self.next_seq, |e| e.seq)
    }

    /// Bytes of encoded events held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Events held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The event at `seq`, if still buffered.
    pub(crate) fn get(&self, seq: u64) -> Option<&Entry> {
        let index = seq.checked_sub(self.first_seq())?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// The buffered events from `seq` on, oldest first (none if `seq` was evicted or is to come).
    pub(crate) fn since(&self, seq: u64) -> impl Iterator<Item = &Entry> {
        let start = seq
            .checked_sub(self.first_seq())
            .and_then(|index| usize::try_from(index).ok())
            .filter(|&index| index <= self.entries.len())
            .unwrap_or(self.entries.len());
        self.entries.range(start..)
    }

    /// The app ids of the buffered events.
    pub(crate) fn app_ids(&self) -> impl Iterator<Item = &str> {
        self.ids.keys().map(|id| &**id)
    }

    /// The id `entry` was sent with, if any.
    pub(crate) fn id_of(&self, entry: &Entry) -> Option<String> {
        match &entry.app_id {
            Some(id) => Some(id.to_string()),
            None if self.inject => Some(self.injected_id(entry.seq)),
            None => None,
        }
    }

    /// The id of the newest event: what a new subscriber is primed with. In inject mode there
    /// always is one (`<epoch>-0` before the first event), so even a client that leaves before
    /// its first event resumes from the right place.
    pub(crate) fn newest_id(&self) -> Option<String> {
        match self.entries.back() {
            Some(Entry { app_id: Some(id), .. }) => Some(id.to_string()),
            Some(entry) if self.inject => Some(self.injected_id(entry.seq)),
            Some(_) => None,
            None if self.inject => Some(self.injected_id(self.next_seq - 1)),
            None => self.evicted_tail.as_ref().map(|(id, _)| id.to_string()),
        }
    }

    /// The id a client has seen when the next event it gets is `seq`: the id of event
    /// `seq - 1`, as [`Ring::newest_id`] would have said right after it was appended.
    pub(crate) fn id_before(&self, seq: u64) -> Option<String> {
        if seq >= self.next_seq {
            return self.newest_id();
        }
        let previous = seq.checked_sub(1)?;
        if let Some(entry) = self.get(previous) {
            return self.id_of(entry);
        }
        match &self.evicted_tail {
            Some((id, tail)) if *tail == previous => Some(id.to_string()),
            _ if self.inject => Some(self.injected_id(previous)),
            _ => None,
        }
    }

    /// Appends an encoded event and evicts what the limits no longer allow. Returns the new
    /// event's sequence number and the bytes freed by eviction.
    pub(crate) fn push(&mut self, app_id: Option<Box<str>>, bytes: Bytes, now: Instant) -> (u64, usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(id) = &app_id {
            self.ids.insert(id.clone(), seq);
        }
        self.bytes += bytes.len();
        self.entries.push_back(Entry {
            seq,
            app_id,
            bytes,
            at: now,
        });
        let mut freed = 0;
        while self.entries.len() > self.limits.events || self.bytes > self.limits.bytes {
            freed += self.pop_oldest();
        }
        (seq, freed + self.evict_expired(now))
    }

    /// Changes the limits (a reloaded config), evicting what they no longer allow; returns the
    /// bytes freed.
    pub(crate) fn set_limits(&mut self, limits: Bounds, now: Instant) -> usize {
        self.limits = limits;
        let mut freed = 0;
        while self.entries.len() > self.limits.events || self.bytes > self.limits.bytes {
            freed += self.pop_oldest();
        }
        freed + self.evict_expired(now)
    }

    /// Evicts events older than the age limit; returns the bytes freed.
    pub(crate) fn evict_expired(&mut self, now: Instant) -> usize {
        let Some(age) = self.limits.age else { return 0 };
        let mut freed = 0;
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > age)
        {
            freed += self.pop_oldest();
        }
        freed
    }

    /// When the oldest event was buffered.
    pub(crate) fn oldest_at(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.at)
    }

    /// Evicts the oldest event; returns the bytes freed (0 when empty).
    pub(crate) fn pop_oldest(&mut self) -> usize {
        let Some(entry) = self.entries.pop_front() else {
            return 0;
        };
        self.bytes -= entry.bytes.len();
        if let Some(id) = entry.app_id {
            if self.ids.get(&id) == Some(&entry.seq) {
                self.ids.remove(&id);
            }
            self.evicted_tail = Some((id, entry.seq));
        } else {
            self.evicted_tail = None;
        }
        entry.bytes.len()
    }

    /// Where a client that last saw `last_id` resumes.
    pub(crate) fn resume(&self, last_id: &str) -> Resume {
        let after = |seq: u64| match seq.checked_add(1) {
            Some(next) if next >= self.first_seq() && seq < self.next_seq => Resume::At(next),
            _ => Resume::Gap,
        };
        if let Some(&seq) = self.ids.get(last_id) {
            return after(seq);
        }
        if self.inject {
            if let Some(n) = self.log_number(last_id) {
                return after(self.seq_of(n));
            }
        }
        match &self.evicted_tail {
            Some((id, seq)) if **id == *last_id => after(*seq),
            _ => Resume::Gap,
        }
    }
}

/// Eight random base-36 characters: unique enough that an id from another buffer never matches.
pub(crate) fn new_epoch() -> Box<str> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..8)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(events: usize, bytes: usize, inject: bool) -> Ring {
        Ring::new(
            Bounds {
                events,
                bytes,
                age: Some(Duration::from_secs(60)),
            },
            inject,
        )
    }

    fn push(ring: &mut Ring, app_id: Option<&str>, now: Instant) -> u64 {
        ring.push(app_id.map(Into::into), Bytes::from_static(b"data: x\n\n"), now)
            .0
    }

    #[test]
    fn bounded_by_count_bytes_and_age() {
        let now = Instant::now();
        let mut r = ring(3, 1000, true);
        for _ in 0..5 {
            push(&mut r, None, now);
        }
        assert_eq!((r.len(), r.first_seq(), r.next_seq()), (3, 3, 6));
        let mut r = ring(100, 20, true);
        for _ in 0..5 {
            push(&mut r, None, now);
        }
        assert_eq!(r.len(), 2, "9-byte events under a 20-byte limit");
        assert_eq!(r.bytes(), 18);
        let mut r = ring(100, 1000, true);
        push(&mut r, None, now);
        push(&mut r, None, now + Duration::from_secs(30));
        assert_eq!(r.evict_expired(now + Duration::from_secs(61)), 9);
        assert_eq!(r.first_seq(), 2);
    }

    #[test]
    fn resume_by_injected_id() {
        let now = Instant::now();
        let mut r = ring(3, 1000, true);
        assert_eq!(r.newest_id(), Some(format!("{}-0", r.epoch)));
        // Primed before any event, the client resumes from the first one.
        assert_eq!(r.resume(&r.injected_id(0)), Resume::At(1));
        for _ in 0..5 {
            push(&mut r, None, now);
        }
        // Buffered: 3, 4, 5. Seen up to 2 (evicted, but everything after it is here): exact.
        assert_eq!(r.resume(&r.injected_id(2)), Resume::At(3));
        assert_eq!(r.resume(&r.injected_id(4)), Resume::At(5));
        assert_eq!(r.resume(&r.injected_id(5)), Resume::At(6));
        assert_eq!(r.resume(&r.injected_id(1)), Resume::Gap, "event 2 is lost");
        assert_eq!(r.resume(&r.injected_id(6)), Resume::Gap, "an id from the future");
        assert_eq!(r.resume("zzzzzzzz-4"), Resume::Gap, "a foreign epoch");
        assert_eq!(r.resume(&format!("{}-", r.epoch)), Resume::Gap);
        assert_eq!(r.resume(&format!("{}-+4", r.epoch)), Resume::Gap);
        assert_eq!(r.resume(&"x".repeat(10_000)), Resume::Gap);
        assert_eq!(r.newest_id(), Some(r.injected_id(5)));
    }

    #[test]
    fn resume_by_app_id_and_repeats() {
        let now = Instant::now();
        let mut r = ring(2, 1000, false);
        assert_eq!(r.newest_id(), None);
        push(&mut r, Some("a"), now);
        push(&mut r, Some("b"), now);
        assert!(r.app_ids().any(|id| id == "a"));
        push(&mut r, Some("c"), now);
        assert!(!r.app_ids().any(|id| id == "a"));
        assert_eq!(
            r.resume("a"),
            Resume::At(2),
            "the newest evicted id still resumes exactly"
        );
        assert_eq!(r.resume("b"), Resume::At(3));
        assert_eq!(r.resume("c"), Resume::At(4));
        assert_eq!(r.resume("nope"), Resume::Gap);
        assert_eq!(r.newest_id().as_deref(), Some("c"));
        push(&mut r, Some("d"), now);
        assert_eq!(r.resume("a"), Resume::Gap);
    }

    #[test]
    fn since_reads_from_a_sequence_number_on() {
        let now = Instant::now();
        let mut r = ring(3, 1000, true);
        for _ in 0..5 {
            push(&mut r, None, now);
        }
        let seqs = |from| r.since(from).map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(3), [3, 4, 5]);
        assert_eq!(seqs(4), [4, 5]);
        assert_eq!(seqs(6), [] as [u64; 0], "nothing yet");
        assert_eq!(seqs(99), [] as [u64; 0]);
        assert_eq!(seqs(1), [] as [u64; 0], "evicted: nothing, not the oldest");
    }

    #[test]
    fn the_id_before_a_position() {
        let now = Instant::now();
        let mut r = ring(3, 1000, true);
        assert_eq!(r.id_before(1), Some(r.injected_id(0)));
        for _ in 0..5 {
            push(&mut r, None, now);
        }
        assert_eq!(r.id_before(6), Some(r.injected_id(5)));
        assert_eq!(r.id_before(4), Some(r.injected_id(3)));
        assert_eq!(r.id_before(3), Some(r.injected_id(2)), "evicted, still named");
        let mut app = ring(2, 1000, false);
        assert_eq!(app.id_before(1), None);
        push(&mut app, Some("a"), now);
        push(&mut app, Some("b"), now);
        push(&mut app, Some("c"), now);
        assert_eq!(app.id_before(2).as_deref(), Some("a"), "the evicted tail");
        assert_eq!(app.id_before(3).as_deref(), Some("b"));
        assert_eq!(app.id_before(4).as_deref(), Some("c"));
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(ring(1, 1, true).epoch[..], ring(1, 1, true).epoch[..]);
    }

    #[test]
    fn restart_takes_a_logs_numbers_and_keeps_cursors() {
        let now = Instant::now();
        let mut r = ring(10, 1000, true);
        push(&mut r, Some("a"), now);
        push(&mut r, None, now);
        let (old, cursor) = (r.newest_id(), r.next_seq());
        assert_eq!(r.restart("clusterE", 41), 18, "both events' bytes freed");
        assert_eq!((r.len(), r.next_seq(), r.log_next()), (0, cursor, 41));
        assert_eq!(
            r.newest_id().as_deref(),
            Some("clusterE-40"),
            "primed at the log's position"
        );
        assert_eq!(
            r.resume(old.as_deref().unwrap_or_default()),
            Resume::Gap,
            "old epoch"
        );
        assert_eq!(r.resume("a"), Resume::Gap, "old app ids are gone");
        assert_eq!(r.resume("clusterE-40"), Resume::At(cursor));
        assert_eq!(push(&mut r, None, now), cursor);
        assert_eq!(r.id_of(r.get(cursor).unwrap()).as_deref(), Some("clusterE-41"));
        assert_eq!(r.resume("clusterE-41"), Resume::At(cursor + 1));
        // A log numbered below the local sequence works the same (wrapping shift).
        let mut r = ring(10, 1000, true);
        for _ in 0..5 {
            push(&mut r, None, now);
        }
        r.restart("low", 2);
        assert_eq!(r.newest_id().as_deref(), Some("low-1"));
        assert_eq!(r.resume("low-1"), Resume::At(6));
        assert_eq!(r.resume("low-18446744073709551615"), Resume::Gap, "no overflow");
        assert_eq!(r.resume(&format!("low-{}", u64::MAX - 3)), Resume::Gap);
    }
}
