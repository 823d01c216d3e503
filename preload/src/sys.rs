//! Thin wrappers over the system calls the library makes: open, one-shot write, the
//! control file's ioctls, poll, and errno. Nothing here allocates on the span paths.

use std::ffi::CString;
use std::os::fd::RawFd;

use spantrack_uapi as uapi;

/// The calling thread's `errno` (no system call).
pub fn errno() -> i32 {
    // SAFETY: `__errno_location` returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// `open(path, flags | O_CLOEXEC)`: the descriptor or the errno.
pub fn open(path: &str, flags: i32) -> Result<RawFd, i32> {
    let c = CString::new(path).map_err(|_| libc::EINVAL)?;
    // SAFETY: `c` is a valid C string; no O_CREAT, so no mode argument is read.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

/// `close(fd)`, errors ignored (async-signal-safe: used in the fork child handler).
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

/// One `write(2)` of `bytes`: 0 when all of it was taken, else `-errno` (`-EIO` for a
/// short write, which the module never does).
#[inline]
pub fn write_all_once(fd: RawFd, bytes: &[u8]) -> i32 {
    // SAFETY: `bytes` is valid for reads of its length.
    let r = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if r < 0 {
        -errno()
    } else if r as usize != bytes.len() {
        -libc::EIO
    } else {
        0
    }
}

/// An argument-less ioctl on the control file: 0 or `-errno`.
pub fn ioctl_plain(fd: RawFd, req: u32) -> i32 {
    // SAFETY: the spantrack ioctls without a payload take no argument.
    let r = unsafe { libc::ioctl(fd, req as _, 0usize) };
    if r < 0 {
        -errno()
    } else {
        0
    }
}

/// `IOCTL_INFO` on the control file.
pub fn ioctl_info(fd: RawFd) -> Result<uapi::Info, i32> {
    let mut info = uapi::Info::default();
    // SAFETY: IOCTL_INFO writes one `Info` (its size is encoded in the request number).
    let r = unsafe { libc::ioctl(fd, uapi::IOCTL_INFO as _, &mut info as *mut uapi::Info) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(info)
    }
}

/// `poll()` one descriptor for POLLIN: its `revents` (0 on timeout) or the errno.
pub fn poll_in(fd: RawFd, timeout_ms: i32) -> Result<i16, i32> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 {
        Err(errno())
    } else if r == 0 {
        Ok(0)
    } else {
        Ok(p.revents)
    }
}

/// `getpid()`.
pub fn getpid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// Symbolic name of an errno value for log lines.
pub fn errno_text(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

/// Writes one line to stderr with a single `write(2)`, ignoring errors (a closed or broken
/// stderr must not disturb the service, and `eprintln!` would panic on some errors).
pub fn log_line(msg: &str) {
    let mut line = String::with_capacity(msg.len() + 12);
    line.push_str("spanhook: ");
    line.push_str(msg);
    line.push('\n');
    // SAFETY: `line` is valid for reads of its length.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}
