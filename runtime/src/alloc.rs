//! Allocator settings for the daemons.
//!
//! Haven moves every replicated byte through a few large buffers per batch (NBD payloads,
//! frames, batches of up to several MiB). glibc serves allocations that large with a fresh
//! `mmap` and returns them with `munmap`, and gives freed heap tops back to the kernel: every
//! batch then pays page faults and the kernel zeroing each page (on a virtual machine, often a
//! fault in the host as well). Raising the mmap and trim thresholds keeps those buffers in the
//! heap, where the next batch reuses them warm. Memory stays bounded by the queues' caps.

/// Allocations up to this size come from the heap (glibc's upper limit on 64-bit).
pub const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// Free heap memory kept for reuse before any is returned to the kernel.
pub const TRIM_THRESHOLD_BYTES: i32 = 512 << 20;

/// Applies the settings above; call once at the start of `main`, before threads start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1
            || libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) != 1
        {
            tracing::debug!("mallopt refused the thresholds; keeping the allocator's defaults");
        }
    }
}
