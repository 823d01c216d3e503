//! Attribution by activation for Rust services: an OpenTelemetry context observer
//! (`opentelemetry`'s `experimental_context_observer`) that stores, at every context
//! attach and detach, the id of the span that is now current on the thread into the
//! thread's active-span slot (`spanhook_active_slot`). The kernel module reads the slot at
//! each system call, so a call is charged to the span whose code the thread runs: under
//! tokio, the span of the future being polled (`FutureExt::with_context` and
//! `tracing-opentelemetry`'s `Instrumented` attach on every poll), whichever worker polls it.
//!
//! The observer is process-wide and set once, by the first active `SpantrackProcessor`.
//! If the application had set its own observer, this one is not installed and the module
//! keeps charging calls to the innermost span begun on the thread ([`install`] says so).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use opentelemetry::context::{ContextObserver, GlobalContextObserver};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;

use crate::hook::SpanHook;

static HOOK: OnceLock<SpanHook> = OnceLock::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

const UNKNOWN: u8 = 0;
const HAVE: u8 = 1;
const NONE: u8 = 2;

thread_local! {
    static SLOT: Cell<*mut u64> = const { Cell::new(std::ptr::null_mut()) };
    static STATE: Cell<u8> = const { Cell::new(UNKNOWN) };
    static OBSERVED: Cell<bool> = const { Cell::new(false) };
    static PROBING: Cell<bool> = const { Cell::new(false) };
}

/// The calling thread's slot (registered at the first call on the thread), if any.
#[inline]
fn slot() -> Option<*mut u64> {
    match STATE.with(Cell::get) {
        HAVE => Some(SLOT.with(Cell::get)),
        NONE => None,
        _ => {
            let p = HOOK.get().map_or(std::ptr::null_mut(), SpanHook::active_slot);
            STATE.with(|s| s.set(if p.is_null() { NONE } else { HAVE }));
            SLOT.with(|s| s.set(p));
            (!p.is_null()).then_some(p)
        }
    }
}

/// The slot value of `cx`: its span's id as an integer (0: no span).
#[inline]
pub fn slot_value(cx: &Context) -> u64 {
    if cx.has_active_span() {
        u64::from_be_bytes(cx.span().span_context().span_id().to_bytes())
    } else {
        0
    }
}

#[inline]
fn store(v: u64) {
    if let Some(p) = slot() {
        // SAFETY: `p` is this thread's slot, valid for the thread's life; only this thread
        // writes it (the kernel reads it on this thread's system calls).
        unsafe { std::ptr::write_volatile(p, v) };
    }
}

struct SlotObserver;

impl ContextObserver for SlotObserver {
    fn on_context_enter(&self, _from: &Context, to: &Context) {
        if PROBING.with(Cell::get) {
            OBSERVED.with(|o| o.set(true));
            return;
        }
        store(slot_value(to));
    }

    fn on_context_exit(&self, _from: &Context, to: &Context) {
        if !PROBING.with(Cell::get) {
            store(slot_value(to));
        }
    }
}

/// Installs the observer (once per process). True if it is the process's observer.
pub fn install(hook: SpanHook) -> bool {
    if INSTALLED.load(Ordering::Acquire) {
        return true;
    }
    let _ = HOOK.set(hook);
    GlobalContextObserver::set(Arc::new(SlotObserver));
    // Ours only if it sees an attach (another observer set first keeps its place). The
    // probe registers no slot: a thread gets one at its first real switch only.
    OBSERVED.with(|o| o.set(false));
    PROBING.with(|p| p.set(true));
    drop(Context::new().attach());
    PROBING.with(|p| p.set(false));
    let ours = OBSERVED.with(Cell::get);
    if ours {
        INSTALLED.store(true, Ordering::Release);
    }
    ours
}

/// Is the observer installed?
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// While alive, the calling thread runs no span: spantrack's own work on a service thread
/// (the processor's begin/end and hand-off) is never charged to the application's spans.
/// Only on a thread that already has a slot: a thread whose spans are never made current
/// (`Tracer::start` without `attach`) keeps the module's default attribution, to the
/// innermost span begun on it, which already leaves the begin and end writes out.
pub(crate) struct Suspend {
    slot: *mut u64,
    prev: u64,
}

impl Suspend {
    #[inline]
    pub(crate) fn new() -> Suspend {
        if !INSTALLED.load(Ordering::Relaxed) {
            return Suspend {
                slot: std::ptr::null_mut(),
                prev: 0,
            };
        }
        let registered = STATE.with(Cell::get) == HAVE;
        match registered.then(|| SLOT.with(Cell::get)) {
            Some(p) => {
                // SAFETY: as in `store`.
                let prev = unsafe { std::ptr::read_volatile(p) };
                // SAFETY: as in `store`.
                unsafe { std::ptr::write_volatile(p, 0) };
                Suspend { slot: p, prev }
            }
            None => Suspend {
                slot: std::ptr::null_mut(),
                prev: 0,
            },
        }
    }
}

impl Drop for Suspend {
    #[inline]
    fn drop(&mut self) {
        if !self.slot.is_null() {
            // SAFETY: as in `store`; same thread (`Suspend` is not `Send`: raw pointer).
            unsafe { std::ptr::write_volatile(self.slot, self.prev) };
        }
    }
}
