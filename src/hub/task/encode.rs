//! Each event is encoded once, with the id it gets here, into bytes every subscriber shares:
//! carved out of a block on a busy stream, an allocation of its own size on a quiet one.

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::hub::ring::Ring;
use crate::sse::{encode_event, encode_retry, Event};

/// Encoded events are carved out of blocks of up to this size, so most events cost no
/// allocation on a busy stream.
const ENCODE_BLOCK: usize = 16 * 1024;
/// A block holds at least this many events; a stream whose history is too small for that (a
/// user's own, one event a second) gives each event an allocation of its exact size instead,
/// rather than 16 KiB from its first event on.
const EVENTS_PER_BLOCK: usize = 4;

thread_local! {
    /// Where an event is encoded before it is copied to its place: one per thread, not per
    /// stream.
    static ENCODING: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Encodes `event` (after the app's `retry`, if any) with the id it gets here and appends it to
/// `ring`. Returns the bytes added and the bytes evicted.
pub(crate) fn push_event(
    ring: &mut Ring,
    encoded: &mut BytesMut,
    event: &Event,
    retry: Option<u64>,
    inject: bool,
    now: Instant,
) -> (usize, usize) {
    let bytes = encode_at(ring, ring.next_seq(), encoded, event, retry, inject);
    let app_id = event.id.as_deref().filter(|id| !id.is_empty());
    let added = bytes.len();
    (added, ring.push(app_id.map(Box::from), bytes, now).1)
}

/// Encodes `event` as the event at `seq` of `ring` (its id: the app's, or in inject mode
/// ssegate's for that position).
pub(crate) fn encode_at(
    ring: &Ring,
    seq: u64,
    encoded: &mut BytesMut,
    event: &Event,
    retry: Option<u64>,
    inject: bool,
) -> Bytes {
    let app_id = event.id.as_deref().filter(|id| !id.is_empty());
    let injected = (inject && app_id.is_none()).then(|| ring.injected_id(seq));
    ENCODING.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        if let Some(ms) = retry {
            encode_retry(ms, &mut scratch);
        }
        encode_event(event, injected.as_deref(), &mut scratch);
        let len = scratch.len();
        if scratch.capacity() > ENCODE_BLOCK * 4 {
            // A large event: the thread does not keep its room.
            let bytes = Bytes::copy_from_slice(&scratch);
            *scratch = BytesMut::new();
            return bytes;
        }
        // A block grows with what the ring holds (an eighth of it), so its unused tail stays a
        // small share of the history; events carved out keep their block alive until they
        // leave the ring.
        let block = (ring.bytes() / 8).min(ENCODE_BLOCK);
        if block < len * EVENTS_PER_BLOCK {
            return Bytes::copy_from_slice(&scratch);
        }
        if encoded.capacity() < len {
            *encoded = BytesMut::with_capacity(block);
        }
        encoded.extend_from_slice(&scratch);
        encoded.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_encoded_the_same_whether_it_gets_an_allocation_of_its_own_or_a_block() {
        use crate::hub::ring::Bounds;
        let event = Event {
            event: Some("tick".to_owned()),
            data: "x".repeat(200),
            id: None,
        };
        let mut ring = Ring::new(
            Bounds {
                events: 100_000,
                bytes: 64 << 20,
                age: None,
            },
            true,
        );
        let mut block = bytes::BytesMut::new();
        let now = tokio::time::Instant::now();
        for _ in 0..2000 {
            let seq = ring.next_seq();
            let bytes = encode_at(&ring, seq, &mut block, &event, None, true);
            let mut expected = bytes::BytesMut::new();
            encode_event(&event, Some(&ring.injected_id(seq)), &mut expected);
            assert_eq!(bytes, expected.freeze(), "event {seq}");
            ring.push(None, bytes, now);
            if seq == 10 {
                // A quiet stream's first events each get an allocation of their own size.
                assert_eq!(block.capacity(), 0, "no block while the history is small");
            }
        }
        // A long history is carved out of blocks.
        assert!(block.capacity() > 0, "a block in use");
    }
}
