//! libspanhook.so: loaded with `LD_PRELOAD`, it connects a service to spantrack.ko.
//!
//! At load time it looks for the module's control file. Without the module it logs one
//! line and does nothing more: the service runs exactly as without the library.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use spantrack_uapi as uapi;

/// What the library found at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The module answered with our ABI version.
    Module(uapi::Info),
    /// No module (or an incompatible one): the library stays inactive.
    Absent,
}

/// Asks the module for its [`uapi::Info`] through the control file.
pub fn probe_module() -> Result<uapi::Info, String> {
    let f = OpenOptions::new()
        .read(true)
        .open(uapi::PROC_CONTROL)
        .map_err(|e| format!("{}: {e}", uapi::PROC_CONTROL))?;
    let mut info = uapi::Info::default();
    // SAFETY: IOCTL_INFO writes exactly size_of::<Info>() bytes into `info`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), uapi::IOCTL_INFO as _, &mut info as *mut uapi::Info) };
    if r != 0 {
        return Err(format!("ioctl INFO: {}", std::io::Error::last_os_error()));
    }
    if info.abi_version != uapi::ABI_VERSION {
        return Err(format!("module ABI {} != library ABI {}", info.abi_version, uapi::ABI_VERSION));
    }
    Ok(info)
}

#[ctor::ctor]
fn spanhook_init() {
    match probe_module() {
        Ok(_) => {}
        Err(e) => {
            if std::env::var_os("SPANHOOK_QUIET").is_none() {
                eprintln!("spanhook: inactive ({e})");
            }
        }
    }
}
