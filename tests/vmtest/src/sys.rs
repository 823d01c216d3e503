//! Thin wrappers over the system calls the test makes outside spans: file descriptors,
//! clocks, ioctls on the control file, poll, errno names. Inside spans the test uses only
//! the raw calls of `span::run_ops`.

use std::ffi::CString;

// Not every binary including this file uses all of them.
#[allow(unused_imports)]
pub use spantrack_sys::{errno, ioctl_info, ioctl_plain, poll_in};

/// Symbolic name of an errno value (nix's table), `errno <n>` for one it does not know.
pub fn errno_name(e: i32) -> String {
    match nix::errno::Errno::from_raw(e) {
        nix::errno::Errno::UnknownErrno => format!("errno {e}"),
        n => format!("{n:?}"),
    }
}

/// Describes the result of a write-like call: `n` bytes or `-errno`.
pub fn ret_name(r: i64) -> String {
    if r < 0 {
        errno_name((-r) as i32)
    } else {
        format!("{r}")
    }
}

pub fn gettid() -> u32 {
    // SAFETY: plain system call without arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

pub fn getpid() -> u32 {
    // SAFETY: plain system call without arguments.
    unsafe { libc::getpid() as u32 }
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in ns (may be a system call in a VM whose clocksource has no vDSO: never
/// call it inside a span).
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in ns (same caveat as [`mono_ns`]).
pub fn real_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// An owned file descriptor, closed on drop.
#[derive(Debug)]
pub struct Fd(i32);

impl Fd {
    pub fn open(path: &str, flags: i32) -> Result<Fd, String> {
        Self::open_errno(path, flags).map_err(|e| format!("open {path}: {}", errno_name(e)))
    }

    pub fn open_errno(path: &str, flags: i32) -> Result<Fd, i32> {
        let c = CString::new(path).map_err(|_| libc::EINVAL)?;
        // SAFETY: `c` is a valid C string; the mode argument is read only with O_CREAT.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600 as libc::c_uint) };
        if fd < 0 {
            Err(errno())
        } else {
            Ok(Fd(fd))
        }
    }

    pub fn raw(&self) -> i32 {
        self.0
    }

    /// Takes ownership of an open descriptor.
    pub fn from_raw(fd: i32) -> Fd {
        Fd(fd)
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// One `write(2)` of `bytes`: the count written or the errno.
pub fn write_once(fd: i32, bytes: &[u8]) -> Result<usize, i32> {
    // SAFETY: `bytes` is valid for reads of its length.
    let r = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

pub const NR_WRITE: u32 = libc::SYS_write as u32;
pub const NR_NANOSLEEP: u32 = libc::SYS_nanosleep as u32;
pub const NR_GETPID: u32 = libc::SYS_getpid as u32;
pub const NR_FSYNC: u32 = libc::SYS_fsync as u32;

/// Name of x86_64 system call `nr` (the module's table), or its number.
pub fn syscall_name(nr: u32) -> String {
    match spantrack_logic::syscalls::syscall_name(nr) {
        Some(n) => n.to_string(),
        None => format!("syscall#{nr}"),
    }
}

/// Sleeps outside any span (std's sleep is fine there).
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}
