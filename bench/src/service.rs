//! The currency-converter service (the paper's "currency service", reduced to its RPC).
//!
//! Protocol, one line each way on a persistent loopback TCP connection:
//! `C <from> <to> <amount in cents>` -> `<to> <converted amount>`;
//! `S` -> shuts the tracer provider down (exports everything), replies one JSON line of
//! counters and exits the process.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanId, SpanKind, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, IdGenerator, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use spantrack_otel::{Config, ProcessorStats, SpantrackProcessor};

use crate::otlp::{CountingExporter, Counts};
use spantrack_otel::http_client::StdHttpClient;
use crate::{die, read_port, write_file, Opts};

/// Rates against EUR (the OpenTelemetry demo's currency service has the same table shape):
/// the first 12 of the realistic service's table, so that both convert alike.
const RATES: &[(&str, f64)] = crate::realistic::RATES.split_at(12).0;

fn rate(code: &str) -> Option<f64> {
    RATES.iter().find(|(c, _)| *c == code).map(|(_, r)| *r)
}

/// Trace and span ids from a counter through splitmix64: as random-looking as the SDK's
/// (the ratio sampler reads the trace id), but the same sequence in every run, so that each
/// run samples the same requests.
#[derive(Debug, Default)]
struct SeqIds(AtomicU64);

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl IdGenerator for SeqIds {
    fn new_trace_id(&self) -> TraceId {
        let n = self.0.fetch_add(2, Ordering::Relaxed);
        let v = (u128::from(splitmix(n)) << 64) | u128::from(splitmix(n + 1));
        TraceId::from_bytes(v.max(1).to_be_bytes())
    }
    fn new_span_id(&self) -> SpanId {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        SpanId::from_bytes(splitmix(n ^ 0x5555_5555_5555_5555).max(1).to_be_bytes())
    }
}

struct Shared {
    tracer: Option<SdkTracer>,
    provider: Option<SdkTracerProvider>,
    counts: Arc<Counts>,
    st: Option<Arc<ProcessorStats>>,
    getpid: u32,
    requests: AtomicU64,
    sampled: AtomicU64,
    /// `--app realistic`: the database of the realistic service (see `realistic.rs`).
    db: Option<std::sync::Mutex<crate::realistic::Db>>,
    /// The threads' CPU times when the client marked the start of its measured requests
    /// (`M`): the stop reports each thread's CPU time since then.
    mark: std::sync::Mutex<Option<Vec<(u64, String, u64)>>>,
}

/// Diagnostics (`BENCH_PHASES=1` in the service's environment): the service thread's CPU
/// time (`CLOCK_THREAD_CPUTIME_ID`; under -icount, instructions, its kernel time included) in
/// each phase of the sampled requests of the realistic app, summed: span start, the
/// request's work, the reply's write, span end. Each reading is a system call, three of
/// them inside the span: off by default, never in the figures.
static PHASES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
/// Unsampled requests: count, CPU time from before the span's start to after its end; and
/// every request: CPU time between the previous request's end and this one's start (reading it).
static UNSAMPLED: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static BETWEEN: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static PHASES_ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn phases_on() -> bool {
    *PHASES_ON.get_or_init(|| std::env::var_os("BENCH_PHASES").is_some_and(|v| v == "1"))
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// (tid, name, CPU time in ns) of each thread of this process, from
/// /proc/self/task/*/schedstat (the scheduler's exact run time; under -icount,
/// instructions) and comm.
pub(crate) fn thread_times() -> Vec<(u64, String, u64)> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return v };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else { continue };
        let p = e.path();
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()));
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if let Some(ns) = ns {
            v.push((tid, comm.trim().replace(['"', '\\'], "_"), ns));
        }
    }
    v
}

fn provider(
    mode: &str,
    sink: SocketAddr,
    sampling: f64,
    min_child_us: u64,
    counts: Arc<Counts>,
) -> (SdkTracerProvider, Option<Arc<ProcessorStats>>) {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(StdHttpClient { timeout: Duration::from_secs(30) })
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("http://{sink}/v1/traces"))
        .with_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| die(&format!("OTLP exporter: {e}")));
    let batch = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        counts,
    })
    .build();
    let builder = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("currencyservice")
                .build(),
        )
        .with_sampler(Sampler::TraceIdRatioBased(sampling))
        .with_id_generator(SeqIds::default());
    match mode {
        "otel" => (builder.with_span_processor(batch).build(), None),
        "spantrack" => {
            let config = Config {
                min_child_call: Duration::from_micros(min_child_us),
                ..Config::default()
            };
            let p = SpantrackProcessor::with_config(batch, config);
            if !p.is_active() {
                die(&format!(
                    "--trace spantrack: {} (run with LD_PRELOAD=libspanhook.so and spantrack.ko loaded)",
                    p.inactive_reason().map_or("inactive".to_string(), |r| r.to_string())
                ));
            }
            let stats = p.stats();
            (builder.with_span_processor(p).build(), Some(stats))
        }
        other => die(&format!("unknown --trace {other:?}")),
    }
}

/// `--layout-seed S` (0: none): a heap pad in the main thread and, in each connection thread,
/// a heap pad and a stack shift, all sized from `S`. The service's own instruction count
/// depends on where its data lies (alignment paths of memcpy/memcmp, the allocator's bins):
/// the realistic benchmark runs each repetition under another layout and reports the
/// median, so that a configuration is not judged by one lucky or unlucky layout.
fn layout_pad(seed: u64, what: u64) -> usize {
    if seed == 0 {
        return 0;
    }
    16 * (1 + (splitmix(seed.wrapping_mul(31).wrapping_add(what)) % 1024) as usize)
}

/// Runs `f` `depth` frames further down the stack.
#[inline(never)]
fn stack_shifted(depth: usize, f: &mut dyn FnMut()) {
    let pad = std::hint::black_box([0u8; 48]);
    if depth == 0 {
        f();
    } else {
        stack_shifted(depth - 1, f);
    }
    std::hint::black_box(&pad);
}

pub fn run(opts: &Opts) {
    let seed: u64 = opts.num("layout-seed", 0);
    if seed != 0 {
        std::mem::forget(std::hint::black_box(vec![1u8; layout_pad(seed, 1)]));
    }
    let port_file = opts.req("port-file");
    let mode = opts.get("trace").unwrap_or("otel");
    let getpid: u32 = opts.num("getpid", 0);
    let sampling: f64 = opts.num("sampling", 0.1);
    let min_child_us: u64 = opts.num("min-child-us", 0);
    let counts = Arc::new(Counts::default());
    let db = match opts.get("app").unwrap_or("tiny") {
        "tiny" => None,
        "realistic" => Some(crate::realistic::open(opts.get("db").unwrap_or("/tmp/spantrack-bench-currency.db"))),
        other => die(&format!("unknown --app {other:?} (tiny|realistic)")),
    };
    let (provider, st) = if mode == "none" {
        (None, None)
    } else {
        let sink: u16 = match opts.get("sink-port-file") {
            Some(f) => read_port(f),
            None => die("--sink-port-file is required unless --trace none"),
        };
        let (p, st) = provider(
            mode,
            SocketAddr::from(([127, 0, 0, 1], sink)),
            sampling,
            min_child_us,
            Arc::clone(&counts),
        );
        (Some(p), st)
    };
    let tracer = provider.as_ref().map(|p| {
        p.tracer_with_scope(opentelemetry::InstrumentationScope::builder("currencyservice").build())
    });
    let shared = Arc::new(Shared {
        tracer,
        provider,
        counts,
        st,
        getpid,
        requests: AtomicU64::new(0),
        sampled: AtomicU64::new(0),
        db,
        mark: std::sync::Mutex::new(None),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| die(&format!("bind: {e}")));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| die(&format!("{e}")));
    if shared.st.is_some() {
        // The processor loads the kernel's symbols and this binary's debug information once,
        // in a thread of its own, from its start (for the waits' stacks): one-time work of
        // ~0.2 s of guest CPU that would otherwise fall into the first measured requests of a
        // one-vCPU guest. Measured here, apart: ready before the client connects.
        let t0 = std::time::Instant::now();
        while !spantrack_otel::stacks::host().ready() && t0.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("spantrack-bench serve: stack symbols loaded {} ms after the processor started", t0.elapsed().as_millis());
    }
    write_file(port_file, &format!("{port}\n"));
    // One thread per connection, as the paper's gRPC service.
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        let sh = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                if seed == 0 {
                    return serve_conn(s, &sh);
                }
                std::mem::forget(std::hint::black_box(vec![1u8; layout_pad(seed, 2)]));
                let mut s = Some(s);
                stack_shifted(layout_pad(seed, 3) / 16 % 64, &mut || {
                    if let Some(s) = s.take() {
                        serve_conn(s, &sh);
                    }
                });
            });
    }
}

fn serve_conn(stream: TcpStream, sh: &Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    let mut line = String::with_capacity(64);
    let mut reply = String::with_capacity(64);
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.starts_with('{') {
            if convert_realistic(sh, &line, &mut out, &mut reply).is_err() {
                return;
            }
            continue;
        }
        let mut f = line.split_ascii_whitespace();
        match f.next() {
            Some("C") => {
                let (from, to) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                let cents: i64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                if convert(sh, from, to, cents, &mut out, &mut reply).is_err() {
                    return;
                }
            }
            Some("S") => stop(sh, &mut out),
            Some("M") => {
                *sh.mark.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread_times());
                if out.write_all(b"ok\n").is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// One request: a server span around the conversion, `getpid` extra system calls and the reply.
fn convert(
    sh: &Shared,
    from: &str,
    to: &str,
    cents: i64,
    out: &mut TcpStream,
    reply: &mut String,
) -> std::io::Result<()> {
    let mut span = server_span(
        sh,
        [
            KeyValue::new("app.currency.from", from.to_string()),
            KeyValue::new("app.currency.to", to.to_string()),
        ],
    );
    reply.clear();
    match (rate(from), rate(to)) {
        (Some(a), Some(b)) => {
            let v = (cents as f64 / 100.0) / a * b;
            // Round to cents, as money is.
            let c = (v * 100.0).round() as i64;
            use std::fmt::Write as _;
            let _ = writeln!(reply, "{to} {}.{:02}", c / 100, (c % 100).abs());
            if let Some(s) = span.as_mut() {
                s.set_attribute(KeyValue::new("app.currency.amount_cents", c));
            }
        }
        _ => {
            reply.push_str("ERR unknown currency\n");
            if let Some(s) = span.as_mut() {
                s.set_status(opentelemetry::trace::Status::error("unknown currency"));
            }
        }
    }
    finish(sh, span, out, reply)
}

/// Counts a request and starts its server span `CurrencyService/Convert` (with `extra`
/// attributes), counting it if sampled; `None` without a tracer.
fn server_span<const N: usize>(sh: &Shared, extra: [KeyValue; N]) -> Option<opentelemetry_sdk::trace::Span> {
    sh.requests.fetch_add(1, Ordering::Relaxed);
    let span = sh.tracer.as_ref().map(|t| {
        t.span_builder("CurrencyService/Convert")
            .with_kind(SpanKind::Server)
            .with_attributes(
                [
                    KeyValue::new("rpc.system", "spantrack-bench"),
                    KeyValue::new("rpc.service", "CurrencyService"),
                    KeyValue::new("rpc.method", "Convert"),
                ]
                .into_iter()
                .chain(extra),
            )
            .start(t)
    });
    if span.as_ref().is_some_and(|s| s.span_context().is_sampled()) {
        sh.sampled.fetch_add(1, Ordering::Relaxed);
    }
    span
}

/// Ends a request: `getpid` extra system calls, the reply, then the span's end.
fn finish(
    sh: &Shared,
    span: Option<opentelemetry_sdk::trace::Span>,
    out: &mut TcpStream,
    reply: &str,
) -> std::io::Result<()> {
    for _ in 0..sh.getpid {
        // SAFETY: plain system call without arguments (libc's getpid() is not cached, but
        // this makes sure it is a real system call).
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    let r = out.write_all(reply.as_bytes());
    if let Some(mut s) = span {
        s.end();
    }
    r
}

/// One request of the realistic service (`--app realistic`, a JSON line): the same server
/// span as [`convert`] around the parsing, the SQLite queries and write, the computation,
/// the rendering and the reply's `write`.
fn convert_realistic(
    sh: &Shared,
    line: &str,
    out: &mut TcpStream,
    reply: &mut String,
) -> std::io::Result<()> {
    let Some(db) = sh.db.as_ref() else {
        return out.write_all(b"{\"error\":\"serve without --app realistic\"}\n");
    };
    let ph = phases_on() && sh.tracer.is_some();
    let t0 = if ph { thread_cpu_ns() } else { 0 };
    let mut span = server_span(sh, []);
    let sampled = ph && span.as_ref().is_some_and(|s| s.span_context().is_sampled());
    let t1 = if sampled { thread_cpu_ns() } else { 0 };
    reply.clear();
    let o = crate::realistic::handle(db, line, reply);
    if let Some(s) = span.as_mut() {
        if o.ok {
            s.set_attribute(KeyValue::new("app.currency.amount_nanos", o.amount_nanos));
            s.set_attribute(KeyValue::new("app.conversion.flagged", o.flagged));
        } else {
            s.set_status(opentelemetry::trace::Status::error("bad request"));
        }
    }
    if ph && !sampled {
        let r = finish(sh, span, out, reply);
        let t = thread_cpu_ns();
        UNSAMPLED[0].fetch_add(1, Ordering::Relaxed);
        UNSAMPLED[1].fetch_add(t - t0, Ordering::Relaxed);
        let last = BETWEEN[2].swap(t, Ordering::Relaxed);
        if last != 0 {
            BETWEEN[0].fetch_add(1, Ordering::Relaxed);
            BETWEEN[1].fetch_add(t0 - last, Ordering::Relaxed);
        }
        return r;
    }
    if !sampled {
        return finish(sh, span, out, reply);
    }
    let t2 = thread_cpu_ns();
    let r = out.write_all(reply.as_bytes());
    let t3 = thread_cpu_ns();
    if let Some(mut s) = span {
        s.end();
    }
    let t4 = thread_cpu_ns();
    let last = BETWEEN[2].swap(t4, Ordering::Relaxed);
    if last != 0 {
        BETWEEN[0].fetch_add(1, Ordering::Relaxed);
        BETWEEN[1].fetch_add(t0 - last, Ordering::Relaxed);
    }
    for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, 1].into_iter().enumerate() {
        PHASES[i].fetch_add(d, Ordering::Relaxed);
    }
    r
}

/// Exports what is left, replies the counters, exits.
fn stop(sh: &Shared, out: &mut TcpStream) -> ! {
    // CPU time of each thread (by name) since the client's mark, before the shutdown.
    let threads = sh.mark.lock().unwrap_or_else(|e| e.into_inner()).take().map(|m| {
        let mut by_name: Vec<(String, u64)> = Vec::new();
        for (tid, name, ns) in thread_times() {
            let before = m.iter().find(|(t, _, _)| *t == tid).map_or(0, |(_, _, b)| *b);
            let d = ns.saturating_sub(before);
            match by_name.iter_mut().find(|(n, _)| *n == name) {
                Some((_, x)) => *x += d,
                None => by_name.push((name, d)),
            }
        }
        by_name
    });
    let shutdown_ok = sh.provider.as_ref().is_none_or(|p| p.shutdown().is_ok());
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut j = format!(
        "{{\"requests\":{},\"sampled\":{},\"exported_spans\":{},\"export_batches\":{},\"export_failed\":{},\"shutdown_ok\":{}",
        g(&sh.requests),
        g(&sh.sampled),
        g(&sh.counts.spans),
        g(&sh.counts.batches),
        g(&sh.counts.failed),
        shutdown_ok
    );
    if let Some(st) = &sh.st {
        let s = st.snapshot();
        j.push_str(&format!(
            ",\"st_begin_errors\":{},\"st_end_errors\":{},\"st_passed_fast\":{},\"st_queued\":{},\"st_queue_full\":{},\"st_annotated\":{},\"st_no_record\":{},\"st_bad_records\":{},\"st_children\":{}",
            s.begin_errors, s.end_errors, s.passed_fast, s.queued, s.queue_full, s.annotated, s.no_record, s.bad_records, s.children
        ));
    }
    if phases_on() {
        let p: Vec<u64> = PHASES.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        j.push_str(&format!(
            ",\"phases_sampled\":{{\"n\":{},\"start_ns\":{},\"work_ns\":{},\"reply_ns\":{},\"end_ns\":{}}}",
            p[4], p[0], p[1], p[2], p[3]
        ));
        let u = |c: &AtomicU64| c.load(Ordering::Relaxed);
        j.push_str(&format!(
            ",\"phases_unsampled\":{{\"n\":{},\"total_ns\":{}}},\"phases_between\":{{\"n\":{},\"total_ns\":{}}}",
            u(&UNSAMPLED[0]), u(&UNSAMPLED[1]), u(&BETWEEN[0]), u(&BETWEEN[1])
        ));
    }
    if phases_on() {
        // Context switches of each thread over the whole run (diagnostics).
        j.push_str(",\"ctxsw\":{");
        let mut first = true;
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for e in dir.flatten() {
                let st = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                let name = st.lines().find_map(|l| l.strip_prefix("Name:")).unwrap_or("").trim().replace(['"', '\\'], "_");
                let f = |k: &str| st.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
                // minflt, majflt: fields 10 and 12 of stat (after the comm's closing paren).
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |x| x.1).split_whitespace().collect();
                let fl = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                j.push_str(&format!(
                    "{}\"{}\":[{},{},{},{}]",
                    if first { "" } else { "," },
                    name,
                    f("voluntary_ctxt_switches:"),
                    f("nonvoluntary_ctxt_switches:"),
                    fl(7),
                    fl(9)
                ));
                first = false;
            }
        }
        j.push('}');
    }
    if let Some(t) = threads {
        j.push_str(",\"threads_ns\":{");
        for (i, (name, ns)) in t.iter().enumerate() {
            j.push_str(&format!("{}\"{name}\":{ns}", if i > 0 { "," } else { "" }));
        }
        j.push('}');
    }
    j.push_str("}\n");
    let _ = out.write_all(j.as_bytes());
    let _ = out.flush();
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_sample_about_ten_percent() {
        let a = SeqIds::default();
        let b = SeqIds::default();
        assert_eq!(a.new_trace_id(), b.new_trace_id());
        let s = Sampler::TraceIdRatioBased(0.1);
        let ids = SeqIds::default();
        let mut n = 0;
        for _ in 0..10_000 {
            let t = ids.new_trace_id();
            use opentelemetry_sdk::trace::ShouldSample;
            let r = s.should_sample(None, t, "x", &SpanKind::Server, &[], &[]);
            if r.decision == opentelemetry_sdk::trace::SamplingDecision::RecordAndSample {
                n += 1;
            }
        }
        assert!((900..1100).contains(&n), "{n}");
    }
}
