//! spantrack-overload: the load of issue 19 in a Rust service, for tests/vm/t_overload.sh.
//!
//! ```text
//! spantrack-overload PATH [THREADS SPANS DELAY_US]
//! ```
//!
//! THREADS threads run SPANS spans each (`unload`: until /proc/spantrack is gone, then one
//! more second); every span makes three writes to /dev/null and sleeps 1.5 ms. The inner
//! processor is a slow synchronous exporter (DELAY_US per span, like a console exporter).
//! PATH: `shutdown` (default timeout), `flush` (force_flush, then exit without shutdown),
//! `unload`, `tight` (shutdown with a 50 ms timeout: what the worker still holds then is
//! counted, never handed to the shut-down inner processor). Prints "ok - ..." / "not ok -
//! ..." lines and a summary; exits 0.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
use spantrack_otel::annotate::attr;
use spantrack_otel::SpantrackProcessor;

#[derive(Debug, Default)]
struct Sink {
    /// Name -> (times exported, missing reason, has the summary attributes).
    parents: Mutex<HashMap<String, (u32, Option<String>, bool)>>,
    children: AtomicU64,
    shut: AtomicBool,
    after_shutdown: AtomicU64,
    delay: Duration,
}

#[derive(Debug, Clone)]
struct SlowExporter(Arc<Sink>);

impl SpanProcessor for SlowExporter {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        let s = &self.0;
        let t = Instant::now();
        while t.elapsed() < s.delay {
            std::hint::spin_loop();
        }
        if s.shut.load(Ordering::SeqCst) {
            s.after_shutdown.fetch_add(1, Ordering::SeqCst);
        }
        let has = |k: &str| span.attributes.iter().find(|kv| kv.key.as_str() == k);
        if has(attr::SYSCALL_NR).is_some() {
            s.children.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let why = has(attr::ANNOTATION_MISSING).map(|kv| kv.value.as_str().into_owned());
        let summary = has(attr::SYSCALLS_COUNT).is_some();
        let mut p = s.parents.lock().unwrap_or_else(|e| e.into_inner());
        let e = p.entry(span.name.to_string()).or_insert((0, None, false));
        *e = (e.0 + 1, why, summary);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        self.0.shut.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn say(ok: bool, what: &str) {
    println!("{} - {what}", if ok { "ok" } else { "not ok" });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).cloned().unwrap_or_else(|| "shutdown".into());
    let num = |i: usize, d: u64| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (threads, spans, delay_us) = (num(2, 8), num(3, 1000), num(4, 200));
    let sink = Arc::new(Sink {
        delay: Duration::from_micros(delay_us),
        ..Sink::default()
    });
    let head = SpantrackProcessor::new(SlowExporter(Arc::clone(&sink)));
    let active = head.is_active();
    let stats = head.stats();
    let provider = SdkTracerProvider::builder().with_span_processor(head).build();
    let made = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|k| {
            let tracer = provider.tracer("overload");
            let (made, stop, unload) = (Arc::clone(&made), Arc::clone(&stop), path == "unload");
            std::thread::spawn(move || {
                let mut devnull = std::fs::OpenOptions::new().write(true).open("/dev/null").ok();
                let mut i = 0;
                while if unload { !stop.load(Ordering::Relaxed) } else { i < spans } {
                    let mut s = tracer.start(format!("t{k}-{i}"));
                    made.fetch_add(1, Ordering::Relaxed);
                    for _ in 0..3 {
                        if let Some(f) = devnull.as_mut() {
                            let _ = f.write_all(&[b'x'; 64]);
                        }
                    }
                    std::thread::sleep(Duration::from_micros(1500));
                    s.end();
                    i += 1;
                }
            })
        })
        .collect();
    if path == "unload" {
        while std::path::Path::new("/proc/spantrack").exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
    }
    for w in workers {
        let _ = w.join();
    }
    let service = start.elapsed();
    let done = match path.as_str() {
        "flush" => provider.force_flush(),
        "tight" => provider.shutdown_with_timeout(Duration::from_millis(50)),
        _ => provider.shutdown(),
    };
    if path == "tight" {
        // The worker goes on emptying its queue, handing nothing on: let it count, until the
        // count has not moved for a second (at most 60 s: on a busy host the worker can be
        // kept off the CPU for a while).
        let t0 = std::time::Instant::now();
        let mut last = (u64::MAX, std::time::Instant::now());
        while t0.elapsed() < Duration::from_secs(60) {
            let n = stats.snapshot().after_shutdown + sink.parents.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
            if n != last.0 {
                last = (n, std::time::Instant::now());
            } else if last.1.elapsed() >= Duration::from_secs(1) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let made = made.load(Ordering::Relaxed);
    let st = stats.snapshot();
    let parents = sink.parents.lock().unwrap_or_else(|e| e.into_inner());
    let exported = parents.len() as u64;
    let twice = parents.values().filter(|v| v.0 > 1).count();
    let silent = parents.values().filter(|v| v.1.is_none() && !v.2).count();
    let mut reasons: HashMap<&str, u64> = HashMap::new();
    for v in parents.values() {
        if let Some(w) = &v.1 {
            *reasons.entry(w.as_str()).or_default() += 1;
        }
    }
    let annotated = parents.values().filter(|v| v.1.is_none() && v.2).count();
    println!(
        "# rust {path}: active {active}, made {made}, exported {exported}, annotated {annotated} \
         ({} system-call spans), without calls {reasons:?}, service {:.2} s, end {done:?}; {st:?}",
        sink.children.load(Ordering::Relaxed),
        service.as_secs_f64()
    );
    if path == "tight" {
        say(
            exported + st.after_shutdown == made,
            &format!("rust tight: exported {exported} + held back at shutdown {} == made {made}", st.after_shutdown),
        );
    } else {
        say(exported == made, &format!("rust {path}: every span made was exported ({exported} of {made})"));
    }
    say(twice == 0, &format!("rust {path}: each exactly once ({twice} twice)"));
    say(silent == 0, &format!("rust {path}: no slow span silent ({silent} silent)"));
    let late = sink.after_shutdown.load(Ordering::SeqCst);
    say(late == 0, &format!("rust {path}: nothing reached the inner processor after its shutdown ({late})"));
}
