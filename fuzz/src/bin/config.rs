//! AFL++ target: see `fuzz/harness.rs`.

#[path = "../../harness.rs"]
#[allow(dead_code)]
mod harness;

#[global_allocator]
static ALLOC: Bounded = Bounded;

/// The system allocator, aborting on a single allocation over the target's limit.
struct Bounded;

// SAFETY: forwards to the system allocator unchanged; only checks the size first.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        check(layout.size());
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        check(size);
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

fn check(size: usize) {
    let limit = harness::alloc_limit();
    if limit > 0 && size > limit {
        // No formatting here: it would allocate.
        std::process::abort();
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| harness::config(data));
}
