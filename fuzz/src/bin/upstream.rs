//! AFL++ target: see `fuzz/harness.rs`.

#[path = "../../harness.rs"]
#[allow(dead_code)]
mod harness;

#[path = "../../alloc.rs"]
mod alloc;

#[global_allocator]
static ALLOC: alloc::Bounded = alloc::Bounded;

fn main() {
    afl::fuzz!(|data: &[u8]| harness::upstream(data));
}
