//! Keeping the daemon's heap compact under glibc's malloc.
//!
//! glibc keeps what is freed inside its heaps for later allocations: it gives memory back
//! only from the top of a heap, and a chunk freed below a live one stays. A pass over
//! thousands of entries frees tens of MiB of temporary data (parsed manifests and locks,
//! what the registries answered) among data that lives on (the status, the pins). Measured
//! with 10,000 entries and a pass a minute (docs/benchmarks.md), glibc's defaults let the RSS
//! creep from 52 to 69 MiB over six passes while the live heap stayed at 19 MiB: the free
//! space was spread over up to 16 arenas (8 per core), and the threshold above which a block
//! gets a mapping of its own (returned when freed) rose to the size of the largest block
//! freed, so that later multi-MiB buffers (the status list, a `/status` answer) were carved
//! out of the heaps too.

/// Sets glibc's malloc up for a long-running daemon, before its threads start allocating:
/// one arena per core, and blocks of 128 KiB and more mapped on their own at a fixed
/// threshold. `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_` in the environment take
/// precedence. Does nothing where the allocator is not glibc's.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        for (variable, parameter, value) in [
            ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, arenas),
            (
                "MALLOC_MMAP_THRESHOLD_",
                libc::M_MMAP_THRESHOLD,
                MMAP_THRESHOLD,
            ),
        ] {
            if std::env::var_os(variable).is_none() {
                // SAFETY: mallopt only changes the allocator's own parameters, under its lock;
                // both values are within glibc's documented ranges.
                unsafe {
                    libc::mallopt(parameter, value);
                }
            }
        }
    }
}

/// Blocks this large or larger get a mapping of their own: glibc's default, without the
/// dynamic rise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Returns the free pages of the heap to the system where the allocator is glibc's;
/// elsewhere does nothing. `malloc_trim(0)` also returns free pages in the middle of a heap,
/// which glibc never does by itself.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions: it walks the allocator's own free lists,
    // under the allocator's locks, and changes no memory that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
