//! Process-level knobs of the operating system: returning freed heap to the kernel, and the
//! open-file limit a server with thousands of connections needs.
//!
//! glibc's malloc keeps what a burst of large request bodies freed in its per-thread arenas,
//! and raises its mmap threshold after the first large frees so that later large buffers land
//! in those arenas too: [`tune_allocator`] pins the threshold, and [`trim`] (`malloc_trim(0)`,
//! run when the host goes quiet) hands the free pages of every arena back. Elsewhere (musl,
//! other systems) both do nothing.

/// Has glibc serve every allocation of 128 KiB or more with its own mapping, returned to the
/// kernel on free. By default the threshold adapts upwards (to 32 MiB) after the first large
/// frees, after which request bodies and their copies are carved from the arenas and stay
/// resident. Call once at startup.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    // SAFETY: mallopt only sets a glibc tunable; it takes no pointers.
    #[expect(unsafe_code, reason = "glibc's mallopt has no safe wrapper")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Has the allocator return large buffers to the kernel on free, where it can be told so.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

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

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (each client connection is a descriptor;
/// the usual soft limit of 1,024 is below the default `max_connections`) and returns the soft
/// limit now in force, or `None` where it cannot be read.
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed, which lives on this
    // stack frame for the duration of the calls.
    #[expect(
        unsafe_code,
        reason = "std has no safe wrapper for getrlimit/setrlimit"
    )]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// Raises the soft `RLIMIT_NOFILE` where the platform has one.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<u64> {
    None
}
