//! What the annotation worker spends per slow span, step by step, on a record shaped like the
//! realistic service's (`make bench`, part "realistic": 12 `fcntl` + 9 `pwrite64` + 3 `pread64`,
//! the scheduler part with one wait and its stacks). Host only, no module: the steps are pure.
//!
//!     cargo build --release -p spantrack-otel --example worker_cost
//!     for n in 0 2000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/examples/worker_cost STEP $n 2>&1 | grep refs; done
//!
//! `(refs(2000) - refs(0)) / 2000` is the step's instructions per span. STEP: `estimate`
//! (the operation's statistics for the attributes), `decode` (the record's bytes),
//! `summarise` (the summary attributes), `annotate` (summary, wait events and links, child
//! spans for calls of at least 1 ms: none here), `children` (every call a child span),
//! `all` (`estimate` + `decode` + `annotate`). Also prints wall-clock ns per span.

use std::borrow::Cow;
use std::time::{Duration, Instant, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use spantrack_logic::record::{encode_entry, encode_header};
use spantrack_otel::annotate::{annotate_with_symbols, summarise, Record, SLOW_SPAN_ATTRS};
use spantrack_otel::stacks::Symbols;
use spantrack_otel::threshold::{OpTable, ThresholdConfig};
use spantrack_uapi as uapi;
use uapi::{RecordHeader, SyscallEntry};

const T0_REAL: u64 = 1_700_000_000_000_000_000;
const T0_MONO: u64 = 5_000_000_000;
const TRACE: [u8; 16] = [0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c];
const SPAN: [u8; 8] = [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31];

fn record() -> Vec<u8> {
    let mut entries = Vec::new();
    let mut t = 10u64;
    for (nr, n) in [(17u32, 3), (72, 12), (18, 9)] {
        for _ in 0..n {
            entries.push(SyscallEntry { nr, tid: 4242, ret: 4096, start_mono_ns: T0_MONO + t * 1000, end_mono_ns: T0_MONO + (t + 7) * 1000 });
            t += 20;
        }
    }
    let mut wait = uapi::WaitEntry { start_mono_ns: T0_MONO + 300_000, blocked_ns: 900_000, runq_ns: 20_000, nr: 74, tid: 4242, cause: 1, n_kstack: 6, n_ustack: 8, ..Default::default() };
    for i in 0..6 {
        wait.kstack[i] = 0xffff_ffff_8100_0000 + 0x1000 * i as u64;
    }
    for i in 0..8 {
        wait.ustack[i] = 0x5555_0000_1000 + 0x100 * i as u64;
    }
    let mut sched = uapi::SchedPart { on_cpu_ns: 1_500_000, blocked_ns: [900_000, 0, 0, 0, 0], blocks: 1, wakeups: 1, wakeup_total_ns: 20_000, wakeup_max_ns: 20_000, n_waits: 1, ..Default::default() };
    sched.waits[0] = wait;
    let total = uapi::RECORD_HEADER_SIZE + entries.len() * uapi::SYSCALL_ENTRY_SIZE;
    let h = RecordHeader {
        magic: uapi::RECORD_MAGIC,
        version: uapi::ABI_VERSION as u16,
        header_size: uapi::RECORD_HEADER_SIZE as u16,
        total_size: total as u32,
        n_entries: entries.len() as u32,
        trace_id: TRACE,
        span_id: SPAN,
        tid: 4242,
        tgid: 4200,
        begin_mono_ns: T0_MONO,
        end_mono_ns: T0_MONO + 3_000_000,
        begin_real_ns: T0_REAL,
        end_real_ns: T0_REAL + 3_000_000,
        n_threads: 1,
        flags: uapi::REC_SCHED,
        total_calls: entries.len() as u64,
        total_call_ns: 7000 * entries.len() as u64,
        sched,
        ..Default::default()
    };
    let mut b = vec![0u8; total];
    assert!(encode_header(&h, &mut b));
    for (i, e) in entries.iter().enumerate() {
        assert!(encode_entry(e, &mut b[uapi::RECORD_HEADER_SIZE + i * uapi::SYSCALL_ENTRY_SIZE..]));
    }
    b
}

fn span() -> SpanData {
    let start = UNIX_EPOCH + Duration::from_nanos(T0_REAL - 20_000);
    SpanData {
        span_context: SpanContext::new(TraceId::from_bytes(TRACE), SpanId::from_bytes(SPAN), TraceFlags::SAMPLED, false, TraceState::default()),
        parent_span_id: SpanId::from_bytes([9; 8]),
        parent_span_is_remote: true,
        span_kind: SpanKind::Server,
        name: "Convert".into(),
        start_time: start,
        end_time: start + Duration::from_micros(3_040),
        attributes: vec![KeyValue::new("rpc.method", "Convert"), KeyValue::new("currency.from", "EUR")],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::builder("bench").build(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let step = args.get(1).map_or("all", String::as_str);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let bytes = record();
    let sym = Symbols::from_texts(None, None);
    let ops = OpTable::new(ThresholdConfig::default());
    let op = ops.get_or_add(&Cow::Borrowed("Convert"), 2).expect("op");
    // A warm operation: two windows of latencies spread over 0.5-5 ms.
    for i in 0..2000u64 {
        op.record(500_000 + (i * 7919) % 4_500_000, i * 1_000_000, 0);
    }
    let mut next = 1u64;
    let mut ids = move || {
        next += 1;
        SpanId::from(next)
    };
    let base = span();
    let min_child_ns = if step == "children" { 0 } else { 1_000_000 };
    let mut keep = 0usize;
    let t = Instant::now();
    for _ in 0..n {
        match step {
            "estimate" => keep += op.estimate().samples as usize,
            "decode" => keep += Record::decode(&bytes).map_or(0, |r| r.entries.len()),
            "summarise" => {
                let rec = Record::decode(&bytes).expect("record");
                let mut s = base.clone();
                // As the worker takes it: room for the slow span's attributes.
                s.attributes.reserve(SLOW_SPAN_ATTRS);
                summarise(&mut s, &rec, min_child_ns).expect("summary");
                keep += s.attributes.len();
            }
            "annotate" | "children" | "all" => {
                if step == "all" {
                    keep += op.estimate().samples as usize;
                }
                let rec = Record::decode(&bytes).expect("record");
                let mut s = base.clone();
                // As the worker takes it: room for the slow span's attributes.
                s.attributes.reserve(SLOW_SPAN_ATTRS);
                let kids = annotate_with_symbols(&mut s, &rec, &mut ids, min_child_ns, &sym).expect("annotate");
                keep += s.attributes.len() + s.events.len() + kids.len();
            }
            other => {
                eprintln!("unknown step {other}: estimate, decode, summarise, annotate, children, all");
                std::process::exit(2);
            }
        }
    }
    let el = t.elapsed();
    println!("{step}: {n} spans, {:.0} ns each (checksum {keep})", el.as_nanos() as f64 / n.max(1) as f64);
}
