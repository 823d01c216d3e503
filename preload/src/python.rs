//! Python services need no code change: when the library is active in a Python process, the
//! constructor puts the directory of the Python hook (`preload/python`: `sitecustomize.py`
//! and `spantrack_hook/`) first on `PYTHONPATH`, before the interpreter reads it. Its
//! `sitecustomize.py` arms the hook, then runs any `sitecustomize` it shadows.
//!
//! The directory: `$SPANHOOK_PYTHON_DIR` if set (empty: do nothing), else found next to
//! the library: `<libdir>/python` (an installed layout) or `<libdir>/../../preload/python`
//! (the library in this repository's `target/<profile>/`).

use std::ffi::{CStr, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Is this process a Python interpreter (`/proc/self/exe` named `python*`)?
pub fn is_python() -> bool {
    std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.as_bytes().starts_with(b"python")))
        .unwrap_or(false)
}

/// The file this library was loaded from.
fn library_path() -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let addr = crate::spanhook_abi_version as *const libc::c_void;
    // SAFETY: `addr` is inside this library; `info` is a valid out-pointer.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path that lives as long as the mapping.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(OsStr::from_bytes(name.to_bytes())))
}

fn is_hook_dir(d: &Path) -> bool {
    d.join("sitecustomize.py").is_file() && d.join("spantrack_hook").join("__init__.py").is_file()
}

/// Where the Python hook is, if anywhere.
pub fn hook_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SPANHOOK_PYTHON_DIR") {
        return (!d.is_empty()).then(|| PathBuf::from(d));
    }
    let lib = library_path()?;
    let libdir = lib.parent()?;
    [libdir.join("python"), libdir.join("../../preload/python")]
        .into_iter()
        .find(|d| is_hook_dir(d))
        .map(|d| d.canonicalize().unwrap_or(d))
}

/// `PYTHONPATH` with `dir` first (other occurrences of it removed).
pub fn prepend(pythonpath: Option<&OsStr>, dir: &Path) -> OsString {
    let dir = dir.as_os_str().as_bytes();
    let mut out: Vec<u8> = dir.to_vec();
    if let Some(old) = pythonpath {
        for part in old.as_bytes().split(|&b| b == b':') {
            if part != dir && !part.is_empty() {
                out.push(b':');
                out.extend_from_slice(part);
            }
        }
    }
    OsString::from_vec(out)
}

/// In a Python process, puts the hook first on `PYTHONPATH`; returns the directory used.
/// Called from the constructor before any thread is started (`setenv` is not thread-safe).
pub fn arm() -> Option<PathBuf> {
    if !is_python() {
        return None;
    }
    let dir = hook_dir()?;
    let new = prepend(std::env::var_os("PYTHONPATH").as_deref(), &dir);
    std::env::set_var("PYTHONPATH", new);
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_puts_the_hook_first_once() {
        let d = Path::new("/x/preload/python");
        assert_eq!(prepend(None, d), OsString::from("/x/preload/python"));
        assert_eq!(prepend(Some(OsStr::new("")), d), OsString::from("/x/preload/python"));
        assert_eq!(prepend(Some(OsStr::new("/a:/b")), d), OsString::from("/x/preload/python:/a:/b"));
        assert_eq!(
            prepend(Some(OsStr::new("/a:/x/preload/python:/b")), d),
            OsString::from("/x/preload/python:/a:/b")
        );
        assert_eq!(prepend(Some(OsStr::new("/x/preload/python")), d), OsString::from("/x/preload/python"));
    }

    #[test]
    fn the_test_binary_is_not_python() {
        assert!(!is_python());
    }
}
