//! The allocator of the fuzz binaries: the system's, aborting on a single allocation over the
//! bound the running target states (`harness::alloc_limit`). Shared by `src/bin/*.rs`.

/// The system allocator, aborting on a single allocation over the target's limit.
pub struct Bounded;

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
    let limit = crate::harness::alloc_limit();
    if limit > 0 && size > limit {
        // No formatting here: it would allocate.
        std::process::abort();
    }
}
