//! Several instances sharing streams through Redis: one upstream request per stream across the
//! cluster, the same id for the same event on every instance, resume on any instance.
//!
//! - `keys`: the Redis key names of a stream, a keyed digest of its stream key.

mod keys;
