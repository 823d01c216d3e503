//! A slow span plus the kernel's record of it → the annotated span and one child span per
//! itemised system call; the record's scheduler part adds attributes, wait events and waker
//! links ([`crate::sched`]). Pure functions: host-tested with hand-encoded records.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use spantrack_uapi::{self as uapi, RecordHeader, SyscallEntry};

use crate::stacks::{self, Symbolizer};
use crate::{errno, sched};

/// Attribute keys written on the slow span.
pub mod attr {
    /// All system calls attributed to the span (itemised or not).
    pub const SYSCALLS_COUNT: &str = "spantrack.syscalls.count";
    /// Nanoseconds spent in them.
    pub const SYSCALLS_DURATION_NS: &str = "spantrack.syscalls.duration_ns";
    /// Calls the kernel itemised (each has a child span unless [`SYSCALLS_SUMMARISED`]).
    pub const SYSCALLS_ITEMISED: &str = "spantrack.syscalls.itemised";
    /// With a minimum child duration configured: itemised calls shorter than it, left
    /// without a child span (still in the count, duration and top attributes).
    pub const SYSCALLS_SUMMARISED: &str = "spantrack.syscalls.summarised";
    /// The calls that took most time: `"fsync:12.3ms(1), write:200.0us(4)"`.
    pub const SYSCALLS_TOP: &str = "spantrack.syscalls.top";
    /// Calls counted but not itemised (per-span limit or entry pool).
    pub const DROPPED_UNITEMISED_CALLS: &str = "spantrack.dropped.unitemised_calls";
    /// Their nanoseconds.
    pub const DROPPED_UNITEMISED_NS: &str = "spantrack.dropped.unitemised_ns";
    /// Why calls were not itemised, when some were not: `max_calls` (the per-span limit),
    /// `entry_pool` (the module's entry pool was empty) or `max_calls,entry_pool`.
    pub const DROPPED_REASON: &str = "spantrack.dropped.reason";
    /// Records of the process the kernel dropped (relay full) before this one.
    pub const DROPPED_RECORDS_BEFORE: &str = "spantrack.dropped.records_before";
    /// The span was ended from another thread than the one that began it (set only then).
    pub const ENDED_ELSEWHERE: &str = "spantrack.ended_elsewhere";
    /// On the span: the thread that began it; on a child: the thread that made the call.
    pub const THREAD_ID: &str = "thread.id";
    /// Threads whose calls were charged to the span, when more than one (an async task
    /// that moved between workers, work handed to a pool thread). A value of
    /// `uapi::MAX_SPAN_THREADS` may mean more.
    pub const THREADS: &str = "spantrack.threads";
    /// On a child: the x86_64 system call number.
    pub const SYSCALL_NR: &str = "spantrack.syscall.nr";
    /// On a child: its return value.
    pub const SYSCALL_RET: &str = "spantrack.syscall.ret";
    /// On a failed child: the errno name.
    pub const ERROR_TYPE: &str = "error.type";
    /// On a slow span exported without its system calls: why (one of [`super::missing`]).
    pub const ANNOTATION_MISSING: &str = "spantrack.annotation.missing";
}

/// Values of [`attr::ANNOTATION_MISSING`] (the same in the Python hook).
pub mod missing {
    /// The worker's queue was full when the span ended.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The kernel's record did not come within the record wait.
    pub const NO_RECORD: &str = "no_record";
    /// A shutdown or force_flush ran out of time before the span's turn.
    pub const SHUTDOWN: &str = "shutdown";
    /// Past the annotation budget: the summary attributes only, no child spans.
    pub const OVER_BUDGET: &str = "over_budget";
    /// The annotator failed (unusable record, library error, no worker thread).
    pub const WORKER_ERROR: &str = "worker_error";
    /// The kernel did not track the span (module unloaded, begin refused).
    pub const INACTIVE: &str = "inactive";
    /// All of them.
    pub const ALL: [&str; 6] = [QUEUE_FULL, NO_RECORD, SHUTDOWN, OVER_BUDGET, WORKER_ERROR, INACTIVE];
}

/// Says on the span why it has no system calls.
pub fn mark(span: &mut SpanData, why: &'static str) {
    span.attributes.push(KeyValue::new(attr::ANNOTATION_MISSING, why));
}

/// How many entries [`attr::SYSCALLS_TOP`] lists.
pub const TOP_N: usize = 5;

/// A decoded record.
#[derive(Clone, Debug)]
pub struct Record {
    pub header: RecordHeader,
    pub entries: Vec<SyscallEntry>,
}

/// Why a record could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadRecord {
    Decode(uapi::DecodeError),
    /// The record is of another span.
    OtherSpan,
}

impl Record {
    /// Decodes raw record bytes (as `spanhook_take_record` returns them).
    pub fn decode(bytes: &[u8]) -> Result<Record, BadRecord> {
        let (header, entries, _) = uapi::decode_record(bytes).map_err(BadRecord::Decode)?;
        Ok(Record {
            header,
            entries: entries.collect(),
        })
    }
}

/// Name of system call `nr`: the kernel's table, else `syscall_<nr>`.
pub fn syscall_name(nr: u32) -> Cow<'static, str> {
    match spantrack_logic::syscalls::syscall_name(nr) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(format!("syscall_{nr}")),
    }
}

/// CLOCK_MONOTONIC `mono` → CLOCK_REALTIME ns, through the record's begin pair (read at
/// the same instant).
pub fn mono_to_real_ns(h: &RecordHeader, mono: u64) -> i128 {
    i128::from(h.begin_real_ns) + (i128::from(mono) - i128::from(h.begin_mono_ns))
}

pub(crate) fn system_time(ns: i128) -> SystemTime {
    let ns = ns.clamp(0, i128::from(u64::MAX)) as u64;
    UNIX_EPOCH + Duration::from_nanos(ns)
}

pub(crate) fn ns_since_epoch(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Wall-clock interval of a call, clamped inside `[lo, hi]` and with `start <= end`.
pub fn call_interval(
    h: &RecordHeader,
    e: &SyscallEntry,
    lo: SystemTime,
    hi: SystemTime,
) -> (SystemTime, SystemTime) {
    call_interval_ns(h, e, ns_since_epoch(lo), ns_since_epoch(hi))
}

/// [`call_interval`] with the bounds in ns since the epoch (converted once per span).
fn call_interval_ns(h: &RecordHeader, e: &SyscallEntry, lo: i128, hi: i128) -> (SystemTime, SystemTime) {
    let hi = hi.max(lo);
    let start = mono_to_real_ns(h, e.start_mono_ns).clamp(lo, hi);
    let end = mono_to_real_ns(h, e.end_mono_ns).clamp(start, hi);
    (system_time(start), system_time(end))
}

/// `789ns`, `45.6us`, `12.3ms`, `1.23s`: the unit by the exact value, then rounded half up
/// in integers (the README's spec; the Python hook's `fmt_ns` is the same).
pub fn format_ns(ns: u64) -> String {
    let mut s = String::with_capacity(12);
    push_ns(&mut s, ns);
    s
}

/// Appends [`format_ns`]`(ns)` to `out`.
pub fn push_ns(out: &mut String, ns: u64) {
    use std::fmt::Write;
    let ns = u128::from(ns);
    // Writing to a String cannot fail.
    let _ = if ns < 1_000 {
        write!(out, "{ns}ns")
    } else if ns < 1_000_000 {
        let t = (ns + 50) / 100;
        write!(out, "{}.{}us", t / 10, t % 10)
    } else if ns < 1_000_000_000 {
        let t = (ns + 50_000) / 100_000;
        write!(out, "{}.{}ms", t / 10, t % 10)
    } else {
        let h = (ns + 5_000_000) / 10_000_000;
        write!(out, "{}.{:02}s", h / 100, h % 100)
    };
}

/// [`attr::DROPPED_REASON`] of a record's flags, `None` when every call was itemised.
pub fn dropped_reason(flags: u32) -> Option<&'static str> {
    match (flags & uapi::REC_CALLS_TRUNCATED != 0, flags & uapi::REC_POOL_EXHAUSTED != 0) {
        (true, true) => Some("max_calls,entry_pool"),
        (true, false) => Some("max_calls"),
        (false, true) => Some("entry_pool"),
        (false, false) => None,
    }
}

/// The calls that took most time, by name: `"fsync:12.3ms(1), write:200.0us(4)"`.
pub fn top_calls(entries: &[SyscallEntry], n: usize) -> String {
    use std::fmt::Write;
    // (nr, ns) sorted by call, then summed per call: no hashing, one allocation.
    let mut calls: Vec<(u32, u64, u64)> =
        entries.iter().map(|e| (e.nr, e.end_mono_ns.saturating_sub(e.start_mono_ns), 1)).collect();
    calls.sort_unstable_by_key(|c| c.0);
    calls.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            kept.1 = kept.1.saturating_add(next.1);
            kept.2 += 1;
        }
        same
    });
    calls.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
    let mut out = String::with_capacity(24 * n.min(calls.len()));
    for (i, (nr, ns, c)) in calls.iter().take(n).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&syscall_name(*nr));
        out.push(':');
        push_ns(&mut out, *ns);
        let _ = write!(out, "({c})");
    }
    out
}

/// Attributes a slow span gains in the worker at most (why it was slow, the record's
/// summary and scheduler part): reserved at once, so that its vector grows only once.
pub const SLOW_SPAN_ATTRS: usize = 40;

/// An exported int: values above `i64::MAX` (never in practice) are clamped.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds the record's attributes, wait events and waker links to the slow span and returns
/// one child per itemised call (in the order the calls ended). `new_span_id` gives the
/// children's ids. A record of another span leaves `span` untouched.
pub fn annotate(
    span: &mut SpanData,
    record: &Record,
    new_span_id: &mut dyn FnMut() -> SpanId,
) -> Result<Vec<SpanData>, BadRecord> {
    annotate_with(span, record, new_span_id, 0)
}

/// [`annotate`], with child spans only for the calls that lasted at least `min_child_ns`
/// (0: every call); the others are counted in [`attr::SYSCALLS_SUMMARISED`]. The waits'
/// stacks are named with this process's symbols ([`stacks::host`]).
pub fn annotate_with(
    span: &mut SpanData,
    record: &Record,
    new_span_id: &mut dyn FnMut() -> SpanId,
    min_child_ns: u64,
) -> Result<Vec<SpanData>, BadRecord> {
    annotate_with_symbols(span, record, new_span_id, min_child_ns, stacks::host())
}

/// [`annotate_with`], the waits' stacks named by `sym` (tests and golden records: fixed
/// symbol sources).
pub fn annotate_with_symbols(
    span: &mut SpanData,
    record: &Record,
    new_span_id: &mut dyn FnMut() -> SpanId,
    min_child_ns: u64,
    sym: &dyn Symbolizer,
) -> Result<Vec<SpanData>, BadRecord> {
    summarise(span, record, min_child_ns)?;
    let events = sched::events(span, &record.header, sym);
    span.events.events.extend(events);
    let links = sched::links(span, &record.header);
    span.links.links.extend(links);
    Ok(children(span, record, new_span_id, min_child_ns))
}

/// Adds the record's summary attributes (count, duration, top calls, ..., the scheduler
/// part's `spantrack.sched.*`) to the slow span, without child spans, wait events or links.
/// A record of another span leaves `span` untouched.
pub fn summarise(span: &mut SpanData, record: &Record, min_child_ns: u64) -> Result<(), BadRecord> {
    let h = &record.header;
    let sc = &span.span_context;
    if h.trace_id != sc.trace_id().to_bytes() || h.span_id != sc.span_id().to_bytes() {
        return Err(BadRecord::OtherSpan);
    }
    span.attributes.extend([
        KeyValue::new(attr::SYSCALLS_COUNT, int(h.total_calls)),
        KeyValue::new(attr::SYSCALLS_DURATION_NS, int(h.total_call_ns)),
        KeyValue::new(attr::SYSCALLS_ITEMISED, i64::from(h.n_entries)),
        KeyValue::new(attr::SYSCALLS_TOP, top_calls(&record.entries, TOP_N)),
        KeyValue::new(attr::DROPPED_UNITEMISED_CALLS, int(h.unitemised_calls)),
        KeyValue::new(attr::DROPPED_UNITEMISED_NS, int(h.unitemised_ns)),
        KeyValue::new(attr::DROPPED_RECORDS_BEFORE, int(h.records_dropped_before)),
        KeyValue::new(attr::THREAD_ID, i64::from(h.tid)),
    ]);
    if let Some(why) = dropped_reason(h.flags) {
        span.attributes.push(KeyValue::new(attr::DROPPED_REASON, why));
    }
    // Only when true (as the Python hook): every attribute costs the exporter ~1k instructions.
    if h.flags & uapi::REC_ENDED_ELSEWHERE != 0 {
        span.attributes.push(KeyValue::new(attr::ENDED_ELSEWHERE, true));
    }
    if h.n_threads > 1 {
        span.attributes.push(KeyValue::new(attr::THREADS, i64::from(h.n_threads)));
    }
    if min_child_ns > 0 {
        let short = record
            .entries
            .iter()
            .filter(|e| e.end_mono_ns.saturating_sub(e.start_mono_ns) < min_child_ns)
            .count();
        span.attributes.push(KeyValue::new(attr::SYSCALLS_SUMMARISED, int(short as u64)));
    }
    span.attributes.extend(sched::attributes(h));
    Ok(())
}

/// One child span per itemised call of at least `min_child_ns` (in the order the calls
/// ended).
fn children(
    span: &SpanData,
    record: &Record,
    new_span_id: &mut dyn FnMut() -> SpanId,
    min_child_ns: u64,
) -> Vec<SpanData> {
    let h = &record.header;
    let (lo, hi) = (ns_since_epoch(span.start_time), ns_since_epoch(span.end_time));
    let long_enough = |e: &&SyscallEntry| e.end_mono_ns.saturating_sub(e.start_mono_ns) >= min_child_ns;
    record
        .entries
        .iter()
        .filter(long_enough)
        .map(|e| {
            let (start_time, end_time) = call_interval_ns(h, e, lo, hi);
            let tid = if e.tid != 0 { e.tid } else { h.tid };
            let mut attributes = vec![
                KeyValue::new(attr::SYSCALL_NR, i64::from(e.nr)),
                KeyValue::new(attr::SYSCALL_RET, e.ret),
                KeyValue::new(attr::THREAD_ID, i64::from(tid)),
            ];
            let mut status = Status::Unset;
            if errno::is_error_return(e.ret) {
                let t = errno::error_type(e.ret);
                attributes.push(KeyValue::new(attr::ERROR_TYPE, t.clone()));
                status = Status::error(t);
            }
            let mut id = new_span_id();
            while id == SpanId::INVALID {
                id = new_span_id();
            }
            SpanData {
                span_context: SpanContext::new(
                    span.span_context.trace_id(),
                    id,
                    span.span_context.trace_flags(),
                    false,
                    span.span_context.trace_state().clone(),
                ),
                parent_span_id: span.span_context.span_id(),
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: syscall_name(e.nr),
                start_time,
                end_time,
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status,
                instrumentation_scope: span.instrumentation_scope.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry::trace::{TraceFlags, TraceId, TraceState};
    use opentelemetry::{InstrumentationScope, Value};

    pub const T0_REAL: u64 = 1_700_000_000_000_000_000;
    pub const T0_MONO: u64 = 5_000_000_000;

    /// Raw bytes of a record, encoded by hand from the uapi types (little-endian layout).
    pub fn encode(h: &RecordHeader, entries: &[SyscallEntry]) -> Vec<u8> {
        use spantrack_logic::record::{encode_entry, encode_header};
        let total = uapi::RECORD_HEADER_SIZE + entries.len() * uapi::SYSCALL_ENTRY_SIZE;
        let mut b = vec![0u8; total];
        let h = RecordHeader {
            total_size: total as u32,
            n_entries: entries.len() as u32,
            ..*h
        };
        assert!(encode_header(&h, &mut b));
        for (i, e) in entries.iter().enumerate() {
            assert!(encode_entry(e, &mut b[uapi::RECORD_HEADER_SIZE + i * uapi::SYSCALL_ENTRY_SIZE..]));
        }
        b
    }

    pub fn entry(nr: u32, ret: i64, start_us: u64, end_us: u64) -> SyscallEntry {
        SyscallEntry {
            nr,
            tid: 4242,
            ret,
            start_mono_ns: T0_MONO + start_us * 1000,
            end_mono_ns: T0_MONO + end_us * 1000,
        }
    }

    pub fn ids() -> ([u8; 16], [u8; 8]) {
        (
            [0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c],
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31],
        )
    }

    /// A span of `dur_us` whose SDK start is `lead_us` before the kernel's begin.
    pub fn span_data(lead_us: u64, dur_us: u64) -> SpanData {
        let (t, s) = ids();
        let start = UNIX_EPOCH + Duration::from_nanos(T0_REAL - lead_us * 1000);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(t),
                SpanId::from_bytes(s),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes([9; 8]),
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: "GET /convert".into(),
            start_time: start,
            end_time: start + Duration::from_micros(dur_us),
            attributes: vec![KeyValue::new("http.route", "/convert")],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    pub fn header(n_entries: u32) -> RecordHeader {
        let (t, s) = ids();
        RecordHeader {
            magic: uapi::RECORD_MAGIC,
            version: uapi::ABI_VERSION as u16,
            header_size: uapi::RECORD_HEADER_SIZE as u16,
            total_size: (uapi::RECORD_HEADER_SIZE + n_entries as usize * uapi::SYSCALL_ENTRY_SIZE) as u32,
            n_entries,
            trace_id: t,
            span_id: s,
            tid: 4242,
            tgid: 4200,
            begin_mono_ns: T0_MONO,
            end_mono_ns: T0_MONO + 20_000_000,
            begin_real_ns: T0_REAL,
            end_real_ns: T0_REAL + 20_000_000,
            depth: 0,
            n_threads: 1,
            flags: 0,
            total_calls: 0,
            total_call_ns: 0,
            unitemised_calls: 0,
            unitemised_ns: 0,
            records_dropped_before: 0,
            sched: uapi::SchedPart::default(),
        }
    }

    fn attr<'a>(s: &'a SpanData, k: &str) -> Option<&'a Value> {
        s.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| &kv.value)
    }

    fn counter_ids() -> impl FnMut() -> SpanId {
        let mut n = 0u64;
        move || {
            n += 1;
            SpanId::from_bytes(n.to_be_bytes())
        }
    }

    #[test]
    fn min_child_duration_keeps_only_long_calls_as_children() {
        let entries = [
            entry(1, 4096, 100, 300),        // write 200 us
            entry(74, 0, 400, 12_400),       // fsync 12 ms
            entry(202, -11, 13_000, 14_000), // futex 1 ms exactly: kept (inclusive)
            entry(39, 7, 14_100, 14_101),    // getpid 1 us
        ];
        let h = header(entries.len() as u32);
        let rec = Record::decode(&encode(&h, &entries)).unwrap();
        let mut p = span_data(0, 20_000);
        let kids = annotate_with(&mut p, &rec, &mut counter_ids(), 1_000_000).unwrap();
        let names: Vec<_> = kids.iter().map(|k| k.name.to_string()).collect();
        assert_eq!(names, ["fsync", "futex"]);
        assert_eq!(attr(&p, attr::SYSCALLS_ITEMISED), Some(&Value::I64(4)));
        assert_eq!(attr(&p, attr::SYSCALLS_SUMMARISED), Some(&Value::I64(2)));
        assert!(attr(&p, attr::SYSCALLS_TOP).is_some_and(|v| v.as_str().contains("write:200.0us(1)")));
        // Without the option: every call, and no summarised attribute.
        let mut q = span_data(0, 20_000);
        assert_eq!(annotate(&mut q, &rec, &mut counter_ids()).unwrap().len(), 4);
        assert_eq!(attr(&q, attr::SYSCALLS_SUMMARISED), None);
    }

    #[test]
    fn record_becomes_attributes_and_children() {
        let entries = [
            entry(1, 4096, 100, 300),         // write
            entry(74, 0, 400, 12_400),        // fsync 12 ms
            entry(1, 10, 12_500, 12_600),     // write
            entry(2, -2, 12_700, 12_720),     // open: ENOENT
            entry(202, -11, 13_000, 19_000),  // futex: EAGAIN
            entry(999, 0, 19_100, 19_200),    // unknown number
        ];
        let mut h = header(entries.len() as u32);
        h.total_calls = 9;
        h.total_call_ns = 19_000_000;
        h.unitemised_calls = 3;
        h.unitemised_ns = 1_000;
        h.records_dropped_before = 2;
        h.flags = uapi::REC_ENDED_ELSEWHERE | uapi::REC_CALLS_TRUNCATED;
        let bytes = encode(&h, &entries);
        let rec = Record::decode(&bytes).unwrap();
        assert_eq!(rec.header, h);
        let span = span_data(50, 20_100);
        let mut p = span.clone();
        let kids = annotate(&mut p, &rec, &mut counter_ids()).unwrap();

        // The parent keeps everything it had, plus the record's attributes.
        assert_eq!(p.span_context, span.span_context);
        assert_eq!((p.start_time, p.end_time), (span.start_time, span.end_time));
        assert_eq!(p.attributes[0], span.attributes[0]);
        assert_eq!(attr(&p, attr::SYSCALLS_COUNT), Some(&Value::I64(9)));
        assert_eq!(attr(&p, attr::SYSCALLS_DURATION_NS), Some(&Value::I64(19_000_000)));
        assert_eq!(attr(&p, attr::SYSCALLS_ITEMISED), Some(&Value::I64(6)));
        assert_eq!(attr(&p, attr::DROPPED_UNITEMISED_CALLS), Some(&Value::I64(3)));
        assert_eq!(attr(&p, attr::DROPPED_UNITEMISED_NS), Some(&Value::I64(1_000)));
        assert_eq!(attr(&p, attr::DROPPED_RECORDS_BEFORE), Some(&Value::I64(2)));
        assert_eq!(attr(&p, attr::ENDED_ELSEWHERE), Some(&Value::Bool(true)));
        assert_eq!(attr(&p, attr::THREAD_ID), Some(&Value::I64(4242)));
        assert_eq!(
            attr(&p, attr::SYSCALLS_TOP).map(|v| v.as_str().into_owned()),
            Some("fsync:12.0ms(1), futex:6.0ms(1), write:300.0us(2), syscall_999:100.0us(1), open:20.0us(1)".into())
        );

        // One child per entry, in order, named, parented, timed.
        let names: Vec<&str> = kids.iter().map(|k| k.name.as_ref()).collect();
        assert_eq!(names, ["write", "fsync", "write", "open", "futex", "syscall_999"]);
        for (i, k) in kids.iter().enumerate() {
            assert_eq!(k.span_context.trace_id(), span.span_context.trace_id());
            assert_eq!(k.span_context.span_id(), SpanId::from_bytes((i as u64 + 1).to_be_bytes()));
            assert_eq!(k.span_context.trace_flags(), TraceFlags::SAMPLED);
            assert_eq!(k.parent_span_id, span.span_context.span_id());
            assert!(!k.parent_span_is_remote);
            assert_eq!(k.span_kind, SpanKind::Internal);
            assert_eq!(attr(k, attr::SYSCALL_NR), Some(&Value::I64(i64::from(entries[i].nr))));
            assert_eq!(attr(k, attr::SYSCALL_RET), Some(&Value::I64(entries[i].ret)));
            assert!(k.start_time >= span.start_time && k.end_time <= span.end_time);
            assert!(k.start_time <= k.end_time);
            assert_eq!(k.instrumentation_scope, span.instrumentation_scope);
        }
        // Times: real = begin_real + (mono - begin_mono).
        let fsync = &kids[1];
        assert_eq!(fsync.start_time, UNIX_EPOCH + Duration::from_nanos(T0_REAL + 400_000));
        assert_eq!(fsync.end_time, UNIX_EPOCH + Duration::from_nanos(T0_REAL + 12_400_000));
        // Failed calls.
        assert_eq!(attr(&kids[3], attr::ERROR_TYPE).map(|v| v.as_str().into_owned()), Some("ENOENT".into()));
        assert_eq!(kids[3].status, Status::error("ENOENT"));
        assert_eq!(attr(&kids[4], attr::ERROR_TYPE).map(|v| v.as_str().into_owned()), Some("EAGAIN".into()));
        assert_eq!(attr(&kids[0], attr::ERROR_TYPE), None);
        assert_eq!(kids[0].status, Status::Unset);
        assert_eq!(attr(&p, attr::ERROR_TYPE), None);
    }

    #[test]
    fn times_are_clamped_into_the_parent() {
        // The kernel's clock pair says the call began 100 us before the SDK's start and
        // ended after the SDK's end (clock skew): clamp both ends.
        let entries = [entry(35, 0, 0, 30_000), entry(39, 7, 500, 400)];
        let mut h = header(2);
        h.begin_real_ns = T0_REAL - 100_000;
        let rec = Record::decode(&encode(&h, &entries)).unwrap();
        let span = span_data(0, 20_000);
        let kids = annotate(&mut span.clone(), &rec, &mut counter_ids()).unwrap();
        assert_eq!(kids[0].start_time, span.start_time);
        assert_eq!(kids[0].end_time, span.end_time);
        // An entry whose end precedes its start gets a zero-length interval.
        assert_eq!(kids[1].start_time, kids[1].end_time);
        assert!(kids[1].start_time >= span.start_time);
        // A parent with end < start (bad clocks) still yields ordered, clamped children.
        let mut weird = span.clone();
        weird.end_time = weird.start_time - Duration::from_millis(1);
        let kids = annotate(&mut weird.clone(), &rec, &mut counter_ids()).unwrap();
        for k in &kids {
            assert_eq!((k.start_time, k.end_time), (weird.start_time, weird.start_time));
        }
        // Conversion itself.
        assert_eq!(mono_to_real_ns(&header(0), T0_MONO - 5), i128::from(T0_REAL) - 5);
    }

    #[test]
    fn records_of_other_spans_and_garbage_are_refused() {
        let mut h = header(0);
        h.span_id = [1; 8];
        let rec = Record::decode(&encode(&h, &[])).unwrap();
        let span = span_data(0, 1000);
        let mut back = span.clone();
        let why = annotate(&mut back, &rec, &mut counter_ids()).unwrap_err();
        assert_eq!(why, BadRecord::OtherSpan);
        assert_eq!(back.attributes, span.attributes);
        assert!(matches!(Record::decode(b"SPTRxxxx"), Err(BadRecord::Decode(_))));
        assert!(matches!(Record::decode(&[0u8; 200]), Err(BadRecord::Decode(_))));
    }

    #[test]
    fn zero_ids_are_never_used() {
        let rec = Record::decode(&encode(&header(1), &[entry(39, 1, 1, 2)])).unwrap();
        let mut calls = 0;
        let mut gen = || {
            calls += 1;
            if calls < 3 {
                SpanId::INVALID
            } else {
                SpanId::from_bytes([7; 8])
            }
        };
        let kids = annotate(&mut span_data(0, 1000), &rec, &mut gen).unwrap();
        assert_eq!(kids[0].span_context.span_id(), SpanId::from_bytes([7; 8]));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_ns(999), "999ns");
        assert_eq!(format_ns(1_500), "1.5us");
        assert_eq!(format_ns(12_345_678), "12.3ms");
        assert_eq!(format_ns(2_500_000_000), "2.50s");
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(74), "fsync");
        assert_eq!(syscall_name(202), "futex");
        assert_eq!(syscall_name(600), "syscall_600");
        assert_eq!(top_calls(&[], 5), "");
        let many: Vec<_> = (0..8).map(|i| entry(i, 0, 0, u64::from(i) + 1)).collect();
        assert_eq!(top_calls(&many, 2), "poll:8.0us(1), lstat:7.0us(1)");
        // Summed per call; ties by time go to the more frequent call, then the lower number.
        let ties = [entry(0, 0, 0, 3), entry(3, 0, 0, 6), entry(1, 0, 0, 6), entry(0, 0, 10, 13), entry(0, 0, 20, 20)];
        assert_eq!(top_calls(&ties, 5), "read:6.0us(3), write:6.0us(1), close:6.0us(1)");
        assert_eq!(top_calls(&ties, 1), "read:6.0us(3)");
    }
}
