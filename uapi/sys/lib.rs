//! The user-space side of the calls on spantrack's kernel interface that both
//! `libspanhook.so` and the in-VM tests make: errno, the control file's ioctls, `poll`, and
//! finding the process's relay buffers. Thin wrappers: no allocation except where a `Vec`
//! or `String` is returned.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};

use nix::errno::Errno;
use nix::{ioctl_read_bad, ioctl_write_ptr_bad};
use spantrack_uapi as uapi;

/// The calling thread's `errno` (no system call).
pub fn errno() -> i32 {
    Errno::last_raw()
}

// The control file's requests with a fixed argument type, numbered in `uapi` (the ABI is
// written once there; nix's `_bad` macros take a request number as it is).
ioctl_read_bad!(raw_info, uapi::IOCTL_INFO, uapi::Info);
ioctl_read_bad!(raw_info_abi2, uapi::IOCTL_INFO_ABI2, uapi::Info);
ioctl_read_bad!(raw_relay_fds, uapi::IOCTL_RELAY_FDS, uapi::RelayFds);
ioctl_write_ptr_bad!(raw_set_active_slot, uapi::IOCTL_SET_ACTIVE_SLOT, u64);

/// An argument-less ioctl (`IOCTL_REGISTER`, `IOCTL_UNREGISTER*`, or any request number, as
/// the fuzzer sends) on the control file.
pub fn ioctl_plain(control: RawFd, req: u32) -> Result<(), i32> {
    // SAFETY: the spantrack ioctls without a payload take no argument; for any other request
    // number the argument is 0, which no request may dereference without checking.
    Errno::result(unsafe { libc::ioctl(control, req as _, 0usize) }).map(drop).map_err(|e| e as i32)
}

/// `IOCTL_SET_ACTIVE_SLOT` on the control file for the calling thread: `slot` is the
/// address of its 8-aligned active-span slot, or null to clear it.
///
/// Safe although it takes a raw pointer: this process never dereferences `slot`. Only the
/// kernel reads it, with user-copy accessors that fault safely (an unreadable slot is
/// counted in `slot_faults`, never a crash), so no value of `slot` is unsound.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn set_active_slot(control: RawFd, slot: *const u64) -> Result<(), i32> {
    // SAFETY: the request takes the slot's address as its argument; the kernel only reads
    // 8 bytes there (and later reads them again without faulting).
    unsafe { raw_set_active_slot(control, slot) }.map(drop).map_err(|e| e as i32)
}

/// `IOCTL_INFO` on the control file.
pub fn ioctl_info(control: RawFd) -> Result<uapi::Info, i32> {
    let mut info = uapi::Info::default();
    // SAFETY: IOCTL_INFO writes one `Info` (its size is encoded in the request number).
    unsafe { raw_info(control, &mut info) }.map(|_| info).map_err(|e| e as i32)
}

/// The loaded module's ABI version when it is older than this crate's and so does not
/// answer `IOCTL_INFO` (a different ioctl type): `IOCTL_INFO_ABI2`'s answer, if any.
pub fn older_module_abi(control: RawFd) -> Option<u32> {
    let mut info = uapi::Info::default();
    // SAFETY: as `ioctl_info`: the request writes one `Info` (its size is in the number).
    unsafe { raw_info_abi2(control, &mut info) }.ok().map(|_| info.abi_version)
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
    let out = relay_fds_answer(control)?;
    let mut v = Vec::new();
    for (cpu, &fd) in out.fds.iter().enumerate() {
        if fd >= 0 {
            // SAFETY: the kernel installed `fd` for us just now; we own it from here on.
            v.push((cpu as u32, unsafe { File::from_raw_fd(fd) }));
        }
    }
    Ok(v)
}

/// `IOCTL_RELAY_FDS`'s answer as the kernel wrote it (the caller owns the descriptors in it).
pub fn relay_fds_answer(control: RawFd) -> Result<uapi::RelayFds, i32> {
    let mut out = uapi::RelayFds::default();
    // SAFETY: IOCTL_RELAY_FDS writes one `RelayFds` (its size is in the request number).
    unsafe { raw_relay_fds(control, &mut out) }.map(|_| out).map_err(|e| e as i32)
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
