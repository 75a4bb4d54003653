//! Several instances sharing streams through Redis: one upstream request per stream across the
//! cluster, the same id for the same event on every instance, resume on any instance.
//!
//! - `keys`: the Redis key names of a stream, a keyed digest of its stream key.
//! - `store`: the shared log of each stream: lease, fenced appends, reads (scripts in
//!   `store/*.lua`), and the follower's blocking reader.
//! - `client`: the Redis client built from `[cluster]`, and `ssegate check --connect`.

mod client;
mod keys;
mod store;
#[cfg(test)]
mod testing;

pub use client::{check as check_connection, ConnectError, Connected};
