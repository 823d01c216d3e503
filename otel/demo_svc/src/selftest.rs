//! `--selftest active|inactive`: the in-VM end-to-end test of spantrack-otel, without
//! network. Spans around known system calls go through `SpantrackProcessor` into an
//! in-memory exporter; the exported spans are checked against what the kernel must have
//! seen, call by call.
//!
//! `active` (module loaded, `LD_PRELOAD=libspanhook.so`, threshold 2 ms set by the caller):
//! slow spans get exactly their calls as children, in order, inside the parent; a fast span
//! gets nothing; a span ended on another thread still matches (and the ending thread's calls
//! are not in it); nested spans split their calls; the library's reader thread and the
//! processor's worker are not tracked; counters show no errors; a threshold change reaches
//! the process within ~1 s.
//!
//! `inactive` (no module, or no preload): the same spans are exported unchanged.
//!
//! Inside spans only raw system calls run (`raw`): no allocation, no clock reads, no std I/O.
//! The SDK itself reads the wall clock when a span starts and ends; where the clocksource has
//! no vDSO (TCG guests) that read is a `clock_gettime` system call, which a calibration span
//! detects first; the expectations include it where it happens inside a span.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{Span as _, SpanContext, SpanId, Status, Tracer as _, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{
    IdGenerator, InMemorySpanExporter, RandomIdGenerator, SdkTracer, SdkTracerProvider,
    SimpleSpanProcessor, Span, SpanData,
};
use spantrack_otel::annotate::{attr, Record};
use spantrack_otel::{Config, SpanHook, SpantrackProcessor};
use spantrack_uapi as uapi;

use crate::raw;

/// What the caller says the environment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Active,
    Inactive,
}

struct Tally {
    pass: u32,
    fail: u32,
}

impl Tally {
    fn check(&mut self, name: &str, r: Result<(), String>) {
        match r {
            Ok(()) => {
                self.pass += 1;
                println!("ok - rust selftest: {name}");
            }
            Err(e) => {
                self.fail += 1;
                println!("not ok - rust selftest: {name}: {e}");
            }
        }
    }
}

macro_rules! ensure {
    ($c:expr, $($fmt:tt)*) => {
        if !$c {
            return Err(format!($($fmt)*));
        }
    };
}

/// Span names of the scenarios.
const SLOW: &str = "selftest.slow";
const FSYNC: &str = "selftest.fsync";
const ERROR: &str = "selftest.error";
const MOVED: &str = "selftest.moved";
const FAST: &str = "selftest.fast";
const OUTER: &str = "selftest.outer";
const INNER: &str = "selftest.inner";
/// Marks where the SDK's clock read falls inside a span.
const CLK: &str = "<clock>";

const SLEEP_MS: u64 = 5;

/// The thread that ends `selftest.moved`: armed through a channel before the span starts,
/// then it spins (no system call on the span's thread while it waits).
struct Ender {
    arm: mpsc::Sender<()>,
}

static HANDOFF: Mutex<Option<Span>> = Mutex::new(None);
static READY: AtomicBool = AtomicBool::new(false);
static DONE: AtomicBool = AtomicBool::new(false);

impl Ender {
    fn spawn() -> Ender {
        let (arm, rx) = mpsc::channel::<()>();
        let _ = std::thread::Builder::new().name("ender".into()).spawn(move || {
            while rx.recv().is_ok() {
                let mut spins: u64 = 0;
                while !READY.load(Ordering::Acquire) && spins < 4_000_000_000 {
                    std::hint::spin_loop();
                    spins += 1;
                }
                READY.store(false, Ordering::Relaxed);
                let s = HANDOFF.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(mut s) = s {
                    s.end();
                }
                DONE.store(true, Ordering::Release);
            }
        });
        Ender { arm }
    }
}

fn spin_until_done() -> bool {
    let mut spins: u64 = 0;
    while !DONE.load(Ordering::Acquire) {
        std::hint::spin_loop();
        spins += 1;
        if spins > 4_000_000_000 {
            return false;
        }
    }
    DONE.store(false, Ordering::Relaxed);
    true
}

struct Scenario {
    fd: i32,
    ender: Ender,
    block: Vec<u8>,
}

/// Runs every scenario once; returns the span contexts by name.
fn run_scenarios(tracer: &SdkTracer, sc: &Scenario) -> Result<Vec<(&'static str, SpanContext)>, String> {
    let mut out = Vec::new();
    // Slow: 3 getpid + 5 ms nanosleep.
    let mut s = tracer.start(SLOW);
    raw::getpid();
    raw::getpid();
    raw::getpid();
    raw::nanosleep_ms(SLEEP_MS);
    s.end();
    out.push((SLOW, s.span_context().clone()));
    // An fsync (tmpfs makes it fast: the sleep makes the span slow).
    let mut s = tracer.start(FSYNC);
    raw::write(sc.fd, &sc.block);
    raw::fsync(sc.fd);
    raw::nanosleep_ms(SLEEP_MS);
    s.end();
    out.push((FSYNC, s.span_context().clone()));
    // A failing call.
    let mut s = tracer.start(ERROR);
    raw::open_missing();
    raw::nanosleep_ms(SLEEP_MS);
    s.end();
    out.push((ERROR, s.span_context().clone()));
    // Ended on another thread.
    sc.ender.arm.send(()).map_err(|_| "ender thread gone".to_string())?;
    let s = tracer.start(MOVED);
    let ctx = s.span_context().clone();
    raw::getpid();
    raw::nanosleep_ms(SLEEP_MS);
    *HANDOFF.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    READY.store(true, Ordering::Release);
    if !spin_until_done() {
        return Err("the ender thread did not end the span".into());
    }
    out.push((MOVED, ctx));
    // Fast.
    let mut s = tracer.start(FAST);
    raw::getpid();
    s.end();
    out.push((FAST, s.span_context().clone()));
    // Nested: the inner span's calls are its own, the outer one gets the rest.
    let mut outer = tracer.start(OUTER);
    raw::getpid();
    let mut inner = tracer.start(INNER);
    raw::nanosleep_ms(SLEEP_MS);
    inner.end();
    raw::nanosleep_ms(3);
    outer.end();
    out.push((INNER, inner.span_context().clone()));
    out.push((OUTER, outer.span_context().clone()));
    Ok(out)
}

/// Expected children of each scenario (`CLK`: the SDK's clock read, kept only if it is a
/// system call here).
fn expected(name: &str) -> &'static [&'static str] {
    match name {
        SLOW => &["getpid", "getpid", "getpid", "nanosleep", CLK],
        FSYNC => &["write", "fsync", "nanosleep", CLK],
        ERROR => &["openat", "nanosleep", CLK],
        MOVED => &["getpid", "nanosleep"],
        FAST => &[],
        OUTER => &["getpid", CLK, "nanosleep", CLK],
        INNER => &["nanosleep", CLK],
        _ => &[],
    }
}

fn attr_of<'a>(s: &'a SpanData, k: &str) -> Option<&'a Value> {
    s.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| &kv.value)
}

fn has_spantrack_attrs(s: &SpanData) -> bool {
    s.attributes
        .iter()
        .any(|kv| kv.key.as_str().starts_with("spantrack.") || kv.key.as_str() == attr::THREAD_ID)
}

fn describe(kids: &[&SpanData]) -> String {
    kids.iter()
        .map(|k| {
            let ret = match attr_of(k, attr::SYSCALL_RET) {
                Some(Value::I64(r)) => *r,
                _ => 0,
            };
            format!("{}={ret}", k.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads `name value` lines of `/proc/spantrack/stats`.
fn kernel_stat(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(uapi::PROC_STATS).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A sysfs tunable of the module, trimmed (`None`: not readable).
fn kernel_sysfs(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("{}/{name}", uapi::SYSFS_DIR)).ok().map(|s| s.trim().to_string())
}

fn threshold_path() -> String {
    format!("{}/threshold_ns", uapi::SYSFS_DIR)
}

/// Calibration: is the SDK's clock read a system call here? A span (straight through the
/// library) around one `SystemTime::now()` and a 4 ms nanosleep tells.
fn calibrate(hook: &SpanHook) -> Result<bool, String> {
    let g = RandomIdGenerator::default();
    let (t, s) = (g.new_trace_id().to_bytes(), g.new_span_id().to_bytes());
    hook.begin(&t, &s).map_err(|e| format!("begin: errno {e}"))?;
    let _ = std::hint::black_box(std::time::SystemTime::now());
    raw::nanosleep_ms(4);
    hook.end(&t, &s).map_err(|e| format!("end: errno {e}"))?;
    let mut buf = Vec::new();
    match hook.take_record(&t, &s, &mut buf, Duration::from_secs(3)) {
        Ok(true) => {}
        Ok(false) => return Err("no record for the 4 ms calibration span within 3 s".into()),
        Err(e) => return Err(format!("take_record: errno {e}")),
    }
    let rec = Record::decode(&buf).map_err(|e| format!("undecodable record: {e:?}"))?;
    let nrs: Vec<u32> = rec.entries.iter().map(|e| e.nr).collect();
    let clk = nrs.first() == Some(&raw::NR_CLOCK_GETTIME);
    let want: Vec<u32> = if clk {
        vec![raw::NR_CLOCK_GETTIME, raw::NR_NANOSLEEP]
    } else {
        vec![raw::NR_NANOSLEEP]
    };
    ensure!(nrs == want, "calibration span recorded calls {nrs:?}, expected {want:?}");
    Ok(clk)
}

/// A string-array attribute of an event (empty when absent).
fn frames(e: &opentelemetry::trace::Event, k: &str) -> Vec<String> {
    match e.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| &kv.value) {
        Some(Value::Array(opentelemetry::Array::String(v))) => v.iter().map(|s| s.as_str().to_string()).collect(),
        _ => Vec::new(),
    }
}

/// Issue 12, where it blocked (sysfs `sched_stacks` 1): the slow span's nanosleep was made
/// by `raw::nanosleep_ms`, called by `run_scenarios`; libc's `syscall` keeps no frame
/// pointer, so its user stack is libc's IP, then the caller of `nanosleep_ms` (this crate
/// keeps frame pointers: `.cargo/config.toml`) and its callers, named from the debug
/// information. Its kernel stack is the nanosleep path, with names when `/proc/kallsyms`
/// shows addresses (root, or `kptr_restrict` 0).
fn check_stacks(name: &str, wait: Option<&opentelemetry::trace::Event>) -> Result<(), String> {
    let Some(wait) = wait else { return Err(format!("{name}: no wait event")) };
    let user = frames(wait, "spantrack.wait.user_stack");
    ensure!(
        user.iter().any(|f| f.contains("nanosleep_ms") || f.contains("run_scenarios")),
        "{name}: the wait's user stack names neither raw::nanosleep_ms nor run_scenarios: {user:?}"
    );
    let kernel = frames(wait, "spantrack.wait.kernel_stack");
    // Kernel stacks go only to processes registered with CAP_SYSLOG (root, here).
    // SAFETY: plain query.
    if unsafe { libc::geteuid() } != 0 {
        ensure!(kernel.is_empty(), "{name}: an unprivileged process got a kernel stack: {kernel:?}");
        return Ok(());
    }
    ensure!(!kernel.is_empty(), "{name}: the wait has no kernel stack");
    let named = std::fs::read_to_string("/proc/kallsyms")
        .ok()
        .and_then(|t| spantrack_otel::stacks::KernelSymbols::parse(&t))
        .is_some();
    if named {
        ensure!(
            kernel.iter().any(|f| f.starts_with("hrtimer_nanosleep+") || f.starts_with("do_nanosleep+")),
            "{name}: the wait's kernel stack is not the nanosleep path: {kernel:?}"
        );
        ensure!(
            !kernel.iter().any(|f| f.starts_with("__schedule+") || f.starts_with("st_probe_")),
            "{name}: the scheduler's own frames are left in the kernel stack: {kernel:?}"
        );
    }
    println!("# {name}: user stack {user:?}");
    println!("# {name}: kernel stack {kernel:?}");
    Ok(())
}

/// Checks one annotated (or not) scenario span and its children.
fn check_span(
    name: &str,
    ctx: &SpanContext,
    spans: &[SpanData],
    clk: bool,
    expect: Expect,
    main_tid: u32,
) -> Result<(), String> {
    let me: Vec<&SpanData> = spans.iter().filter(|s| s.span_context.span_id() == ctx.span_id()).collect();
    ensure!(me.len() == 1, "{name}: exported {} times", me.len());
    let me = me[0];
    let kids: Vec<&SpanData> = spans.iter().filter(|s| s.parent_span_id == ctx.span_id() && s.name != INNER).collect();
    let want: Vec<&str> = if expect == Expect::Inactive {
        Vec::new()
    } else {
        expected(name).iter().copied().filter(|n| *n != CLK || clk).map(|n| if n == CLK { "clock_gettime" } else { n }).collect()
    };
    let got: Vec<&str> = kids.iter().map(|k| k.name.as_ref()).collect();
    ensure!(got == want, "{name}: children [{}], expected {want:?}", describe(&kids));
    if want.is_empty() {
        ensure!(!has_spantrack_attrs(me), "{name}: unexpected attributes {:?}", me.attributes);
        return Ok(());
    }
    // The parent's attributes.
    let int = |k: &str| match attr_of(me, k) {
        Some(Value::I64(v)) => Some(*v),
        _ => None,
    };
    ensure!(int(attr::THREAD_ID) == Some(i64::from(main_tid)), "{name}: thread.id {:?}, expected {main_tid}", int(attr::THREAD_ID));
    ensure!(int(attr::SYSCALLS_COUNT) == Some(want.len() as i64), "{name}: syscalls.count {:?}", int(attr::SYSCALLS_COUNT));
    ensure!(int(attr::DROPPED_UNITEMISED_CALLS) == Some(0), "{name}: unitemised calls {:?}", int(attr::DROPPED_UNITEMISED_CALLS));
    let elsewhere = attr_of(me, attr::ENDED_ELSEWHERE) == Some(&Value::Bool(true));
    ensure!(elsewhere == (name == MOVED), "{name}: ended_elsewhere {elsewhere}");
    let top = attr_of(me, attr::SYSCALLS_TOP).map(|v| v.as_str().into_owned()).unwrap_or_default();
    ensure!(top.contains("nanosleep:"), "{name}: syscalls.top {top:?}");
    if name == SLOW && kernel_sysfs("sched").as_deref() == Some("1") {
        // Issue 12, thread-per-request: the nanosleep is blocked timer time, woken by a timer.
        let timer = int("spantrack.sched.blocked.timer_ns").unwrap_or(0);
        ensure!(timer >= (SLEEP_MS as i64 - 1) * 1_000_000, "{name}: sched.blocked.timer_ns {timer}");
        let dom = attr_of(me, "spantrack.sched.dominant").map(|v| v.as_str().into_owned());
        ensure!(dom.as_deref() == Some("blocked.timer"), "{name}: sched.dominant {dom:?}");
        let wait = me.events.iter().find(|e| e.name == "spantrack.wait");
        let wa = |k: &str| {
            wait.and_then(|e| e.attributes.iter().find(|kv| kv.key.as_str() == k)).map(|kv| kv.value.as_str().into_owned())
        };
        ensure!(
            wa("spantrack.wait.cause").as_deref() == Some("timer")
                && wa("spantrack.wait.syscall").as_deref() == Some("nanosleep")
                && wa("spantrack.waker.context").as_deref() == Some("timer"),
            "{name}: longest wait {:?}",
            wait.map(|e| &e.attributes)
        );
        if kernel_sysfs("sched_stacks").as_deref() == Some("1") {
            check_stacks(name, wait)?;
        }
    }
    // The children: in the parent, in order, with their return values.
    let pid = i64::from(std::process::id());
    let mut prev_end = me.start_time;
    for k in &kids {
        ensure!(k.span_context.trace_id() == ctx.trace_id(), "{name}: child in another trace");
        ensure!(k.span_context.span_id() != SpanId::INVALID, "{name}: child without id");
        ensure!(
            k.start_time >= me.start_time && k.end_time <= me.end_time && k.start_time <= k.end_time,
            "{name}: child {} outside its parent",
            k.name
        );
        ensure!(k.start_time >= prev_end, "{name}: child {} overlaps the previous one", k.name);
        prev_end = k.end_time;
        let ret = match attr_of(k, attr::SYSCALL_RET) {
            Some(Value::I64(r)) => *r,
            _ => return Err(format!("{name}: child {} without ret", k.name)),
        };
        let want_ret = match k.name.as_ref() {
            "getpid" => Some(pid),
            "nanosleep" | "fsync" | "clock_gettime" => Some(0),
            "write" => Some(4096),
            "openat" => Some(-i64::from(libc::ENOENT)),
            _ => None,
        };
        ensure!(want_ret.is_none_or(|w| w == ret), "{name}: {} returned {ret}, expected {want_ret:?}", k.name);
        if ret < 0 {
            let et = attr_of(k, attr::ERROR_TYPE).map(|v| v.as_str().into_owned());
            ensure!(et.as_deref() == Some("ENOENT"), "{name}: error.type {et:?}");
            ensure!(k.status == Status::error("ENOENT"), "{name}: status {:?}", k.status);
        } else {
            ensure!(attr_of(k, attr::ERROR_TYPE).is_none() && k.status == Status::Unset, "{name}: {} marked failed", k.name);
        }
    }
    Ok(())
}

/// Runs the self-test; true if everything passed.
pub fn run(expect: Expect) -> bool {
    let mut t = Tally { pass: 0, fail: 0 };
    let main_tid = raw::gettid();
    let exporter = InMemorySpanExporter::default();
    let config = Config {
        // Generous for an emulated guest; records normally arrive within milliseconds.
        record_wait: Duration::from_millis(1000),
        ..Config::default()
    };
    let processor = SpantrackProcessor::with_config(SimpleSpanProcessor::new(exporter.clone()), config);
    let active = processor.is_active();
    let reason = processor.inactive_reason().map(|r| r.to_string());
    let pstats = processor.stats();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
    let tracer = provider.tracer("spantrack-selftest");
    let loaded = SpanHook::find_loaded().ok();
    let module = std::path::Path::new(uapi::PROC_CONTROL).exists();
    println!(
        "# libspanhook: {}; module: {}; processor: {}",
        if loaded.is_some() { "loaded" } else { "not loaded" },
        if module { "loaded" } else { "absent" },
        reason.as_deref().unwrap_or("active")
    );
    t.check(
        &format!("processor {}", if expect == Expect::Active { "active" } else { "a pass-through" }),
        if active == (expect == Expect::Active) {
            Ok(())
        } else {
            Err(format!("active = {active} ({reason:?})"))
        },
    );
    if expect == Expect::Inactive && module {
        // Module loaded, service not preloaded (or library inactive): nothing registered.
        t.check(
            "nothing registered with the module",
            match kernel_stat("processes") {
                Some(0) => Ok(()),
                other => Err(format!("stats processes = {other:?}")),
            },
        );
    }

    let path = format!("/tmp/spantrack-selftest-{}.dat", std::process::id());
    let file = match std::fs::File::create(&path) {
        Ok(f) => f,
        Err(e) => {
            t.check("scratch file", Err(format!("{path}: {e}")));
            return false;
        }
    };
    let sc = Scenario {
        fd: std::os::fd::AsRawFd::as_raw_fd(&file),
        ender: Ender::spawn(),
        block: vec![0x5a; 4096],
    };

    let mut clk = false;
    if active {
        if let Some(h) = &loaded {
            match calibrate(h) {
                Ok(c) => {
                    clk = c;
                    println!("# the SDK's clock read is {}a system call here", if c { "" } else { "not " });
                    t.check("calibration span recorded exactly", Ok(()));
                }
                Err(e) => t.check("calibration span recorded exactly", Err(e)),
            }
        }
    }

    // Pass 0 warms every code path up (lazy initialisation, allocator); pass 1 is checked.
    let warm = run_scenarios(&tracer, &sc);
    let _ = provider.force_flush();
    // The stacks' symbols load in the background (seconds on a slow machine): the checked
    // pass names frames only once they are there.
    if active {
        let t0 = std::time::Instant::now();
        while !spantrack_otel::stacks::host().ready() && t0.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("# stack symbols loaded in {:.1} s", t0.elapsed().as_secs_f64());
    }
    exporter.reset();
    let before = pstats.snapshot();
    let run = warm.and_then(|_| run_scenarios(&tracer, &sc));
    let flushed = provider.force_flush();
    t.check("scenarios ran and flushed", match (&run, &flushed) {
        (Ok(_), Ok(())) => Ok(()),
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(format!("force_flush: {e:?}")),
    });
    let Ok(ctxs) = run else {
        return false;
    };
    let spans = exporter.get_finished_spans().unwrap_or_default();
    for (name, ctx) in &ctxs {
        let what = if expect == Expect::Active && !expected(name).is_empty() {
            format!("{name}: exactly its system calls as children")
        } else {
            format!("{name}: exported unchanged")
        };
        t.check(&what, check_span(name, ctx, &spans, clk, expect, main_tid));
    }
    let n_children: usize = if expect == Expect::Active {
        ctxs.iter()
            .map(|(n, _)| expected(n).iter().filter(|c| **c != CLK || clk).count())
            .sum()
    } else {
        0
    };
    t.check(
        "nothing else exported",
        if spans.len() == ctxs.len() + n_children {
            Ok(())
        } else {
            Err(format!(
                "{} spans exported, expected {} + {n_children}: {:?}",
                spans.len(),
                ctxs.len(),
                spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
            ))
        },
    );
    let after = pstats.snapshot();
    t.check(
        "processor counters",
        if expect == Expect::Active {
            let slow = ctxs.iter().filter(|(n, _)| !expected(n).is_empty()).count() as u64;
            if after.begin_errors == 0
                && after.end_errors == 0
                && after.bad_records == 0
                && after.queue_full == 0
                && after.annotated - before.annotated == slow
                // The fast span is passed through at once, or, when user space timed it at
                // the threshold or above while the kernel (which leaves out the begin/end
                // writes) did not (seen with the slow hpet clock on the debug kernel), it
                // waits for a record that never comes and is exported unchanged: either way
                // exactly one span, and "selftest.fast: exported unchanged" checks the rest.
                && (after.passed_fast - before.passed_fast) + (after.no_record - before.no_record) == 1
            {
                Ok(())
            } else {
                Err(format!("before {before:?} after {after:?}"))
            }
        } else if after == Default::default() {
            Ok(())
        } else {
            Err(format!("{after:?}"))
        },
    );

    if expect == Expect::Active {
        if let Some(h) = &loaded {
            // The fast span passed on at once may still have a record: the kernel's span ends
            // at the end write, which comes after the SDK took the span's end time, so a vCPU
            // stall between the two (seen once on 7.3, quiet host) makes it slow to the kernel
            // alone. Such a record waits in the library's bounded store until evicted; it is
            // the only one that may be left here, and it is taken (and said) before the check.
            // Likewise when user space judged it slow and its wait for the record timed out
            // (`no_record`, the library's `timeouts`) before the record came: seen once on the
            // debug kernel with the hpet clock and 4 vCPUs on a 2-core host (why the record
            // was over a second late is not known); the span went out unchanged and counted,
            // the record is stored.
            let waited = after.no_record > before.no_record;
            if after.passed_fast > before.passed_fast || waited {
                if let Some((_, c)) = ctxs.iter().find(|(n, _)| *n == FAST) {
                    let mut buf = Vec::new();
                    let (tid, sid) = (c.trace_id().to_bytes(), c.span_id().to_bytes());
                    if h.take_record(&tid, &sid, &mut buf, Duration::ZERO) == Ok(true) {
                        if waited {
                            println!("# selftest.fast: its record came after the processor's wait (timed out, counted); taken here");
                        } else {
                            println!("# selftest.fast: the kernel judged it slow (a stall after the SDK's end time); its record taken here");
                        }
                    }
                }
            }
            // spanhook stats: received, evicted, taken, begin errors, end errors, stream errors.
            let s = h.stats();
            t.check(
                "library counters",
                if s.len() >= 8 && s[1] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0 && s[0] == s[2] && s[7] == 0 {
                    Ok(())
                } else {
                    Err(format!("{s:?} (received, evicted, taken, begin/end/stream errors, timeouts, stored)"))
                },
            );
        }
        // spantrack's own threads (the library's reader, the processor's worker, the
        // symbol loader) are not tracked: every other thread of the process is.
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let tasks = names.len() as u64;
        let own = names.iter().filter(|n| ["spanhook-reader", "spantrack-otel", "spantrack-syms"].contains(&n.as_str())).count() as u64;
        t.check(
            "reader, worker and symbol loader threads untracked",
            match (kernel_stat("processes"), kernel_stat("threads")) {
                (Some(1), Some(n)) if own >= 2 && n + own == tasks => Ok(()),
                other => Err(format!("stats (processes, threads) = {other:?}, process threads {names:?}")),
            },
        );
        if let Some(h) = &loaded {
            t.check("threshold change seen live", live_threshold(h));
        }
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    let _ = provider.shutdown();
    println!("# spantrack-rust-demo-svc selftest: {} passed, {} failed", t.pass, t.fail);
    t.fail == 0
}

/// Writes a new threshold to sysfs and waits for the library to report it (it re-reads
/// about once a second); restores the old value.
fn live_threshold(h: &SpanHook) -> Result<(), String> {
    let path = threshold_path();
    let old = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let old_v: u64 = old.trim().parse().map_err(|_| format!("{path}: {old:?}"))?;
    ensure!(h.threshold_ns() == old_v, "library threshold {} != sysfs {old_v}", h.threshold_ns());
    let new_v = old_v + 1_000_000;
    std::fs::write(&path, format!("{new_v}\n")).map_err(|e| format!("write {path}: {e}"))?;
    let t = Instant::now();
    let mut seen = None;
    while t.elapsed() < Duration::from_secs(4) {
        if h.threshold_ns() == new_v {
            seen = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&path, old.as_bytes()).map_err(|e| format!("restore {path}: {e}"))?;
    match seen {
        Some(d) => {
            println!("# threshold change seen after {d:?}");
            Ok(())
        }
        None => Err(format!("library still reports {} after 4 s", h.threshold_ns())),
    }
}
