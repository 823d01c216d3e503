//! spantrack-overload-bench: issue 19's load in a Rust service, measured once for `make bench`
//! (scripts/bench-guest.sh, part `overload`; the Python twin is
//! preload/python/tools/bench_overload.py, which measures the same things the same way).
//!
//! ```text
//! spantrack-overload-bench [--threads 8] [--spans 1000] [--plain]
//! ```
//!
//! THREADS service threads run SPANS spans each (a unique name per span, so that every span
//! is judged by the module's default threshold, as in the issue); every span makes three
//! 64-byte writes to /dev/null and sleeps 1.5 ms. The application's pipeline is the SDK's
//! `SimpleSpanProcessor` with a console-like exporter: each span serialised to one JSON line
//! (the demo's `span_json`) and written to /dev/null, on the thread that hands it on.
//! `--plain`: that pipeline alone (no `SpantrackProcessor`: the service without spantrack);
//! otherwise it is wrapped in `SpantrackProcessor` (a pass-through without the preloaded
//! library). Tunables, read from the same variables as the Python hook's:
//! `SPANTRACK_BUDGET_PCT` (the processor reads it), `SPANTRACK_MIN_CHILD_US`,
//! `SPANTRACK_QUEUE_SIZE`, `SPANTRACK_TAKE_TIMEOUT_MS` (record wait),
//! `SPANTRACK_SHUTDOWN_TIMEOUT_MS` (the provider's shutdown).
//!
//! Prints one JSON line: spans made and exported (distinct, and exported twice), exported
//! annotated (summary attributes, no missing reason), summary only (`over_budget`), nothing
//! (another reason, per reason), silent (slow, neither), child spans; the service's time
//! (its threads' first start to last end) and the whole run's (to the end of the shutdown);
//! CPU time: the process's (from before the threads start to after the shutdown), the
//! service threads', the main thread's, and the exporter's own (inside `export`), by parent
//! and child span and by the thread it ran on; the processor's counters.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor, SpanData, SpanExporter};
use spantrack_otel::annotate::attr;
use spantrack_otel::processor::Config;
use spantrack_otel::SpantrackProcessor;

#[allow(dead_code)]
#[path = "../exporters.rs"]
mod exporters;

/// Which thread runs an export: its CPU is the exporter's, on that thread.
const ON_SERVICE: usize = 0;
const ON_MAIN: usize = 1;
const ON_OTHER: usize = 2;

thread_local! {
    static ROLE: Cell<usize> = const { Cell::new(ON_OTHER) };
}

fn cpu_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn thread_cpu_ns() -> u64 {
    cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

#[derive(Debug)]
struct Sink {
    /// Name -> (times exported, missing reason, has the summary attributes).
    parents: Mutex<HashMap<String, (u32, Option<String>, bool)>>,
    children: AtomicU64,
    /// Exporter CPU ns: [parent, child] x [on service, main, other threads].
    export_ns: [[AtomicU64; 3]; 2],
    out: File,
}

#[derive(Debug, Clone)]
struct LineExporter(Arc<Sink>);

impl SpanExporter for LineExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let s = &self.0;
        for span in &batch {
            let t0 = thread_cpu_ns();
            let mut line = exporters::span_json(span);
            line.push('\n');
            let _ = (&s.out).write_all(line.as_bytes());
            let has = |k: &str| span.attributes.iter().find(|kv| kv.key.as_str() == k);
            let child = has(attr::SYSCALL_NR).is_some();
            if child {
                s.children.fetch_add(1, Ordering::Relaxed);
            } else {
                let why = has(attr::ANNOTATION_MISSING).map(|kv| kv.value.as_str().into_owned());
                let summary = has(attr::SYSCALLS_COUNT).is_some();
                let mut p = s.parents.lock().unwrap_or_else(|e| e.into_inner());
                let e = p.entry(span.name.to_string()).or_insert((0, None, false));
                *e = (e.0 + 1, why, summary);
            }
            let role = ROLE.with(Cell::get);
            s.export_ns[usize::from(child)][role].fetch_add(thread_cpu_ns() - t0, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, d: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (threads, spans) = (opt("--threads", 8), opt("--spans", 1000));
    let plain = args.iter().any(|a| a == "--plain");
    ROLE.with(|r| r.set(ON_MAIN));

    let sink = Arc::new(Sink {
        parents: Mutex::new(HashMap::new()),
        children: AtomicU64::new(0),
        export_ns: Default::default(),
        out: std::fs::OpenOptions::new().write(true).open("/dev/null").expect("/dev/null"),
    });
    let simple = SimpleSpanProcessor::new(LineExporter(Arc::clone(&sink)));
    let mut stats = None;
    let mut state = "plain".to_string();
    let provider = if plain {
        SdkTracerProvider::builder().with_span_processor(simple).build()
    } else {
        let mut cfg = Config::default();
        if let Some(us) = env_u64("SPANTRACK_MIN_CHILD_US") {
            cfg.min_child_call = Duration::from_micros(us);
        }
        if let Some(n) = env_u64("SPANTRACK_QUEUE_SIZE") {
            cfg.queue_capacity = n as usize;
        }
        if let Some(ms) = env_u64("SPANTRACK_TAKE_TIMEOUT_MS") {
            cfg.record_wait = Duration::from_millis(ms);
        }
        let head = SpantrackProcessor::with_config(simple, cfg);
        state = if head.is_active() {
            "active".into()
        } else {
            format!("inactive: {:?}", head.inactive_reason())
        };
        stats = Some(head.stats());
        SdkTracerProvider::builder().with_span_processor(head).build()
    };
    let shutdown_timeout = Duration::from_millis(env_u64("SPANTRACK_SHUTDOWN_TIMEOUT_MS").unwrap_or(5000));

    let made = Arc::new(AtomicU64::new(0));
    let service_cpu = Arc::new(AtomicU64::new(0));
    let (proc0, main0) = (cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID), thread_cpu_ns());
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|k| {
            let tracer = provider.tracer("overload");
            let (made, service_cpu) = (Arc::clone(&made), Arc::clone(&service_cpu));
            std::thread::Builder::new()
                .name(format!("svc-{k}"))
                .spawn(move || {
                    ROLE.with(|r| r.set(ON_SERVICE));
                    let c0 = thread_cpu_ns();
                    let devnull = std::fs::OpenOptions::new().write(true).open("/dev/null").ok();
                    for i in 0..spans {
                        let mut s = tracer.start(format!("t{k}-{i}"));
                        made.fetch_add(1, Ordering::Relaxed);
                        for _ in 0..3 {
                            if let Some(mut f) = devnull.as_ref() {
                                let _ = f.write_all(&[b'x'; 64]);
                            }
                        }
                        std::thread::sleep(Duration::from_micros(1500));
                        s.end();
                    }
                    service_cpu.fetch_add(thread_cpu_ns() - c0, Ordering::Relaxed);
                })
                .expect("spawn")
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let service = start.elapsed();
    let done = provider.shutdown_with_timeout(shutdown_timeout);
    let total = start.elapsed();
    let (proc1, main1) = (cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID), thread_cpu_ns());

    let made = made.load(Ordering::Relaxed);
    let parents = sink.parents.lock().unwrap_or_else(|e| e.into_inner());
    let twice: u64 = parents.values().map(|v| u64::from(v.0.saturating_sub(1))).sum();
    let annotated = parents.values().filter(|v| v.1.is_none() && v.2).count();
    let silent = parents.values().filter(|v| v.1.is_none() && !v.2).count();
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    for v in parents.values() {
        if let Some(w) = &v.1 {
            *reasons.entry(w.as_str()).or_default() += 1;
        }
    }
    let summary = reasons.get("over_budget").copied().unwrap_or(0);
    let nothing: u64 = reasons.iter().filter(|(k, _)| **k != "over_budget").map(|(_, v)| v).sum();
    let reasons_json = reasons
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect::<Vec<_>>()
        .join(",");
    let e = |c: usize, r: usize| sink.export_ns[c][r].load(Ordering::Relaxed) as f64 / 1e9;
    let counters = match &stats {
        Some(st) => {
            let s = st.snapshot();
            let text = format!("{s:?}");
            // "StatsSnapshot { begin_errors: 0, ... }" -> {"begin_errors":0,...}
            let inner = text.split_once('{').map_or("", |x| x.1).trim_end_matches('}');
            let kv: Vec<String> = inner
                .split(',')
                .filter_map(|p| p.split_once(':'))
                .map(|(k, v)| format!("{}:{}", json_str(k.trim()), v.trim()))
                .collect();
            format!("{{{}}}", kv.join(","))
        }
        None => "{}".into(),
    };
    println!(
        "{{\"lang\":\"rust\",\"state\":{},\"threads\":{threads},\"spans\":{spans},\"made\":{made},\
         \"exported\":{},\"twice\":{twice},\"annotated\":{annotated},\"summary\":{summary},\
         \"nothing\":{nothing},\"silent\":{silent},\"reasons\":{{{reasons_json}}},\"children\":{},\
         \"service_s\":{:.6},\"total_s\":{:.6},\"cpu_process_s\":{:.6},\"cpu_service_s\":{:.6},\
         \"cpu_main_s\":{:.6},\"export_parent_s\":[{:.6},{:.6},{:.6}],\"export_child_s\":[{:.6},{:.6},{:.6}],\
         \"shutdown\":{},\"counters\":{counters}}}",
        json_str(&state),
        parents.len(),
        sink.children.load(Ordering::Relaxed),
        service.as_secs_f64(),
        total.as_secs_f64(),
        (proc1 - proc0) as f64 / 1e9,
        service_cpu.load(Ordering::Relaxed) as f64 / 1e9,
        (main1 - main0) as f64 / 1e9,
        e(0, ON_SERVICE),
        e(0, ON_MAIN),
        e(0, ON_OTHER),
        e(1, ON_SERVICE),
        e(1, ON_MAIN),
        e(1, ON_OTHER),
        json_str(&format!("{done:?}")),
    );
}
