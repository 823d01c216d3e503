//! Thin wrappers over the system calls the library makes: open, one-shot write, and (from
//! `spantrack-sys`, shared with the in-VM tests) the control file's ioctls, poll and errno.
//! Nothing here allocates on the span paths.

use std::ffi::CString;
use std::os::fd::RawFd;

pub use spantrack_sys::{errno, ioctl_info, ioctl_plain, poll_in, set_active_slot};

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
