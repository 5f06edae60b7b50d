//! Returning freed heap to the kernel. glibc's malloc keeps what a burst of large request
//! bodies freed in its per-thread arenas (and raises its mmap threshold after the first large
//! frees, so later large buffers land in those arenas too); `malloc_trim(0)` hands the free
//! pages of every arena back. Elsewhere (musl, other systems) this does nothing.

/// Releases free heap pages to the kernel, where the allocator supports it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it takes no pointers
    // and is safe to call at any time from any thread.
    #[expect(unsafe_code, reason = "glibc's malloc_trim has no safe wrapper")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Releases free heap pages to the kernel, where the allocator supports it.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}
