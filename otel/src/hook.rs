//! The preloaded libspanhook.so, found at run time: its C ABI (`preload/include/spanhook.h`)
//! looked up with `dlsym(RTLD_DEFAULT, ...)`. When the library is not loaded (no
//! `LD_PRELOAD`), has another ABI version or is inactive (no module), [`SpanHook::find`]
//! says so and the processor stays a pass-through.

use std::ffi::{c_int, c_long, CStr};
use std::time::Duration;

/// The ABI version this crate speaks (`spanhook_abi_version()`).
pub const ABI_VERSION: u32 = 5;
/// No record is larger (`SPANHOOK_RECORD_MAX`, the module's `record::RECORD_MAX_SIZE`).
pub const RECORD_MAX: usize = spantrack_logic::record::RECORD_MAX_SIZE;

type VersionFn = unsafe extern "C" fn() -> u32;
type ActiveFn = unsafe extern "C" fn() -> c_int;
type SpanFn = unsafe extern "C" fn(*const u8, *const u8) -> c_int;
type BeginThresholdFn = unsafe extern "C" fn(*const u8, *const u8, u64) -> c_int;
type ThresholdFn = unsafe extern "C" fn() -> u64;
type TakeFn = unsafe extern "C" fn(*const u8, *const u8, *mut u8, usize, u32) -> c_long;
type UnregisterFn = unsafe extern "C" fn() -> c_int;
type StatsFn = unsafe extern "C" fn(*mut u64, usize) -> usize;
type SlotFn = unsafe extern "C" fn() -> *mut u64;

/// Entry points of libspanhook.so.
#[derive(Clone, Copy, Debug)]
pub struct SpanHook {
    active: ActiveFn,
    begin: SpanFn,
    begin_threshold: BeginThresholdFn,
    end: SpanFn,
    threshold: ThresholdFn,
    take: TakeFn,
    unregister: UnregisterFn,
    stats: StatsFn,
    slot: SlotFn,
    /// `spanhook_forget`: added to ABI 5 later, so optional (absent: records of spans passed
    /// on unannotated stay in the library's store until evicted).
    forget: Option<SpanFn>,
}

/// Why [`SpanHook::find`] found nothing usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Absent {
    /// `spanhook_*` symbols are not in the process (library not preloaded).
    NotLoaded,
    /// The library speaks another ABI version.
    Version(u32),
    /// A symbol of the ABI is missing.
    Missing(&'static str),
    /// Loaded but not registered with the module (no module, forked child, ...).
    Inactive,
}

impl std::fmt::Display for Absent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Absent::NotLoaded => f.write_str("libspanhook.so not loaded"),
            Absent::Version(v) => write!(f, "libspanhook.so ABI {v}, expected {ABI_VERSION}"),
            Absent::Missing(s) => write!(f, "libspanhook.so lacks {s}"),
            Absent::Inactive => f.write_str("libspanhook.so inactive (no spantrack module?)"),
        }
    }
}

fn sym(name: &'static CStr) -> Option<*mut libc::c_void> {
    // SAFETY: `name` is a valid C string; RTLD_DEFAULT searches the global scope.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

macro_rules! lookup {
    ($name:literal, $ty:ty) => {{
        let p = sym($name).ok_or(Absent::Missing(stringify!($name)))?;
        // SAFETY: the symbol is the libspanhook.so function of that name, whose C signature
        // (spanhook.h, ABI 1, checked before) is `$ty`.
        unsafe { std::mem::transmute::<*mut libc::c_void, $ty>(p) }
    }};
}

impl SpanHook {
    /// Finds the preloaded library and checks that it speaks ABI 1 and is active.
    pub fn find() -> Result<SpanHook, Absent> {
        let h = Self::find_loaded()?;
        if h.is_active() {
            Ok(h)
        } else {
            Err(Absent::Inactive)
        }
    }

    /// Finds the library whether or not it is active.
    pub fn find_loaded() -> Result<SpanHook, Absent> {
        let Some(v) = sym(c"spanhook_abi_version") else {
            return Err(Absent::NotLoaded);
        };
        // SAFETY: `spanhook_abi_version` has had this signature in every ABI version.
        let version = unsafe { std::mem::transmute::<*mut libc::c_void, VersionFn>(v)() };
        if version != ABI_VERSION {
            return Err(Absent::Version(version));
        }
        Ok(SpanHook {
            active: lookup!(c"spanhook_active", ActiveFn),
            begin: lookup!(c"spanhook_span_begin", SpanFn),
            begin_threshold: lookup!(c"spanhook_span_begin_threshold", BeginThresholdFn),
            end: lookup!(c"spanhook_span_end", SpanFn),
            threshold: lookup!(c"spanhook_threshold_ns", ThresholdFn),
            take: lookup!(c"spanhook_take_record", TakeFn),
            unregister: lookup!(c"spanhook_unregister_thread", UnregisterFn),
            stats: lookup!(c"spanhook_stats", StatsFn),
            slot: lookup!(c"spanhook_active_slot", SlotFn),
            forget: sym(c"spanhook_forget").map(|p| {
                // SAFETY: the library's `spanhook_forget`, whose C signature is `SpanFn`.
                unsafe { std::mem::transmute::<*mut libc::c_void, SpanFn>(p) }
            }),
        })
    }

    /// A hook made of other functions with the same contract (host tests).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_fns(
        active: ActiveFn,
        begin: SpanFn,
        end: SpanFn,
        threshold: ThresholdFn,
        take: TakeFn,
        unregister: UnregisterFn,
        stats: StatsFn,
    ) -> SpanHook {
        unsafe extern "C" fn no_slot() -> *mut u64 {
            std::ptr::null_mut()
        }
        SpanHook {
            active,
            begin,
            begin_threshold: crate::processor_tests::begin_threshold_fn(),
            end,
            threshold,
            take,
            unregister,
            stats,
            slot: no_slot,
            forget: Some(crate::processor_tests::forget_fn()),
        }
    }

    /// Is the process registered with the module?
    pub fn is_active(&self) -> bool {
        // SAFETY: ABI function without arguments.
        unsafe { (self.active)() == 1 }
    }

    /// Opens the span on the calling thread; `Err(errno)`.
    #[inline]
    pub fn begin(&self, trace_id: &[u8; 16], span_id: &[u8; 8]) -> Result<(), i32> {
        // SAFETY: the pointers are valid for 16 and 8 bytes.
        errno_result(unsafe { (self.begin)(trace_id.as_ptr(), span_id.as_ptr()) })
    }

    /// Opens the span with its own threshold (`None`: the module's `threshold_ns`).
    #[inline]
    pub fn begin_with_threshold(&self, trace_id: &[u8; 16], span_id: &[u8; 8], threshold_ns: Option<u64>) -> Result<(), i32> {
        // SAFETY: the pointers are valid for 16 and 8 bytes.
        errno_result(unsafe { (self.begin_threshold)(trace_id.as_ptr(), span_id.as_ptr(), threshold_ns.unwrap_or(u64::MAX)) })
    }

    /// Closes the span (any thread); `Err(errno)`.
    #[inline]
    pub fn end(&self, trace_id: &[u8; 16], span_id: &[u8; 8]) -> Result<(), i32> {
        // SAFETY: as in `begin`.
        errno_result(unsafe { (self.end)(trace_id.as_ptr(), span_id.as_ptr()) })
    }

    /// Nobody will take the span's record (it was passed on without it): the library drops
    /// it, held or when it arrives, instead of letting it push wanted records out of its
    /// store. A no-op with a library that lacks the call.
    #[inline]
    pub fn forget(&self, trace_id: &[u8; 16], span_id: &[u8; 8]) {
        if let Some(f) = self.forget {
            // SAFETY: as in `begin`.
            let _ = unsafe { f(trace_id.as_ptr(), span_id.as_ptr()) };
        }
    }

    /// The module's threshold (`u64::MAX` when inactive).
    #[inline]
    pub fn threshold_ns(&self) -> u64 {
        // SAFETY: ABI function without arguments.
        unsafe { (self.threshold)() }
    }

    /// Waits up to `timeout` for the span's record and moves it into `buf` (resized to the
    /// record): `Ok(true)` got it, `Ok(false)` none in time, `Err(errno)`.
    pub fn take_record(
        &self,
        trace_id: &[u8; 16],
        span_id: &[u8; 8],
        buf: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<bool, i32> {
        buf.clear();
        buf.reserve(RECORD_MAX);
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: ids as in `begin`; `buf` has `buf.capacity()` writable bytes (not
        // initialised: the library only writes to them).
        let r = unsafe {
            (self.take)(
                trace_id.as_ptr(),
                span_id.as_ptr(),
                buf.as_mut_ptr(),
                buf.capacity(),
                ms,
            )
        };
        if r < 0 {
            Err(i32::try_from(-r).unwrap_or(libc::EINVAL))
        } else {
            let n = usize::try_from(r).unwrap_or(0).min(buf.capacity());
            // SAFETY: the library wrote `n <= capacity` bytes at the start of `buf`.
            unsafe { buf.set_len(n) };
            Ok(n > 0)
        }
    }

    /// The calling thread is no longer traced; `Err(errno)`.
    pub fn unregister_thread(&self) -> Result<(), i32> {
        // SAFETY: ABI function without arguments.
        let r = unsafe { (self.unregister)() };
        if r < 0 {
            Err(-r)
        } else {
            Ok(())
        }
    }

    /// The calling thread's active-span slot (registered at the thread's first call), or
    /// null (inactive, untracked thread).
    pub fn active_slot(&self) -> *mut u64 {
        // SAFETY: ABI function without arguments.
        unsafe { (self.slot)() }
    }

    /// The library's counters (`SPANHOOK_STAT_*` order).
    pub fn stats(&self) -> Vec<u64> {
        let mut v = vec![0u64; 16];
        // SAFETY: `v` has room for 16 values.
        let n = unsafe { (self.stats)(v.as_mut_ptr(), v.len()) };
        v.truncate(n.min(16));
        v
    }
}

/// The C ABI's "0 or -errno" as a `Result`.
#[inline]
fn errno_result(r: i32) -> Result<(), i32> {
    if r < 0 {
        Err(-r)
    } else {
        Ok(())
    }
}
