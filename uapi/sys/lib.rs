//! The user-space side of the calls on spantrack's kernel interface that both
//! `libspanhook.so` and the in-VM tests make: errno, the control file's ioctls, `poll`, and
//! finding the process's relay buffers. Thin wrappers: no allocation except where a `Vec`
//! or `String` is returned.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};

use spantrack_uapi as uapi;

/// The calling thread's `errno` (no system call).
pub fn errno() -> i32 {
    // SAFETY: `__errno_location` returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// An argument-less ioctl (`IOCTL_REGISTER`, `IOCTL_UNREGISTER*`) on the control file.
pub fn ioctl_plain(control: RawFd, req: u32) -> Result<(), i32> {
    // SAFETY: the spantrack ioctls without a payload take no argument.
    let r = unsafe { libc::ioctl(control, req as _, 0usize) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `IOCTL_SET_ACTIVE_SLOT` on the control file for the calling thread: `slot` is the
/// address of its 8-aligned active-span slot, or null to clear it.
pub fn set_active_slot(control: RawFd, slot: *const u64) -> Result<(), i32> {
    // SAFETY: the request takes the slot's address as its argument; the kernel only reads
    // 8 bytes there (and later reads them again without faulting).
    let r = unsafe { libc::ioctl(control, uapi::IOCTL_SET_ACTIVE_SLOT as _, slot as usize) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `IOCTL_INFO` on the control file.
pub fn ioctl_info(control: RawFd) -> Result<uapi::Info, i32> {
    let mut info = uapi::Info::default();
    // SAFETY: IOCTL_INFO writes one `Info` (its size is encoded in the request number).
    let r = unsafe { libc::ioctl(control, uapi::IOCTL_INFO as _, &mut info as *mut uapi::Info) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(info)
    }
}

/// The loaded module's ABI version when it is older than this crate's and so does not
/// answer `IOCTL_INFO` (a different ioctl type): `IOCTL_INFO_ABI2`'s answer, if any.
pub fn older_module_abi(control: RawFd) -> Option<u32> {
    let mut info = uapi::Info::default();
    // SAFETY: as `ioctl_info`: the request writes one `Info` (its size is in the number).
    let r = unsafe { libc::ioctl(control, uapi::IOCTL_INFO_ABI2 as _, &mut info as *mut uapi::Info) };
    (r == 0).then_some(info.abi_version)
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

/// `IOCTL_RELAY_FDS` on the control file: the calling process's per-CPU relay buffers as
/// `(cpu, file)` pairs (read-only, blocking, close-on-exec), or the errno.
pub fn relay_fds(control: RawFd) -> Result<Vec<(u32, File)>, i32> {
    let mut out = uapi::RelayFds::default();
    // SAFETY: IOCTL_RELAY_FDS writes one `RelayFds` (its size is in the request number).
    let r = unsafe { libc::ioctl(control, uapi::IOCTL_RELAY_FDS as _, &mut out as *mut uapi::RelayFds) };
    if r < 0 {
        return Err(errno());
    }
    let mut v = Vec::new();
    for (cpu, &fd) in out.fds.iter().enumerate() {
        if fd >= 0 {
            // SAFETY: the kernel installed `fd` for us just now; we own it from here on.
            v.push((cpu as u32, unsafe { File::from_raw_fd(fd) }));
        }
    }
    Ok(v)
}

/// The `cpu<N>` files of a debugfs relay directory, sorted by N.
pub fn cpu_files(dir: &str) -> std::io::Result<Vec<(u32, String)>> {
    let mut v = Vec::new();
    for ent in std::fs::read_dir(dir)? {
        let name = ent?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix(uapi::RELAY_FILE_BASE) {
            if let Ok(cpu) = n.parse::<u32>() {
                v.push((cpu, format!("{dir}/{name}")));
            }
        }
    }
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_files_are_sorted_by_number_and_others_ignored() {
        let dir = std::env::temp_dir().join(format!("spantrack-sys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in ["cpu10", "cpu2", "cpu0", "cpux", "other"] {
            File::create(dir.join(n)).unwrap();
        }
        let d = dir.to_str().unwrap();
        let got: Vec<u32> = cpu_files(d).unwrap().into_iter().map(|(c, _)| c).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, [0, 2, 10]);
    }

    #[test]
    fn calls_on_a_non_spantrack_descriptor_fail_with_the_errno() {
        let f = File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(ioctl_plain(f.as_raw_fd(), uapi::IOCTL_REGISTER), Err(libc::ENOTTY));
        assert_eq!(ioctl_info(f.as_raw_fd()).map(|_| ()), Err(libc::ENOTTY));
        assert!(relay_fds(f.as_raw_fd()).is_err());
        assert_eq!(poll_in(-1, 0), Ok(0));
    }
}
