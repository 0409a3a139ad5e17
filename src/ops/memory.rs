//! How the server processes keep freed memory.
//!
//! glibc hands freed memory back to the kernel as soon as enough of it is
//! free at the top of a heap (128 KiB by default), and serves allocations
//! of 128 KiB or more with a fresh mapping each. A lookup allocates and
//! frees buffers of that size for every column chunk it reads (a zstd
//! decompression context alone is about 160 KiB), so each lookup paid for
//! `madvise` calls, the TLB shootdowns they send to the other cores, and
//! the page faults that map the memory again. Keeping freed memory in the
//! process took the lookup's p50 from 4.5 to 4.0 ms (benches/README.md,
//! "Freed memory kept").
//!
//! What stays mapped is what the process used at its peak; freed buffers
//! are reused rather than zeroed by the kernel, which the threat model
//! names among the residual risks of a memory dump.

/// Larger than any buffer of a lookup or a batch's column: below this,
/// allocations come from the heap, not from a mapping of their own (older
/// glibc refuses more than 32 MiB on 64-bit targets).
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory at the top of a heap that is kept before any is returned.
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Keeps freed memory in the process (see the module). Called once by each
/// server command as it starts; a `GLIBC_TUNABLES` that sets malloc
/// thresholds wins. Returns whether the settings were applied.
pub fn keep_freed_memory() -> bool {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt takes no pointers and changes only two thresholds of
    // glibc's allocator, under glibc's own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_both_thresholds() {
        // mallopt reports a value it refuses by returning 0.
        assert!(super::apply());
    }
}
