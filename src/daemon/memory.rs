//! Handing freed heap memory back to the system.
//!
//! glibc's malloc keeps what is freed inside its heaps for later allocations: it gives
//! memory back only from the top of a heap, and a chunk freed below a live one stays. A pass
//! over thousands of entries frees tens of MiB of temporary data (parsed manifests and
//! locks, what the registries answered) among data that lives on (the status, the pins), so
//! without a trim the daemon's RSS stays at the pass's peak. `malloc_trim(0)` returns every
//! free page of every arena to the system.

/// Returns the free pages of the heap to the system where the allocator is glibc's;
/// elsewhere does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions: it walks the allocator's own free lists,
    // under the allocator's locks, and changes no memory that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
