//! The wakers of a stream's waiting subscribers.

use std::task::Waker;

/// Wakers of waiting subscribers, one slot each: waking is O(subscribers), registering O(1),
/// and a subscriber that leaves frees its slot at once.
#[derive(Debug, Default)]
pub(super) struct Wakers {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Wakers {
    /// A slot for a new subscriber.
    pub(super) fn insert(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        })
    }

    /// Frees the slot of a subscriber that left.
    pub(super) fn remove(&mut self, slot: usize) {
        if let Some(waker) = self.slots.get_mut(slot) {
            *waker = None;
            self.free.push(slot);
        }
    }

    /// Sets the waker of `slot`, unless the one there already wakes the same task.
    pub(super) fn register(&mut self, slot: usize, waker: &Waker) {
        if let Some(current) = self.slots.get_mut(slot) {
            match current {
                Some(old) if old.will_wake(waker) => {}
                _ => *current = Some(waker.clone()),
            }
        }
    }

    /// Moves every registered waker into `out`, to be woken once the lock is released.
    pub(super) fn drain_into(&mut self, out: &mut Vec<Waker>) {
        out.extend(self.slots.iter_mut().filter_map(Option::take));
    }
}
