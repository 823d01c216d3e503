//! Assertion helpers: `ensure!`/`ensure_eq!` return `Err(reason)` from a case, and the
//! record checks shared by the cases.

use crate::relay::Record;
use crate::span::{Key, Run};
use crate::sys;

/// `ensure!(cond, "reason {}", x)`: returns `Err(reason)` from the enclosing function.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// `ensure_eq!(got, expected, "what")`.
macro_rules! ensure_eq {
    ($got:expr, $want:expr, $($what:tt)+) => {{
        let (g, w) = (&$got, &$want);
        if g != w {
            return Err(format!("{}: got {:?}, expected {:?}", format!($($what)+), g, w));
        }
    }};
}

pub(crate) use {ensure, ensure_eq};

/// What a record must say. `calls`: the itemised entries in order, as (nr, ret) with
/// `None` for "any non-negative value".
pub struct Expect<'a> {
    pub key: &'a Key,
    pub tid: u32,
    pub tgid: u32,
    pub depth: u32,
    pub flags: u32,
    pub calls: &'a [(u32, Option<i64>)],
    pub total_calls: u64,
    /// The user-side clocks around the span, when the run was `Begin .. End` on one thread.
    pub run: Option<&'a Run>,
}

/// Checks every field of `rec` against `e` and the invariants every record satisfies.
pub fn check_record(rec: &Record, e: &Expect<'_>) -> Result<(), String> {
    check_record_inner(rec, e).map_err(|m| format!("span {}: {m}; {}", e.key.short(), rec.describe()))
}

fn check_record_inner(rec: &Record, e: &Expect<'_>) -> Result<(), String> {
    let h = &rec.h;
    ensure!(rec.is(e.key), "ids differ");
    ensure_eq!(h.tid, e.tid, "tid");
    ensure_eq!(h.tgid, e.tgid, "tgid");
    ensure_eq!(u32::from(h.depth), e.depth, "depth");
    // Without an active-span slot only the span's own thread is charged.
    ensure_eq!(h.n_threads, u16::from(h.total_calls > 0), "n_threads");
    ensure_eq!(h.flags, e.flags, "flags");
    ensure_eq!(h.n_entries as usize, e.calls.len(), "n_entries");
    ensure_eq!(rec.entries.len(), e.calls.len(), "decoded entries");
    for (i, (ent, &(nr, ret))) in rec.entries.iter().zip(e.calls).enumerate() {
        ensure!(
            ent.nr == nr,
            "entry {i} is {} (nr {}), expected {}",
            sys::syscall_name(ent.nr),
            ent.nr,
            sys::syscall_name(nr)
        );
        match ret {
            Some(r) => ensure_eq!(ent.ret, r, "entry {i} ({}) ret", sys::syscall_name(nr)),
            None => ensure!(
                ent.ret >= 0,
                "entry {i} ({}) ret {} < 0",
                sys::syscall_name(nr),
                ent.ret
            ),
        }
        ensure_eq!(ent.tid, h.tid, "entry {i} tid");
    }
    ensure_eq!(h.total_calls, e.total_calls, "total_calls");
    ensure_eq!(
        h.total_calls,
        u64::from(h.n_entries) + h.unitemised_calls,
        "total_calls vs n_entries + unitemised_calls"
    );
    ensure!(h.begin_mono_ns <= h.end_mono_ns, "begin_mono after end_mono");
    // Entries: well-formed, inside the span, in the order they ran.
    let mut prev_end = h.begin_mono_ns;
    let mut sum: u128 = 0;
    for (i, ent) in rec.entries.iter().enumerate() {
        ensure!(ent.start_mono_ns <= ent.end_mono_ns, "entry {i} ends before it starts");
        ensure!(
            ent.start_mono_ns >= prev_end,
            "entry {i} starts at {} before the previous one ended / the span began ({prev_end})",
            ent.start_mono_ns
        );
        ensure!(
            ent.end_mono_ns <= h.end_mono_ns,
            "entry {i} ends after the span ({} > {})",
            ent.end_mono_ns,
            h.end_mono_ns
        );
        prev_end = ent.end_mono_ns;
        sum += u128::from(ent.end_mono_ns - ent.start_mono_ns);
    }
    if h.unitemised_calls == 0 {
        ensure_eq!(h.unitemised_ns, 0, "unitemised_ns with no unitemised calls");
    }
    ensure_eq!(
        u128::from(h.total_call_ns),
        sum + u128::from(h.unitemised_ns),
        "total_call_ns vs sum of itemised call times + unitemised_ns"
    );
    ensure!(
        u128::from(h.total_call_ns) <= u128::from(h.end_mono_ns - h.begin_mono_ns),
        "total_call_ns {} longer than the span",
        h.total_call_ns
    );
    ensure_eq!(h.records_dropped_before, 0, "records_dropped_before");
    // Realtime stamps taken with the monotonic ones: a constant offset.
    let off_begin = i128::from(h.begin_real_ns) - i128::from(h.begin_mono_ns);
    let off_end = i128::from(h.end_real_ns) - i128::from(h.end_mono_ns);
    ensure!(
        (off_end - off_begin).abs() <= 1_000_000,
        "realtime-monotonic offset moved by {} ns between begin and end",
        off_end - off_begin
    );
    if let Some(run) = e.run {
        ensure!(
            run.t0_mono <= h.begin_mono_ns && h.end_mono_ns <= run.t1_mono,
            "span [{}, {}] not within the caller's clock readings [{}, {}]",
            h.begin_mono_ns,
            h.end_mono_ns,
            run.t0_mono,
            run.t1_mono
        );
        // Same realtime clock as the caller's (1 ms slack for an adjustment in between).
        ensure!(
            i128::from(h.begin_real_ns) >= i128::from(run.t0_real) - 1_000_000
                && i128::from(h.end_real_ns) <= i128::from(run.t1_real) + 1_000_000,
            "realtime span [{}, {}] not within the caller's readings [{}, {}]",
            h.begin_real_ns,
            h.end_real_ns,
            run.t0_real,
            run.t1_real
        );
        let off_user = i128::from(run.t0_real) - i128::from(run.t0_mono);
        ensure!(
            (off_begin - off_user).abs() <= 10_000_000,
            "realtime-monotonic offset {off_begin} differs from the caller's {off_user} by more than 10 ms"
        );
    }
    Ok(())
}

/// The itemised entry `i` lasted at least `ns`.
pub fn entry_at_least(rec: &Record, i: usize, ns: u64) -> Result<(), String> {
    let e = rec
        .entries
        .get(i)
        .ok_or_else(|| format!("no entry {i}; {}", rec.describe()))?;
    let d = e.end_mono_ns.saturating_sub(e.start_mono_ns);
    ensure!(d >= ns, "entry {i} lasted {d} ns, expected >= {ns}; {}", rec.describe());
    Ok(())
}
