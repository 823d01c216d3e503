//! libspanhook.so: loaded with `LD_PRELOAD`, it connects a service to spantrack.ko.
//!
//! At load time (a constructor) it registers the process with the module, opens the span
//! begin/end files and starts one reader thread that collects the slow-span records from the
//! process's relay channel. Without the module (or with an incompatible one) it logs one
//! line (`spanhook: inactive (<reason>)`, silenced by `SPANHOOK_QUIET=1`) and does nothing
//! more: the service runs exactly as without the library.
//!
//! Tracers reach it through the versioned C ABI below (`include/spanhook.h`), found at run
//! time with `dlsym(RTLD_DEFAULT, ...)` (Rust: `spantrack-otel`) or `ctypes.CDLL(None)`
//! (Python). In an active Python process the constructor also puts the Python hook first on
//! `PYTHONPATH` ([`python`]), so that `LD_PRELOAD` alone instruments a Python service.

pub mod hook;
pub mod python;
pub mod relay;
pub mod store;
pub mod sys;

use std::time::Duration;

pub use hook::{probe_module, stat};

/// Version of the C ABI below (`spanhook_abi_version()`).
pub const SPANHOOK_ABI_VERSION: u32 = 5;

// Not in the crate's own unit tests: they check the never-initialised (inactive) state.
#[cfg(not(test))]
#[ctor::ctor]
fn spanhook_init() {
    hook::load();
}

/// Reads the 16 + 8 id bytes behind the caller's pointers.
///
/// # Safety
/// Non-null pointers must be valid for reads of 16 and 8 bytes.
unsafe fn read_ids(trace_id: *const u8, span_id: *const u8) -> Option<([u8; 16], [u8; 8])> {
    if trace_id.is_null() || span_id.is_null() {
        return None;
    }
    let mut t = [0u8; 16];
    let mut s = [0u8; 8];
    // SAFETY: the caller guarantees 16 and 8 readable bytes; the arrays are ours.
    unsafe {
        std::ptr::copy_nonoverlapping(trace_id, t.as_mut_ptr(), 16);
        std::ptr::copy_nonoverlapping(span_id, s.as_mut_ptr(), 8);
    }
    Some((t, s))
}

/// Version of this ABI: 5 (records carry the scheduler part: a 1544-byte header; 4 added
/// `spanhook_span_begin_threshold`, 2 `spanhook_active_slot`).
#[no_mangle]
pub extern "C" fn spanhook_abi_version() -> u32 {
    SPANHOOK_ABI_VERSION
}

/// 1 when the process is registered with the module (and this is not a forked child).
#[no_mangle]
pub extern "C" fn spanhook_active() -> libc::c_int {
    libc::c_int::from(hook::active().is_some())
}

/// Opens the span on the calling thread: one `write(2)`. 0 or `-errno` (`-ENODEV` when
/// inactive, `-EINVAL` for a null pointer, else the module's errors).
///
/// # Safety
/// `trace_id` and `span_id` point to 16 and 8 readable bytes (or are null).
#[no_mangle]
pub unsafe extern "C" fn spanhook_span_begin(trace_id: *const u8, span_id: *const u8) -> libc::c_int {
    let Some(h) = hook::active() else {
        return -libc::ENODEV;
    };
    // SAFETY: forwarded caller guarantee.
    match unsafe { read_ids(trace_id, span_id) } {
        Some((t, s)) => h.span_write(false, &t, &s),
        None => -libc::EINVAL,
    }
}

/// [`spanhook_span_begin`] with the span's own threshold: the module reports the span when
/// it lasts at least `threshold_ns` (clamped to 1 hour), whatever its sysfs `threshold_ns`;
/// `UINT64_MAX`: no threshold of its own (as `spanhook_span_begin`). Same returns.
///
/// # Safety
/// As [`spanhook_span_begin`].
#[no_mangle]
pub unsafe extern "C" fn spanhook_span_begin_threshold(trace_id: *const u8, span_id: *const u8, threshold_ns: u64) -> libc::c_int {
    let Some(h) = hook::active() else {
        return -libc::ENODEV;
    };
    let t = (threshold_ns != u64::MAX).then_some(threshold_ns);
    // SAFETY: forwarded caller guarantee.
    match unsafe { read_ids(trace_id, span_id) } {
        Some((tr, s)) => h.span_write_threshold(false, &tr, &s, t),
        None => -libc::EINVAL,
    }
}

/// Closes the span (from any thread of the process): one `write(2)`. Same returns.
///
/// # Safety
/// As [`spanhook_span_begin`].
#[no_mangle]
pub unsafe extern "C" fn spanhook_span_end(trace_id: *const u8, span_id: *const u8) -> libc::c_int {
    let Some(h) = hook::active() else {
        return -libc::ENODEV;
    };
    // SAFETY: forwarded caller guarantee.
    match unsafe { read_ids(trace_id, span_id) } {
        Some((t, s)) => h.span_write(true, &t, &s),
        None => -libc::EINVAL,
    }
}

/// Address of the calling thread's active-span slot, a `uint64_t` the caller writes at
/// every switch: the id of the span whose code the thread runs from now on (the number
/// whose big-endian bytes are the W3C span id), or 0 when it runs none. One plain store,
/// no system call: the module reads the slot at each system call of the thread and charges
/// the call to that span. Registered with the module at the thread's first call (one
/// `ioctl`); valid until the thread exits. NULL when inactive or for an untracked thread.
#[no_mangle]
pub extern "C" fn spanhook_active_slot() -> *mut u64 {
    hook::active_slot()
}

/// The module's current threshold in ns (re-read about once a second); `UINT64_MAX` when
/// inactive.
#[no_mangle]
pub extern "C" fn spanhook_threshold_ns() -> u64 {
    hook::active().map_or(u64::MAX, |h| h.threshold_ns())
}

/// Waits up to `timeout_ms` for the record of the span and moves it into `buf` (raw uapi
/// bytes: `RecordHeader`, with its scheduler part, then `SyscallEntry`s). Returns its size;
/// 0 if none arrived in time; `-ENOSPC` if `len` is too small (the record is kept);
/// `-ENODEV` when inactive; `-EINVAL` for null pointers.
///
/// # Safety
/// Ids as in [`spanhook_span_begin`]; `buf` is valid for writes of `len` bytes (or null with
/// `len == 0`).
#[no_mangle]
pub unsafe extern "C" fn spanhook_take_record(
    trace_id: *const u8,
    span_id: *const u8,
    buf: *mut u8,
    len: libc::size_t,
    timeout_ms: u32,
) -> libc::c_long {
    let Some(h) = hook::active() else {
        return -libc::ENODEV as libc::c_long;
    };
    // SAFETY: forwarded caller guarantee.
    let Some(ids) = (unsafe { read_ids(trace_id, span_id) }) else {
        return -libc::EINVAL as libc::c_long;
    };
    if buf.is_null() && len != 0 {
        return -libc::EINVAL as libc::c_long;
    }
    match h.take_record(&ids, len, Duration::from_millis(u64::from(timeout_ms))) {
        Ok(Some(bytes)) => {
            // SAFETY: `bytes.len() <= len` (the store checked) and `buf` has `len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
            bytes.len() as libc::c_long
        }
        Ok(None) => 0,
        Err(e) => libc::c_long::from(e),
    }
}

/// Nobody will take the record of this span (the tracer passed it on without waiting, e.g.
/// its queue was full): the record is dropped now if it is held, or when it arrives, so that
/// it does not push records that are still wanted out of the bounded store. Counted in
/// `SPANHOOK_STAT_FORGOTTEN`. Returns 0, `-ENODEV` when inactive, `-EINVAL` for null
/// pointers. Never blocks on the kernel.
///
/// # Safety
/// Ids as in [`spanhook_span_begin`].
#[no_mangle]
pub unsafe extern "C" fn spanhook_forget(trace_id: *const u8, span_id: *const u8) -> libc::c_int {
    let Some(h) = hook::active() else {
        return -libc::ENODEV;
    };
    // SAFETY: forwarded caller guarantee.
    match unsafe { read_ids(trace_id, span_id) } {
        Some(ids) => {
            h.forget(&ids);
            0
        }
        None => -libc::EINVAL,
    }
}

/// The calling thread is no longer traced (for a tracer's own threads): 0 or `-errno`
/// (`-ENOENT` if it was not traced, `-ENODEV` when inactive).
#[no_mangle]
pub extern "C" fn spanhook_unregister_thread() -> libc::c_int {
    match hook::active() {
        Some(h) => h.unregister_thread(),
        None => -libc::ENODEV,
    }
}

/// Writes up to `n` counters (see `stat`: received, evicted, taken, begin errors, end
/// errors, stream errors, take timeouts, stored, slots, forgotten) to `out`; returns how many.
///
/// # Safety
/// `out` is valid for writes of `n` `u64`s (or null with `n == 0`).
#[no_mangle]
pub unsafe extern "C" fn spanhook_stats(out: *mut u64, n: libc::size_t) -> libc::size_t {
    if out.is_null() {
        return 0;
    }
    let c = hook::counters();
    let k = n.min(c.len());
    // SAFETY: `out` has room for `n >= k` values.
    unsafe { std::ptr::copy_nonoverlapping(c.as_ptr(), out, k) };
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a host without the module the constructor left the library inactive: every entry
    /// point says so and nothing blocks.
    #[test]
    fn inactive_entry_points() {
        assert_eq!(spanhook_abi_version(), 5);
        assert_eq!(spanhook_active(), 0);
        assert_eq!(spanhook_threshold_ns(), u64::MAX);
        assert!(spanhook_active_slot().is_null());
        let (t, s) = ([1u8; 16], [2u8; 8]);
        let mut buf = [0u8; 256];
        // SAFETY: valid pointers and lengths.
        unsafe {
            assert_eq!(spanhook_span_begin(t.as_ptr(), s.as_ptr()), -libc::ENODEV);
            assert_eq!(spanhook_span_end(t.as_ptr(), s.as_ptr()), -libc::ENODEV);
            assert_eq!(spanhook_forget(t.as_ptr(), s.as_ptr()), -libc::ENODEV);
            let t0 = std::time::Instant::now();
            let r = spanhook_take_record(t.as_ptr(), s.as_ptr(), buf.as_mut_ptr(), buf.len(), 500);
            assert_eq!(r, -libc::ENODEV as libc::c_long);
            assert!(t0.elapsed() < std::time::Duration::from_millis(100));
            let mut out = [7u64; stat::COUNT + 1];
            assert_eq!(spanhook_stats(out.as_mut_ptr(), out.len()), stat::COUNT);
            assert_eq!(&out[..stat::COUNT], &[0; stat::COUNT]);
            assert_eq!(out[stat::COUNT], 7);
            assert_eq!(spanhook_stats(out.as_mut_ptr(), 3), 3);
            assert_eq!(spanhook_stats(std::ptr::null_mut(), 3), 0);
        }
        assert_eq!(spanhook_unregister_thread(), -libc::ENODEV);
        assert!(hook::active().is_none());
    }

    /// `include/spanhook.h` says what this library is: its ABI version and the record
    /// layout it hands out (uapi's).
    #[test]
    fn c_header_agrees() {
        let h = include_str!("../include/spanhook.h");
        let define = |name: &str| -> u64 {
            let def = format!("#define {name} ");
            let line = h.lines().find(|l| l.starts_with(&def)).unwrap_or_else(|| panic!("{name}"));
            line[def.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().unwrap())
                .product()
        };
        assert_eq!(define("SPANHOOK_ABI_VERSION"), u64::from(SPANHOOK_ABI_VERSION));
        assert_eq!(define("SPANHOOK_RECORD_HEADER_SIZE"), spantrack_uapi::RECORD_HEADER_SIZE as u64);
        assert!(h.contains(&format!("a {}-byte RecordHeader", spantrack_uapi::RECORD_HEADER_SIZE)));
    }
}
