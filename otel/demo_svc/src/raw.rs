//! Exactly one system call each, no allocation, no clock reads: what the self-test runs
//! inside spans so that the kernel's record can be predicted call by call.

/// Result of a raw system call: the value, or `-errno`.
fn ret(r: libc::c_long) -> i64 {
    if r < 0 {
        // SAFETY: `__errno_location` returns the calling thread's errno slot.
        -i64::from(unsafe { *libc::__errno_location() })
    } else {
        r
    }
}

pub fn getpid() -> i64 {
    // SAFETY: no arguments.
    ret(unsafe { libc::syscall(libc::SYS_getpid) })
}

pub fn gettid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// `nanosleep(2)` itself (glibc's `nanosleep()` and std's sleep use `clock_nanosleep`).
/// Never inlined: the self-test finds its caller in the wait's user stack (libc's `syscall`
/// keeps no frame pointer, so the chain goes from here to the caller).
#[inline(never)]
pub fn nanosleep_ms(ms: u64) -> i64 {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec; no remainder pointer.
    ret(unsafe { libc::syscall(libc::SYS_nanosleep, &ts as *const libc::timespec, std::ptr::null_mut::<libc::timespec>()) })
}

pub fn write(fd: i32, buf: &[u8]) -> i64 {
    // SAFETY: `buf` is valid for reads of its length.
    ret(unsafe { libc::syscall(libc::SYS_write, fd, buf.as_ptr(), buf.len()) })
}

pub fn fsync(fd: i32) -> i64 {
    // SAFETY: plain descriptor argument.
    ret(unsafe { libc::syscall(libc::SYS_fsync, fd) })
}

/// `openat(AT_FDCWD, "/nonexistent/spantrack", O_RDONLY)`: fails with ENOENT.
pub fn open_missing() -> i64 {
    // SAFETY: a valid C string.
    ret(unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/nonexistent/spantrack".as_ptr(),
            libc::O_RDONLY,
        )
    })
}

pub const NR_NANOSLEEP: u32 = libc::SYS_nanosleep as u32;
pub const NR_CLOCK_GETTIME: u32 = libc::SYS_clock_gettime as u32;
