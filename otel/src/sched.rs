//! The record's scheduler part (`uapi::SchedPart`, ABI 5) → what the slow span carries: the
//! `spantrack.sched.*` attributes (where its wall time went), one `spantrack.wait` event per
//! longest wait (who woke it, from where, and where it blocked: [`crate::stacks`]) and a link
//! to each span that held it up. Pure functions (the stacks' symbols come from a
//! [`Symbolizer`]); the README's export specification, the same in the Python hook
//! (`spantrack_hook/annotate.py`), checked by the golden records (`otel/tests/golden.rs`).

use std::time::SystemTime;

use opentelemetry::trace::{Event, Link, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;
use spantrack_uapi::{self as uapi, RecordHeader, WaitEntry};

use crate::annotate::{format_ns, int, mono_to_real_ns, ns_since_epoch, syscall_name, system_time};
use crate::stacks::{self, Symbolizer};

/// Attribute keys of the scheduler part: on the slow span, on its wait events and links.
pub mod attr {
    /// Running on a CPU.
    pub const ON_CPU_NS: &str = "spantrack.sched.on_cpu_ns";
    /// Runnable, waiting for a CPU: [`RUNQUEUE_WAKEUP_NS`] + [`RUNQUEUE_PREEMPTED_NS`].
    pub const RUNQUEUE_NS: &str = "spantrack.sched.runqueue_ns";
    /// ... after a wake-up.
    pub const RUNQUEUE_WAKEUP_NS: &str = "spantrack.sched.runqueue.wakeup_ns";
    /// ... after a preemption (or a yield).
    pub const RUNQUEUE_PREEMPTED_NS: &str = "spantrack.sched.runqueue.preempted_ns";
    /// Blocked, by cause (`uapi::CAUSE_IO..=CAUSE_OTHER`).
    pub const BLOCKED_NS: [&str; spantrack_uapi::N_CAUSES] = [
        "spantrack.sched.blocked.io_ns",
        "spantrack.sched.blocked.lock_ns",
        "spantrack.sched.blocked.net_ns",
        "spantrack.sched.blocked.timer_ns",
        "spantrack.sched.blocked.other_ns",
    ];
    /// Open but not the active span: the duration minus the parts above (at least 0).
    pub const INACTIVE_NS: &str = "spantrack.sched.inactive_ns";
    /// The largest part's name (one of [`super::PARTS`]).
    pub const DOMINANT: &str = "spantrack.sched.dominant";
    pub const BLOCKS: &str = "spantrack.sched.blocks";
    pub const PREEMPTIONS: &str = "spantrack.sched.preemptions";
    pub const MIGRATIONS: &str = "spantrack.sched.migrations";
    pub const WAKEUPS: &str = "spantrack.sched.wakeups";
    pub const WAKEUP_LATENCY_TOTAL_NS: &str = "spantrack.sched.wakeup_latency.total_ns";
    pub const WAKEUP_LATENCY_MAX_NS: &str = "spantrack.sched.wakeup_latency.max_ns";
    /// `true` when the part covers only some of the span (`uapi::REC_SCHED_PARTIAL`).
    pub const PARTIAL: &str = "spantrack.sched.partial";
    /// Scheduler events that could not be charged (`SchedPart::lost_events`).
    pub const DROPPED_SCHED_EVENTS: &str = "spantrack.dropped.sched_events";

    /// On a wait event: `io`, `lock`, `net`, `timer`, `other` or `preempted`.
    pub const WAIT_CAUSE: &str = "spantrack.wait.cause";
    pub const WAIT_BLOCKED_NS: &str = "spantrack.wait.blocked_ns";
    pub const WAIT_RUNQUEUE_NS: &str = "spantrack.wait.runqueue_ns";
    /// The system call the thread blocked in.
    pub const WAIT_SYSCALL: &str = "spantrack.wait.syscall";
    /// One sentence: [`super::wait_summary`].
    pub const WAIT_SUMMARY: &str = "spantrack.wait.summary";
    /// `task`, `hardirq`, `softirq`, `nmi`, `timer` or `none`.
    pub const WAKER_CONTEXT: &str = "spantrack.waker.context";
    pub const WAKER_SOFTIRQ: &str = "spantrack.waker.softirq";
    pub const WAKER_THREAD_ID: &str = "spantrack.waker.thread.id";
    pub const WAKER_PROCESS_PID: &str = "spantrack.waker.process.pid";
    pub const WAKER_COMMAND: &str = "spantrack.waker.command";
    pub const WAKER_ON_CPU_NS: &str = "spantrack.waker.on_cpu_ns";
    pub const WAKER_SYSCALL: &str = "spantrack.waker.syscall";
    pub const WAKER_KTHREAD: &str = "spantrack.waker.kthread";
    pub const WAKER_TRACE_ID: &str = "spantrack.waker.trace_id";
    pub const WAKER_SPAN_ID: &str = "spantrack.waker.span_id";
    /// On a link: `waker`.
    pub const LINK_KIND: &str = "spantrack.link.kind";
}

/// Name of the wait events.
pub const WAIT_EVENT: &str = "spantrack.wait";

/// The parts of a span's wall time, in the order [`attr::DOMINANT`] breaks ties.
pub const PARTS: [&str; 8] = [
    "on_cpu",
    "runqueue",
    "blocked.io",
    "blocked.lock",
    "blocked.net",
    "blocked.timer",
    "blocked.other",
    "inactive",
];

/// `WaitEntry::cause` names (`CAUSE_IO..=CAUSE_PREEMPTED`).
pub const CAUSES: [&str; 6] = ["io", "lock", "net", "timer", "other", "preempted"];

/// `WaitEntry::softirq` names (the kernel's vectors, `HI_SOFTIRQ` = 0 ...).
pub const SOFTIRQS: [&str; 10] =
    ["HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU"];

/// A blocked wait's summary says how long it then waited for a CPU from this much on.
pub const SUMMARY_RUNQ_MIN_NS: u64 = 1_000_000;

/// Whether the record carries its scheduler part (`REC_SCHED` or `REC_SCHED_PARTIAL`).
pub fn has_sched(h: &RecordHeader) -> bool {
    h.flags & (uapi::REC_SCHED | uapi::REC_SCHED_PARTIAL) != 0
}

/// `table[i]`, or the number for one without a name.
fn name(table: &[&str], i: u8) -> String {
    table.get(usize::from(i)).map_or_else(|| i.to_string(), |s| (*s).to_string())
}

fn cause_name(c: u8) -> String {
    name(&CAUSES, c)
}

fn context_name(c: u8) -> String {
    match c {
        uapi::CTX_TASK => "task".into(),
        uapi::CTX_HARDIRQ => "hardirq".into(),
        uapi::CTX_SOFTIRQ => "softirq".into(),
        uapi::CTX_NMI => "nmi".into(),
        uapi::CTX_TIMER => "timer".into(),
        uapi::CTX_NONE => "none".into(),
        other => other.to_string(),
    }
}

/// A command name: up to the first NUL, invalid UTF-8 replaced (U+FFFD).
pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn hex(b: &[u8]) -> String {
    let digits: Vec<u8> = b.iter().flat_map(|x| [x >> 4, x & 0xf]).map(|d| stacks::HEX_DIGITS[usize::from(d)]).collect();
    String::from_utf8(digits).unwrap_or_default()
}

/// The parts of the span's wall time, in [`PARTS`] order (exact: no part saturates).
pub fn parts(h: &RecordHeader) -> [u128; 8] {
    let p = &h.sched;
    let runq = u128::from(p.runq_wakeup_ns) + u128::from(p.runq_preempt_ns);
    let blocked: u128 = p.blocked_ns.iter().map(|&b| u128::from(b)).sum();
    let duration = i128::from(h.end_mono_ns) - i128::from(h.begin_mono_ns);
    let inactive = (duration - u128::from(p.on_cpu_ns) as i128 - runq as i128 - blocked as i128).max(0) as u128;
    let b = p.blocked_ns.map(u128::from);
    [u128::from(p.on_cpu_ns), runq, b[0], b[1], b[2], b[3], b[4], inactive]
}

fn int128(v: u128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `spantrack.sched.*` attributes (none without the scheduler part).
pub fn attributes(h: &RecordHeader) -> Vec<KeyValue> {
    if !has_sched(h) {
        return Vec::new();
    }
    let p = &h.sched;
    let v = parts(h);
    // The largest part; a tie goes to the first in PARTS order.
    let dominant = (1..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best });
    let mut out = vec![
        KeyValue::new(attr::ON_CPU_NS, int(p.on_cpu_ns)),
        KeyValue::new(attr::RUNQUEUE_NS, int128(v[1])),
        KeyValue::new(attr::RUNQUEUE_WAKEUP_NS, int(p.runq_wakeup_ns)),
        KeyValue::new(attr::RUNQUEUE_PREEMPTED_NS, int(p.runq_preempt_ns)),
    ];
    out.extend(attr::BLOCKED_NS.iter().zip(p.blocked_ns).map(|(k, ns)| KeyValue::new(*k, int(ns))));
    out.extend([
        KeyValue::new(attr::INACTIVE_NS, int128(v[7])),
        KeyValue::new(attr::DOMINANT, PARTS[dominant]),
        KeyValue::new(attr::BLOCKS, i64::from(p.blocks)),
        KeyValue::new(attr::PREEMPTIONS, i64::from(p.preemptions)),
        KeyValue::new(attr::MIGRATIONS, i64::from(p.migrations)),
        KeyValue::new(attr::WAKEUPS, i64::from(p.wakeups)),
        KeyValue::new(attr::WAKEUP_LATENCY_TOTAL_NS, int(p.wakeup_total_ns)),
        KeyValue::new(attr::WAKEUP_LATENCY_MAX_NS, int(p.wakeup_max_ns)),
    ]);
    if h.flags & uapi::REC_SCHED_PARTIAL != 0 {
        out.push(KeyValue::new(attr::PARTIAL, true));
    }
    out.push(KeyValue::new(attr::DROPPED_SCHED_EVENTS, i64::from(p.lost_events)));
    out
}

/// The record's valid waits, longest first (none without the scheduler part).
pub fn waits(h: &RecordHeader) -> &[WaitEntry] {
    if !has_sched(h) {
        return &[];
    }
    let n = usize::try_from(h.sched.n_waits).unwrap_or(usize::MAX).min(uapi::MAX_WAITS);
    &h.sched.waits[..n]
}

/// `thread 131 "refresh" (same process, in futex) after 58.0ms on CPU`.
fn waker_thread(h: &RecordHeader, w: &WaitEntry) -> String {
    let mut place = vec![if w.flags & uapi::WAIT_WAKER_KTHREAD != 0 {
        "kernel thread".to_string()
    } else if w.waker_tgid == h.tgid {
        "same process".to_string()
    } else {
        format!("process {}", w.waker_tgid)
    }];
    if w.waker_nr != uapi::NO_CALL {
        place.push(format!("in {}", syscall_name(w.waker_nr)));
    }
    format!(
        "thread {} \"{}\" ({}) after {} on CPU",
        w.waker_tid,
        comm(&w.waker_comm),
        place.join(", "),
        format_ns(w.waker_on_cpu_ns)
    )
}

/// [`attr::WAIT_SUMMARY`]: one sentence (the README gives its grammar), e.g.
/// `lock 60.0ms in futex; woken by thread 131 "refresh" (same process, in futex) after
/// 58.0ms on CPU`, `timer 50.1ms in clock_nanosleep; woken by a timer`,
/// `preempted; 12.0ms waiting for a CPU`.
pub fn wait_summary(h: &RecordHeader, w: &WaitEntry) -> String {
    if w.cause == uapi::CAUSE_PREEMPTED {
        return format!("preempted; {} waiting for a CPU", format_ns(w.runq_ns));
    }
    let mut s = format!("{} {}", cause_name(w.cause), format_ns(w.blocked_ns));
    if w.nr != uapi::NO_CALL {
        s += &format!(" in {}", syscall_name(w.nr));
    }
    let waker = match w.waker_ctx {
        uapi::CTX_TASK if w.waker_tid != 0 => format!("woken by {}", waker_thread(h, w)),
        uapi::CTX_TASK => "woken by an unknown task".to_string(),
        uapi::CTX_SOFTIRQ => {
            let mut s = format!("woken by softirq {}", name(&SOFTIRQS, w.softirq));
            if w.waker_tid != 0 {
                s += &format!(" in {}", waker_thread(h, w));
            }
            s
        }
        uapi::CTX_HARDIRQ => "woken by a hard interrupt".to_string(),
        uapi::CTX_NMI => "woken by an NMI".to_string(),
        uapi::CTX_TIMER => "woken by a timer".to_string(),
        uapi::CTX_NONE => "wake-up not seen".to_string(),
        other => format!("woken from context {other}"),
    };
    s += "; ";
    s += &waker;
    if w.runq_ns >= SUMMARY_RUNQ_MIN_NS {
        s += &format!("; {} waiting for a CPU", format_ns(w.runq_ns));
    }
    s
}

/// The wait's kernel stack (`kstack[..n_kstack]`) and user stack (`ustack[..n_ustack]`).
pub fn wait_stacks(w: &WaitEntry) -> (&[u64], &[u64]) {
    let nk = usize::from(w.n_kstack).min(uapi::KSTACK_DEPTH);
    let nu = usize::from(w.n_ustack).min(uapi::USTACK_DEPTH);
    (&w.kstack[..nk], &w.ustack[..nu])
}

/// The attributes of one wait event; `sym` names the frames of its stacks.
pub fn wait_attributes(h: &RecordHeader, w: &WaitEntry, sym: &dyn Symbolizer) -> Vec<KeyValue> {
    let tid = if w.tid != 0 { w.tid } else { h.tid };
    let mut a = vec![
        KeyValue::new(attr::WAIT_CAUSE, cause_name(w.cause)),
        KeyValue::new(attr::WAIT_BLOCKED_NS, int(w.blocked_ns)),
        KeyValue::new(attr::WAIT_RUNQUEUE_NS, int(w.runq_ns)),
        KeyValue::new(crate::annotate::attr::THREAD_ID, i64::from(tid)),
    ];
    if w.nr != uapi::NO_CALL {
        a.push(KeyValue::new(attr::WAIT_SYSCALL, syscall_name(w.nr)));
    }
    a.push(KeyValue::new(attr::WAKER_CONTEXT, context_name(w.waker_ctx)));
    if w.softirq != uapi::SOFTIRQ_NONE {
        a.push(KeyValue::new(attr::WAKER_SOFTIRQ, name(&SOFTIRQS, w.softirq)));
    }
    if w.waker_tid != 0 {
        a.extend([
            KeyValue::new(attr::WAKER_THREAD_ID, i64::from(w.waker_tid)),
            KeyValue::new(attr::WAKER_PROCESS_PID, i64::from(w.waker_tgid)),
            KeyValue::new(attr::WAKER_COMMAND, comm(&w.waker_comm)),
            KeyValue::new(attr::WAKER_ON_CPU_NS, int(w.waker_on_cpu_ns)),
        ]);
    }
    if w.waker_nr != uapi::NO_CALL {
        a.push(KeyValue::new(attr::WAKER_SYSCALL, syscall_name(w.waker_nr)));
    }
    if w.flags & uapi::WAIT_WAKER_KTHREAD != 0 {
        a.push(KeyValue::new(attr::WAKER_KTHREAD, true));
    }
    if w.flags & uapi::WAIT_WAKER_IN_SPAN != 0 {
        a.push(KeyValue::new(attr::WAKER_TRACE_ID, hex(&w.waker_trace_id)));
        a.push(KeyValue::new(attr::WAKER_SPAN_ID, hex(&w.waker_span_id)));
    }
    a.push(KeyValue::new(attr::WAIT_SUMMARY, wait_summary(h, w)));
    let (kstack, ustack) = wait_stacks(w);
    if !kstack.is_empty() {
        let frames = sym.kernel_stack(kstack);
        if !frames.is_empty() {
            a.push(KeyValue::new(stacks::attr::KERNEL_STACK, stacks::string_array(frames)));
        }
    }
    if !ustack.is_empty() {
        a.push(KeyValue::new(stacks::attr::USER_STACK, stacks::string_array(sym.user_stack(ustack))));
    }
    a
}

/// One [`WAIT_EVENT`] per valid wait, in record order (longest first), at the wait's start
/// in wall-clock time, clamped into the span as the child spans are; `sym` names the frames
/// of their stacks.
pub fn events(span: &SpanData, h: &RecordHeader, sym: &dyn Symbolizer) -> Vec<Event> {
    let lo = ns_since_epoch(span.start_time);
    let hi = ns_since_epoch(span.end_time).max(lo);
    waits(h)
        .iter()
        .map(|w| {
            let t: SystemTime = system_time(mono_to_real_ns(h, w.start_mono_ns).clamp(lo, hi));
            Event::new(WAIT_EVENT, t, wait_attributes(h, w, sym), 0)
        })
        .collect()
}

/// One link per distinct span whose thread woke the span (`WAIT_WAKER_IN_SPAN`), with the
/// first (longest) wait's figures; none to the span itself or to an all-zero id. The link
/// is remote when the waker was in another process.
pub fn links(span: &SpanData, h: &RecordHeader) -> Vec<Link> {
    let own = (span.span_context.trace_id(), span.span_context.span_id());
    let mut seen = vec![own];
    let mut out = Vec::new();
    for w in waits(h) {
        let key = (TraceId::from_bytes(w.waker_trace_id), SpanId::from_bytes(w.waker_span_id));
        if w.flags & uapi::WAIT_WAKER_IN_SPAN == 0
            || seen.contains(&key)
            || key.0 == TraceId::INVALID
            || key.1 == SpanId::INVALID
        {
            continue;
        }
        seen.push(key);
        let cx = SpanContext::new(key.0, key.1, TraceFlags::SAMPLED, w.waker_tgid != h.tgid, TraceState::default());
        let attributes = vec![
            KeyValue::new(attr::LINK_KIND, "waker"),
            KeyValue::new(attr::WAIT_BLOCKED_NS, int(w.blocked_ns)),
        ];
        out.push(Link::new(cx, attributes, 0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotate::tests::{header, span_data, T0_MONO};

    fn waiting(cause: u8, blocked_ns: u64, runq_ns: u64) -> WaitEntry {
        WaitEntry {
            start_mono_ns: T0_MONO + 1_000_000,
            blocked_ns,
            runq_ns,
            tid: 4242,
            nr: 202,
            waker_nr: uapi::NO_CALL,
            cause,
            waker_ctx: uapi::CTX_NONE,
            softirq: uapi::SOFTIRQ_NONE,
            ..WaitEntry::default()
        }
    }

    fn sched_header(flags: u32, waits: &[WaitEntry]) -> RecordHeader {
        let mut h = header(0);
        h.flags = flags;
        h.sched.n_waits = waits.len() as u32;
        h.sched.waits[..waits.len()].copy_from_slice(waits);
        h
    }

    fn get<'a>(kvs: &'a [KeyValue], k: &str) -> Option<&'a opentelemetry::Value> {
        kvs.iter().find(|kv| kv.key.as_str() == k).map(|kv| &kv.value)
    }

    #[test]
    fn nothing_without_the_flag() {
        let mut h = sched_header(0, &[waiting(uapi::CAUSE_LOCK, 5, 0)]);
        h.sched.on_cpu_ns = 7;
        assert!(attributes(&h).is_empty());
        let sym = crate::stacks::Symbols::default();
        assert!(events(&span_data(0, 20_000), &h, &sym).is_empty());
        h.flags = uapi::REC_SCHED_PARTIAL;
        assert_eq!(get(&attributes(&h), attr::PARTIAL), Some(&true.into()));
        assert_eq!(events(&span_data(0, 20_000), &h, &sym).len(), 1);
        h.flags = uapi::REC_SCHED;
        assert_eq!(get(&attributes(&h), attr::PARTIAL), None);
    }

    #[test]
    fn parts_add_up_to_the_duration_and_never_overflow() {
        let mut h = sched_header(uapi::REC_SCHED, &[]);
        h.sched.on_cpu_ns = 5_000_000;
        h.sched.runq_preempt_ns = 1_000_000;
        h.sched.blocked_ns[usize::from(uapi::CAUSE_NET)] = 4_000_000;
        let v = parts(&h);
        assert_eq!(v.iter().sum::<u128>(), 20_000_000);
        assert_eq!(v[7], 10_000_000);
        assert_eq!(get(&attributes(&h), attr::DOMINANT), Some(&"inactive".into()));
        // Saturated kernel figures: exact sums, clamped exports, inactive 0.
        h.sched.runq_wakeup_ns = u64::MAX;
        h.sched.runq_preempt_ns = u64::MAX;
        let a = attributes(&h);
        assert_eq!(get(&a, attr::RUNQUEUE_NS), Some(&i64::MAX.into()));
        assert_eq!(get(&a, attr::INACTIVE_NS), Some(&0i64.into()));
        assert_eq!(get(&a, attr::DOMINANT), Some(&"runqueue".into()));
        // A tie goes to the first part in order.
        let mut h = sched_header(uapi::REC_SCHED, &[]);
        h.sched.blocked_ns = [10_000_000, 10_000_000, 0, 0, 0];
        assert_eq!(get(&attributes(&h), attr::DOMINANT), Some(&"blocked.io".into()));
    }

    #[test]
    fn summaries() {
        let h = header(0);
        let mut w = waiting(uapi::CAUSE_LOCK, 60_000_000, 200_000);
        w.waker_ctx = uapi::CTX_TASK;
        w.waker_tid = 131;
        w.waker_tgid = h.tgid;
        w.waker_nr = 202;
        w.waker_on_cpu_ns = 58_000_000;
        w.waker_comm[..7].copy_from_slice(b"refresh");
        assert_eq!(
            wait_summary(&h, &w),
            "lock 60.0ms in futex; woken by thread 131 \"refresh\" (same process, in futex) after 58.0ms on CPU"
        );
        let mut t = waiting(uapi::CAUSE_TIMER, 50_100_000, 999_999);
        t.nr = 230;
        t.waker_ctx = uapi::CTX_TIMER;
        assert_eq!(wait_summary(&h, &t), "timer 50.1ms in clock_nanosleep; woken by a timer");
        t.runq_ns = 1_000_000;
        assert_eq!(wait_summary(&h, &t), "timer 50.1ms in clock_nanosleep; woken by a timer; 1.0ms waiting for a CPU");
        let p = waiting(uapi::CAUSE_PREEMPTED, 0, 12_000_000);
        assert_eq!(wait_summary(&h, &p), "preempted; 12.0ms waiting for a CPU");
        let mut n = waiting(uapi::CAUSE_NET, 3_000, 0);
        n.nr = uapi::NO_CALL;
        n.waker_ctx = uapi::CTX_NMI;
        assert_eq!(wait_summary(&h, &n), "net 3.0us; woken by an NMI");
    }

    #[test]
    fn command_names() {
        assert_eq!(comm(b"refresh\0\0\0\0\0\0\0\0\0"), "refresh");
        assert_eq!(comm(b"0123456789abcdef"), "0123456789abcdef");
        assert_eq!(comm(b"a\xffb\xc3\xa9-\xe2\x82\0zz"), "a\u{fffd}b\u{e9}-\u{fffd}");
    }

    #[test]
    fn links_are_distinct_and_never_to_the_span_itself() {
        let span = span_data(0, 20_000);
        let own = (span.span_context.trace_id().to_bytes(), span.span_context.span_id().to_bytes());
        let by = |t: [u8; 16], s: [u8; 8], blocked: u64| WaitEntry {
            flags: uapi::WAIT_WAKER_IN_SPAN,
            waker_trace_id: t,
            waker_span_id: s,
            ..waiting(uapi::CAUSE_LOCK, blocked, 0)
        };
        let h = sched_header(
            uapi::REC_SCHED,
            &[by([1; 16], [2; 8], 9), by(own.0, own.1, 8), by([1; 16], [2; 8], 7), by([1; 16], [0; 8], 6)],
        );
        let l = links(&span, &h);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].span_context.span_id(), SpanId::from_bytes([2; 8]));
        assert!(l[0].span_context.is_remote(), "waker_tgid 0 is another process");
        assert_eq!(get(&l[0].attributes, attr::WAIT_BLOCKED_NS), Some(&9i64.into()));
        // No links without the flag.
        let mut h = h;
        h.flags = 0;
        assert!(links(&span, &h).is_empty());
    }
}
