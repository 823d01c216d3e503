//! The library's process-wide state: registration with spantrack.ko at load time, the
//! pre-opened begin/end/control descriptors, the reader thread that moves records from the
//! relay channel into the [`RecordStore`], the live threshold, and the counters.
//!
//! Service threads only ever do one `write(2)` on a pre-opened descriptor (begin/end) or a
//! short map operation under the store's mutex (take); all I/O on the relay files and sysfs
//! happens on the reader thread, which is not tracked by the module.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use spantrack_uapi as uapi;

use crate::relay::RelayReader;
use crate::store::{RecordStore, DEFAULT_MAX_BYTES, DEFAULT_MAX_RECORDS};
use crate::sys;

/// Counters reported by `spanhook_stats`, in this order.
pub mod stat {
    /// Records read from the relay channel.
    pub const RECEIVED: usize = 0;
    /// Records evicted from the store before anybody took them.
    pub const EVICTED: usize = 1;
    /// Records taken by `spanhook_take_record`.
    pub const TAKEN: usize = 2;
    /// Failed span begin writes.
    pub const BEGIN_ERRORS: usize = 3;
    /// Failed span end writes.
    pub const END_ERRORS: usize = 4;
    /// Relay stream problems (read errors, undecodable bytes dropped).
    pub const STREAM_ERRORS: usize = 5;
    /// `spanhook_take_record` calls with a non-zero timeout that returned no record.
    pub const TAKE_TIMEOUTS: usize = 6;
    /// Records currently held in the store (a gauge).
    pub const STORED: usize = 7;
    /// Threads whose active-span slot was registered with the module.
    pub const SLOTS: usize = 8;
    /// Records dropped because the tracer forgot their span (`spanhook_forget`), held or on
    /// arrival: not evictions, nobody wanted them.
    pub const FORGOTTEN: usize = 9;
    /// Number of values.
    pub const COUNT: usize = 10;
}

/// How long the reader's poll() waits before looking at the files and the clock anyway.
const POLL_TIMEOUT_MS: i32 = 200;
/// How often the reader re-reads the threshold.
const THRESHOLD_REFRESH: Duration = Duration::from_secs(1);
/// Threshold assumed when sysfs cannot be read (the module's default).
const DEFAULT_THRESHOLD_NS: u64 = 1_000_000;

/// The registered state of the process.
pub struct Hook {
    /// The registered process.
    pub tgid: u32,
    /// The module's answer to `IOCTL_INFO` at load time.
    pub info: uapi::Info,
    control: RawFd,
    begin: RawFd,
    end: RawFd,
    store: Mutex<RecordStore>,
    arrived: Condvar,
    threshold: AtomicU64,
    counters: [AtomicU64; stat::COUNT],
    debug: bool,
    quiet: bool,
}

static HOOK: OnceLock<Hook> = OnceLock::new();
/// True while the process is registered and the reader runs. Cleared in a forked child
/// (which is not registered) and when the module goes away.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The state, if the library is active.
#[inline]
pub fn active() -> Option<&'static Hook> {
    if ACTIVE.load(Ordering::Acquire) {
        HOOK.get()
    } else {
        None
    }
}

/// The counters (zeros if the library never became active).
pub fn counters() -> [u64; stat::COUNT] {
    let mut out = [0u64; stat::COUNT];
    if let Some(h) = HOOK.get() {
        // No lock here: in a forked child the store's mutex may be held forever.
        for (o, c) in out.iter_mut().zip(&h.counters) {
            *o = c.load(Ordering::Relaxed);
        }
    }
    out
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Reads `/sys/kernel/spantrack/threshold_ns`.
pub fn read_threshold() -> Result<u64, String> {
    let path = format!("{}/threshold_ns", uapi::SYSFS_DIR);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|e| format!("{path}: {text:?}: {e}"))
}

/// Asks the module for its [`uapi::Info`] through a fresh control descriptor.
pub fn probe_module() -> Result<uapi::Info, String> {
    let fd = sys::open(uapi::PROC_CONTROL, libc::O_RDONLY)
        .map_err(|e| format!("{}: {}", uapi::PROC_CONTROL, sys::errno_text(e)))?;
    let r = check_info(fd);
    sys::close(fd);
    r
}

fn check_info(control: RawFd) -> Result<uapi::Info, String> {
    let info = sys::ioctl_info(control).map_err(|e| {
        // A module of another ABI version numbers its ioctls differently: ask the way
        // older modules answer, to name both versions.
        match (e, spantrack_sys::older_module_abi(control)) {
            (libc::ENOTTY, Some(v)) => abi_mismatch(v),
            _ => format!("ioctl INFO: {}", sys::errno_text(e)),
        }
    })?;
    if info.abi_version != uapi::ABI_VERSION {
        return Err(abi_mismatch(info.abi_version));
    }
    Ok(info)
}

/// The start-up message when the loaded module speaks another ABI version.
fn abi_mismatch(module: u32) -> String {
    format!(
        "spantrack.ko speaks ABI version {module}, this libspanhook.so ABI version {}: load a spantrack.ko and a libspanhook.so of the same release",
        uapi::ABI_VERSION
    )
}

impl Hook {
    fn lock_store(&self) -> MutexGuard<'_, RecordStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, which: usize, n: u64) {
        if let Some(c) = self.counters.get(which) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Current threshold of the module (refreshed by the reader about once a second).
    pub fn threshold_ns(&self) -> u64 {
        self.threshold.load(Ordering::Relaxed)
    }

    /// Writes a begin (`end == false`) or end line for the span: one `write(2)`; 0 or
    /// `-errno`.
    #[inline]
    pub fn span_write(&self, end: bool, trace_id: &[u8; 16], span_id: &[u8; 8]) -> i32 {
        self.span_write_threshold(end, trace_id, span_id, None)
    }

    /// [`Hook::span_write`]; a begin carries the span's own threshold when there is one
    /// (ABI 4; ignored for an end).
    #[inline]
    pub fn span_write_threshold(&self, end: bool, trace_id: &[u8; 16], span_id: &[u8; 8], threshold_ns: Option<u64>) -> i32 {
        use spantrack_logic::key::{format_begin_line, SpanKey, BEGIN_LINE_MAX};
        let key = SpanKey {
            trace_id: *trace_id,
            span_id: *span_id,
        };
        let mut buf = [0u8; BEGIN_LINE_MAX];
        let line = format_begin_line(&key, if end { None } else { threshold_ns }, &mut buf);
        let fd = if end { self.end } else { self.begin };
        let r = sys::write_all_once(fd, line);
        if r < 0 {
            self.bump(if end { stat::END_ERRORS } else { stat::BEGIN_ERRORS }, 1);
        }
        r
    }

    /// `IOCTL_UNREGISTER_THREAD` for the calling thread: 0 or `-errno`.
    pub fn unregister_thread(&self) -> i32 {
        sys::ioctl_plain(self.control, uapi::IOCTL_UNREGISTER_THREAD).map_or_else(|e| -e, |()| 0)
    }

    /// Waits up to `timeout` for the record of the span and moves it out of the store if it
    /// fits in `max_len` bytes: `Ok(Some(bytes))`, `Ok(None)` on timeout, `Err(-errno)`
    /// (`-ENOSPC`: too small, record kept; `-ENODEV`: the library went inactive).
    pub fn take_record(
        &self,
        ids: &([u8; 16], [u8; 8]),
        max_len: usize,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, i32> {
        use crate::store::Take;
        let deadline = Instant::now() + timeout;
        let mut store = self.lock_store();
        loop {
            match store.take(ids, max_len) {
                Take::Taken(b) => {
                    self.counters[stat::STORED].store(store.len() as u64, Ordering::Relaxed);
                    drop(store);
                    self.bump(stat::TAKEN, 1);
                    return Ok(Some(b));
                }
                Take::TooSmall(_) => return Err(-libc::ENOSPC),
                Take::Absent => {}
            }
            if !ACTIVE.load(Ordering::Acquire) {
                return Err(-libc::ENODEV);
            }
            let now = Instant::now();
            if now >= deadline {
                drop(store);
                if !timeout.is_zero() {
                    self.bump(stat::TAKE_TIMEOUTS, 1);
                }
                return Ok(None);
            }
            store = self
                .arrived
                .wait_timeout(store, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Nobody will take the record of this span: drop it now if it is held, or when it
    /// arrives. A short map operation under the store's mutex; never waits for a record.
    pub fn forget(&self, ids: &([u8; 16], [u8; 8])) {
        let mut store = self.lock_store();
        store.forget(*ids);
        self.counters[stat::STORED].store(store.len() as u64, Ordering::Relaxed);
        self.counters[stat::FORGOTTEN].store(store.forgotten_records(), Ordering::Relaxed);
    }

    fn log(&self, msg: &str) {
        if self.debug {
            sys::log_line(msg);
        }
    }
}

/// The calling thread's active-span slot (`uapi::ActiveSlot`): the runtime stores the id
/// of the span the thread runs now (0: none) at every switch; the module reads it at each
/// system call. Registered with the module at the thread's first [`active_slot`] call;
/// cleared (value 0, and unregistered) when the thread exits.
struct ThreadSlot {
    value: AtomicU64,
    /// `SLOT_*`.
    state: std::cell::Cell<u8>,
}

const SLOT_NEW: u8 = 0;
const SLOT_REGISTERED: u8 = 1;
const SLOT_REFUSED: u8 = 2;

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        self.value.store(0, Ordering::Relaxed);
        if self.state.get() == SLOT_REGISTERED && ACTIVE.load(Ordering::Acquire) {
            if let Some(h) = HOOK.get() {
                let _ = sys::set_active_slot(h.control, std::ptr::null());
            }
        }
    }
}

thread_local! {
    static SLOT: ThreadSlot = const {
        ThreadSlot { value: AtomicU64::new(0), state: std::cell::Cell::new(SLOT_NEW) }
    };
}

/// Address of the calling thread's active-span slot, registering it with the module on the
/// thread's first call; null when the library is inactive, the module refused the slot
/// (the thread is not tracked: the library's own threads) or the thread is exiting.
pub fn active_slot() -> *mut u64 {
    let Some(h) = active() else {
        return std::ptr::null_mut();
    };
    SLOT.try_with(|s| {
        let p = s.value.as_ptr();
        match s.state.get() {
            SLOT_REGISTERED => p,
            SLOT_REFUSED => std::ptr::null_mut(),
            _ => match sys::set_active_slot(h.control, p) {
                Ok(()) => {
                    s.state.set(SLOT_REGISTERED);
                    h.bump(stat::SLOTS, 1);
                    p
                }
                Err(e) => {
                    s.state.set(SLOT_REFUSED);
                    h.log(&format!("active slot refused: {}", sys::errno_text(e)));
                    std::ptr::null_mut()
                }
            },
        }
    })
    .unwrap_or(std::ptr::null_mut())
}

/// Runs in a forked child (registered with `pthread_atfork`): the child is not registered
/// with the module and has no reader thread, so the library goes inactive there, quietly.
/// Only async-signal-safe work: an atomic store and `close()`.
extern "C" fn atfork_child() {
    ACTIVE.store(false, Ordering::Release);
    if let Some(h) = HOOK.get() {
        sys::close(h.begin);
        sys::close(h.end);
        sys::close(h.control);
    }
}

/// The load-time work: register, open everything, start the reader. `Err` says why the
/// library stays inactive (nothing was left registered or open).
pub fn init() -> Result<(), String> {
    if env_flag("SPANHOOK_DISABLE") {
        return Err("disabled by SPANHOOK_DISABLE".into());
    }
    if HOOK.get().is_some() {
        return Err("already initialised".into());
    }
    let control = sys::open(uapi::PROC_CONTROL, libc::O_RDONLY)
        .map_err(|e| format!("{}: {}", uapi::PROC_CONTROL, sys::errno_text(e)))?;
    let mut opened = vec![control];
    let close_all = |fds: &[RawFd]| fds.iter().for_each(|&fd| sys::close(fd));
    let info = match check_info(control) {
        Ok(i) => i,
        Err(e) => {
            close_all(&opened);
            return Err(e);
        }
    };
    // EALREADY: this process registered before an exec (same tgid): keep using that.
    if let Err(e) = sys::ioctl_plain(control, uapi::IOCTL_REGISTER) {
        if e != libc::EALREADY {
            close_all(&opened);
            return Err(match e {
                libc::EDQUOT => format!(
                    "ioctl REGISTER: this user already has the most processes registered it may \
                     have ({}/max_procs_per_uid; root may raise it)",
                    uapi::SYSFS_DIR
                ),
                libc::ENOSPC => "ioctl REGISTER: the module's process table is full".to_string(),
                _ => format!("ioctl REGISTER: {}", sys::errno_text(e)),
            });
        }
    }
    let fail = |opened: &[RawFd], msg: String| -> Result<(), String> {
        let _ = sys::ioctl_plain(control, uapi::IOCTL_UNREGISTER);
        close_all(opened);
        Err(msg)
    };
    let mut fds = [0; 2];
    for (i, path) in [uapi::PROC_BEGIN, uapi::PROC_END].iter().enumerate() {
        match sys::open(path, libc::O_WRONLY) {
            Ok(fd) => {
                fds[i] = fd;
                opened.push(fd);
            }
            Err(e) => return fail(&opened, format!("{path}: {}", sys::errno_text(e))),
        }
    }
    let tgid = sys::getpid();
    let relay = match RelayReader::open_own(control, tgid) {
        Ok(r) => r,
        Err(e) => return fail(&opened, format!("relay: {e}")),
    };
    let debug = env_flag("SPANHOOK_DEBUG");
    let threshold = read_threshold().unwrap_or_else(|e| {
        if debug {
            sys::log_line(&format!("threshold unreadable ({e}), assuming {DEFAULT_THRESHOLD_NS} ns"));
        }
        DEFAULT_THRESHOLD_NS
    });
    let hook = Hook {
        tgid,
        info,
        control,
        begin: fds[0],
        end: fds[1],
        store: Mutex::new(RecordStore::new(
            env_usize("SPANHOOK_MAX_RECORDS").unwrap_or(DEFAULT_MAX_RECORDS),
            env_usize("SPANHOOK_MAX_BYTES").unwrap_or(DEFAULT_MAX_BYTES),
        )),
        arrived: Condvar::new(),
        threshold: AtomicU64::new(threshold),
        counters: Default::default(),
        debug,
        quiet: env_flag("SPANHOOK_QUIET"),
    };
    if HOOK.set(hook).is_err() {
        return fail(&opened, "already initialised".into());
    }
    let Some(hook) = HOOK.get() else {
        return fail(&opened, "state lost".into());
    };
    // SAFETY: registers a plain `extern "C"` handler with no arguments.
    unsafe { libc::pthread_atfork(None, None, Some(atfork_child)) };
    // Still single-threaded here: the only safe moment for setenv.
    let python = crate::python::arm();
    ACTIVE.store(true, Ordering::Release);
    let spawned = std::thread::Builder::new()
        .name("spanhook-reader".into())
        .spawn(move || reader(hook, relay));
    if let Err(e) = spawned {
        ACTIVE.store(false, Ordering::Release);
        return fail(&opened, format!("reader thread: {e}"));
    }
    hook.log(&format!(
        "active (tgid {tgid}, {} relay files, threshold {threshold} ns{})",
        info.relay_files,
        python.map_or(String::new(), |d| format!(", {} first on PYTHONPATH", d.display()))
    ));
    Ok(())
}

/// The reader thread: untracks itself, then moves records from relay into the store on
/// every poll() wake-up (or every [`POLL_TIMEOUT_MS`]), and refreshes the threshold.
fn reader(hook: &'static Hook, mut relay: RelayReader) {
    let r = hook.unregister_thread();
    if r < 0 {
        hook.log(&format!("reader: UNREGISTER_THREAD: {}", sys::errno_text(-r)));
    }
    let mut last_refresh = Instant::now();
    let mut batch = Vec::new();
    while ACTIVE.load(Ordering::Acquire) {
        let broken = match sys::poll_in(hook.control, POLL_TIMEOUT_MS) {
            Ok(rev) => rev & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
            Err(e) => e != libc::EINTR,
        };
        let pass = relay.read_available(|ids, bytes| batch.push((ids, bytes)));
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let mut evicted = 0;
            {
                let mut store = hook.lock_store();
                for (ids, bytes) in batch.drain(..) {
                    evicted += store.insert(ids, bytes);
                }
                hook.counters[stat::STORED].store(store.len() as u64, Ordering::Relaxed);
                hook.counters[stat::FORGOTTEN].store(store.forgotten_records(), Ordering::Relaxed);
            }
            hook.arrived.notify_all();
            hook.bump(stat::RECEIVED, n);
            hook.bump(stat::EVICTED, evicted);
        }
        if pass.errors > 0 {
            hook.bump(stat::STREAM_ERRORS, pass.errors);
            if let Some(e) = &pass.first_error {
                hook.log(&format!("reader: {e}"));
            }
        }
        if broken {
            // Poll cannot wait (module going away?): do not spin.
            std::thread::sleep(Duration::from_millis(POLL_TIMEOUT_MS as u64));
        }
        if last_refresh.elapsed() >= THRESHOLD_REFRESH {
            last_refresh = Instant::now();
            match read_threshold() {
                Ok(t) => hook.threshold.store(t, Ordering::Relaxed),
                Err(e) => {
                    if check_info(hook.control).is_err() {
                        ACTIVE.store(false, Ordering::Release);
                        hook.arrived.notify_all();
                        if !hook.quiet {
                            sys::log_line("inactive (the module went away)");
                        }
                        return;
                    }
                    hook.log(&format!("reader: {e}"));
                }
            }
        }
    }
}

/// Called by the constructor: [`init`], and the one line saying why not.
pub fn load() {
    let r = std::panic::catch_unwind(init).unwrap_or_else(|_| Err("internal error".into()));
    if let Err(e) = r {
        if !env_flag("SPANHOOK_QUIET") {
            sys::log_line(&format!("inactive ({e})"));
        }
    }
}

#[cfg(test)]
mod abi_tests {
    /// The start-up message names both versions (issue 13, item 6).
    #[test]
    fn mismatch_names_both_versions() {
        let m = super::abi_mismatch(2);
        assert!(m.contains("spantrack.ko speaks ABI version 2"), "{m}");
        assert!(m.contains(&format!("libspanhook.so ABI version {}", super::uapi::ABI_VERSION)), "{m}");
    }
}
