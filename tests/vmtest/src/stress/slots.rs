//! `slots`: threads with active-span slots (asyncio, tokio), many at once, every call charged
//! through the slot threads' lock-free rings (issue 16). Workers, each with a slot of its own,
//! begin spans into a shared set, take turns inside one another's spans (the span's id in their
//! slot while they make 1 to 4 `getpid`), end spans begun by others, and exit and are replaced
//! in the middle of the run (their slots reused). A span is ended only once no worker is inside
//! it, so each record must hold exactly the calls made in it: per thread, every one a `getpid`
//! with the pid, the totals exact, nothing else; and no call counted as unknown, ended during
//! the call or stale. With threshold 0 every span is reported; a reader thread reads as they
//! come (a record that finds the buffer full is dropped and counted: then every span has a
//! record or is counted dropped, exactly).

use super::reader::{BulkReader, Rec};
use crate::fig;
use super::{key3, key_id, raw_getpid, scaled, span_write, Report, Rng};
use crate::span::{Fds, LINE_LEN};
use crate::sys::{self, errno_name, Fd};
use crate::sysfs::{self, Stats, TunableGuard};
use spantrack_uapi as uapi;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NR_GETPID: u32 = libc::SYS_getpid as u32;
/// `Span::users`: the span is being ended; no worker may enter it any more.
const CLOSING: u32 = 1 << 31;
/// Open spans at most (begins wait for ends beyond).
const MAX_OPEN: usize = 48;

struct Span {
    line: [u8; LINE_LEN],
    id: [u8; 24],
    value: u64,
    /// Workers inside the span (their slot holds its id), and `CLOSING`.
    users: AtomicU32,
}

struct Shared {
    fds: Fds,
    control: i32,
    seed: u64,
    open: Mutex<Vec<Arc<Span>>>,
    next: AtomicU64,
    ended: Mutex<Vec<[u8; 24]>>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        if let Ok(mut v) = self.errors.lock() {
            if v.len() < 20 {
                v.push(e);
            }
        }
    }

    /// Ends `s` once no worker is inside it (the caller's slot holds 0).
    fn end(&self, s: &Span) {
        s.users.fetch_or(CLOSING, Ordering::AcqRel);
        let t0 = Instant::now();
        while s.users.load(Ordering::Acquire) != CLOSING {
            if t0.elapsed() > Duration::from_secs(30) {
                self.error("a worker stayed inside a span for 30 s".into());
                return;
            }
            std::hint::spin_loop();
        }
        match span_write(self.fds.end, &s.line) {
            0 => {
                if let Ok(mut v) = self.ended.lock() {
                    v.push(s.id);
                }
            }
            e => self.error(format!("end: {}", errno_name(e))),
        }
    }
}

/// Calls a worker made in each span, by (span, tid).
type Ledger = HashMap<([u8; 24], u32), u64>;

fn worker(sh: &Shared, w: u64, iters: u64) -> Ledger {
    let mut ledger = Ledger::new();
    let slot = Box::new(AtomicU64::new(0));
    if let Err(e) = spantrack_sys::set_active_slot(sh.control, slot.as_ptr()) {
        sh.error(format!("IOCTL_SET_ACTIVE_SLOT: {}", errno_name(e)));
        return ledger;
    }
    let tid = sys::gettid();
    let mut rng = Rng::new(sh.seed ^ w.wrapping_mul(0x9e37_79b9));
    for _ in 0..iters {
        let r = rng.below(100);
        if r < 15 {
            let n = sh.open.lock().map_or(MAX_OPEN, |v| v.len());
            if n >= MAX_OPEN {
                continue;
            }
            let i = sh.next.fetch_add(1, Ordering::Relaxed);
            let k = key3(sh.seed, i, 0x510);
            let s = Arc::new(Span {
                line: k.line(),
                id: key_id(&k),
                value: uapi::slot_value(&k.span_id),
                users: AtomicU32::new(0),
            });
            match span_write(sh.fds.begin, &s.line) {
                0 => {
                    if let Ok(mut v) = sh.open.lock() {
                        v.push(s);
                    }
                }
                e => sh.error(format!("begin: {}", errno_name(e))),
            }
        } else if r < 27 {
            let s = sh.open.lock().ok().and_then(|mut v| {
                (!v.is_empty()).then(|| {
                    let j = rng.below(v.len() as u64) as usize;
                    v.swap_remove(j)
                })
            });
            if let Some(s) = s {
                sh.end(&s);
            }
        } else {
            let s = sh.open.lock().ok().and_then(|v| (!v.is_empty()).then(|| Arc::clone(&v[rng.below(v.len() as u64) as usize])));
            let Some(s) = s else { continue };
            // Enter unless it is being ended.
            let mut u = s.users.load(Ordering::Acquire);
            let entered = loop {
                if u & CLOSING != 0 {
                    break false;
                }
                match s.users.compare_exchange_weak(u, u + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => break true,
                    Err(x) => u = x,
                }
            };
            if !entered {
                continue;
            }
            let n = rng.range(1, 4);
            // From here to the store of 0: only the timed system calls.
            slot.store(s.value, Ordering::SeqCst);
            for _ in 0..n {
                raw_getpid();
            }
            slot.store(0, Ordering::SeqCst);
            s.users.fetch_sub(1, Ordering::AcqRel);
            *ledger.entry((s.id, tid)).or_insert(0) += n;
        }
    }
    // The kernel reads the slot until it is cleared: clear it before it is freed.
    if let Err(e) = spantrack_sys::set_active_slot(sh.control, std::ptr::null()) {
        sh.error(format!("clearing the slot: {}", errno_name(e)));
    }
    ledger
}

pub fn run(rep: &mut Report) {
    if let Err(e) = run_inner(rep) {
        rep.check("slots: setup", Err(e));
    }
}

fn run_inner(rep: &mut Report) -> Result<(), String> {
    let _g = TunableGuard::save()?;
    sysfs::set(sysfs::THRESHOLD, "0")?;
    let pid = sys::getpid();
    let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
    let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
    let fds = Fds { begin: begin.raw(), end: end.raw() };
    sys::ioctl_plain(control.raw(), uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER: {}", errno_name(e)))?;
    let seed = super::clock_seed();
    let workers = 8u64;
    let iters = scaled(4000, 400);
    let sh = Arc::new(Shared {
        fds,
        control: control.raw(),
        seed,
        open: Mutex::new(Vec::new()),
        next: AtomicU64::new(0),
        ended: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
    });
    let s0 = Stats::read()?;
    // The reader: its own thread (tracked, no span, no slot), reading as records come.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let mut relay = BulkReader::open(pid)?;
        std::thread::spawn(move || {
            let mut rng = Rng::new(1);
            let mut recs: Vec<Rec> = Vec::new();
            loop {
                let done = stop.load(Ordering::Acquire);
                relay.poll(0, &mut rng, |r| recs.push(r));
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (recs, relay.errors)
        })
    };
    let t0 = Instant::now();
    // Two waves: each worker that finishes is replaced while the others run.
    let mut handles: Vec<std::thread::JoinHandle<Ledger>> = Vec::new();
    let spawn = |w: u64| {
        let sh = Arc::clone(&sh);
        // Half the first wave stops half-way (exits while others are inside spans).
        let n = if w < workers && w % 2 == 1 { iters / 2 } else { iters };
        std::thread::spawn(move || worker(&sh, w, n))
    };
    for w in 0..workers {
        handles.push(spawn(w));
    }
    let mut ledger = Ledger::new();
    let mut next_w = workers;
    let mut i = 0;
    while i < handles.len() {
        if handles[i].is_finished() || next_w >= 2 * workers {
            let h = handles.swap_remove(i);
            for (k, n) in h.join().map_err(|_| "a worker panicked".to_string())? {
                *ledger.entry(k).or_insert(0) += n;
            }
            if next_w < 2 * workers {
                handles.push(spawn(next_w));
                next_w += 1;
            }
            i = 0;
            continue;
        }
        i += 1;
        if i == handles.len() {
            i = 0;
            std::thread::sleep(Duration::from_millis(2));
        }
        if handles.is_empty() {
            break;
        }
    }
    // The spans still open: ended by this thread (no slot).
    let rest: Vec<Arc<Span>> = sh.open.lock().map(|mut v| v.drain(..).collect()).unwrap_or_default();
    for s in &rest {
        sh.end(s);
    }
    let elapsed = t0.elapsed();
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Release);
    let (recs, stream_errors) = reader.join().map_err(|_| "the reader panicked".to_string())?;
    let s1 = Stats::read()?;
    let ended = sh.ended.lock().map(|v| v.clone()).unwrap_or_default();
    let errors = sh.errors.lock().map(|v| v.clone()).unwrap_or_default();
    let calls: u64 = ledger.values().sum();
    fig!(
        "slots: {} workers in two waves x {iters} steps, {} spans ended, {calls} calls in them, {} records, {:.1} s, seed {seed}",
        2 * workers,
        ended.len(),
        recs.len(),
        elapsed.as_secs_f64()
    );
    rep.check(
        "slots: every begin, end and slot ioctl succeeded; the stream decoded",
        if errors.is_empty() && stream_errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{errors:?} {stream_errors:?}"))
        },
    );
    // Expected calls per span, by tid.
    let mut want: HashMap<[u8; 24], HashMap<u32, u64>> = HashMap::new();
    for ((id, tid), n) in &ledger {
        *want.entry(*id).or_default().entry(*tid).or_insert(0) += n;
    }
    rep.check(
        "slots: one record per span ended (or counted dropped), each with exactly the calls made in it, per thread",
        (|| {
            let mut bad = Vec::new();
            let mut seen: HashMap<[u8; 24], u32> = HashMap::new();
            let mut out_of_order = 0u64;
            for r in &recs {
                let mut id = [0u8; 24];
                id[..16].copy_from_slice(&r.h.trace_id);
                id[16..].copy_from_slice(&r.h.span_id);
                *seen.entry(id).or_insert(0) += 1;
                let mut got: HashMap<u32, u64> = HashMap::new();
                for e in &r.entries {
                    if e.nr != NR_GETPID || e.ret != i64::from(pid) {
                        bad.push(format!("a call {} = {} (tid {}) in a span", sys::syscall_name(e.nr), e.ret, e.tid));
                    }
                    *got.entry(e.tid).or_insert(0) += 1;
                }
                out_of_order += r.entries.windows(2).filter(|w| w[1].end_mono_ns < w[0].end_mono_ns).count() as u64;
                let w = want.get(&id).cloned().unwrap_or_default();
                let total: u64 = w.values().sum();
                if got != w || r.h.total_calls != total || u64::from(r.h.n_entries) != total {
                    bad.push(format!(
                        "span {:02x?}: calls by tid {got:?} (total {}, itemised {}), made {w:?}",
                        &id[16..],
                        r.h.total_calls,
                        r.h.n_entries
                    ));
                }
                if r.h.flags & uapi::REC_ACTIVATION == 0 {
                    bad.push(format!("span {:02x?}: flags {:#x} without REC_ACTIVATION", &id[16..], r.h.flags));
                }
            }
            let dropped = s1.delta(&s0, "records_dropped")?;
            let mut missing = 0i128;
            for id in &ended {
                match seen.get(id).copied().unwrap_or(0) {
                    0 => missing += 1,
                    1 => {}
                    n => bad.push(format!("span {:02x?}: {n} records", &id[16..])),
                }
            }
            if missing != dropped || seen.len() + missing as usize != ended.len() {
                bad.push(format!(
                    "{} spans ended, {} reported, {missing} without a record, {dropped} records counted dropped",
                    ended.len(),
                    seen.len()
                ));
            }
            fig!("slots: {dropped} records dropped (buffer full, counted)");
            if seen.len() * 4 < ended.len() {
                bad.push(format!("only {} of {} spans reported: too few records checked", seen.len(), ended.len()));
            }
            fig!("slots: {out_of_order} entries out of end-time order (calls of several threads pushed while a fold ran)");
            if bad.is_empty() {
                Ok(())
            } else {
                Err(format!("{} problems: {}", bad.len(), bad.iter().take(6).cloned().collect::<Vec<_>>().join("; ")))
            }
        })(),
    );
    rep.check(
        "slots: no call unknown, ended during the call or stale; every call attributed",
        s1.expect_deltas(
            &s0,
            &[
                ("calls_unknown_active_span", 0),
                ("calls_span_ended", 0),
                ("calls_stale", 0),
                ("calls_attributed", i128::from(calls)),
            ],
        ),
    );
    let _ = sys::ioctl_plain(control.raw(), uapi::IOCTL_UNREGISTER);
    Ok(())
}
