//! spantrack-bench: the overhead benchmark of issue 5 (paper 000, §4, Fig. 4 and Fig. 5).
//!
//! ```text
//! spantrack-bench serve  --port-file P [--trace none|otel|spantrack] [--getpid K]
//!                        [--sink HOST:PORT] [--sampling 0.1] [--min-child-us 0]
//!                        [--app tiny|realistic] [--db FILE]
//! spantrack-bench client --port-file P --n N [--warmup W] [--app tiny|realistic]
//! spantrack-bench sink   --port-file P
//! spantrack-bench spin   --calls N --mode plain|tracked|in-span|pairs
//! spantrack-bench scale  --threads T --seconds S --mode plain|in-span [--calls-per-span K]
//! ```
//!
//! * `serve`: the currency converter. A request/response RPC over loopback TCP (one line per
//!   request, one line per reply, persistent connection, one thread per connection as the
//!   paper's gRPC currency service). Each request is handled in a server span
//!   `CurrencyService/Convert` (sampling `TraceIdRatioBased(0.1)`, deterministic ids so that
//!   every run samples the same requests) that covers the conversion, `K` extra `getpid()`
//!   and the reply's `write`. `--trace none`: no OpenTelemetry at all; `otel`: SDK with a
//!   batch processor exporting OTLP/HTTP protobuf to the sink; `spantrack`: the same with
//!   `SpantrackProcessor` at the head of the pipeline (needs `LD_PRELOAD=libspanhook.so`
//!   and spantrack.ko loaded, refuses to run otherwise); `--min-child-us U` sets its
//!   `Config::min_child_call` (child spans only for calls of at least U µs).
//!   `--app realistic` (issue 16): the same service also answers JSON requests with real work
//!   per request (JSON parsing, SQLite queries and an insert into the database `--db`,
//!   computation, a JSON reply; see `realistic.rs`), in the same server span.
//! * `client`: sends `W` unmeasured and then `N` measured requests one after the other
//!   (closed loop, one connection), then asks the service to flush and stop; prints one JSON
//!   line: total time, mean and p50/p90/p99 latency (guest CLOCK_MONOTONIC) and the
//!   service's counters; `stop_ns`: the time of the stop request (the provider's shutdown
//!   and final export). `--app realistic`: JSON requests for the realistic service.
//! * `sink`: the OTLP/HTTP receiver: accepts `POST /v1/traces`, counts, answers 200.
//! * `spin`: a `getpid()` loop, untracked / tracked / inside one open span, to profile the
//!   probe path with `perf record` (see `spin.rs`).
//! * `scale`: T threads making system calls inside spans of their own, for the multi-vCPU
//!   contention benchmark of issue 16 (see `scale.rs`).

mod client;
mod otlp;
mod realistic;
mod scale;
mod service;
mod sink;
mod spin;

/// Guest CLOCK_MONOTONIC in ns (the client's and the spin loop's clock).
pub(crate) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn die(msg: &str) -> ! {
    eprintln!("spantrack-bench: {msg}");
    std::process::exit(2);
}

/// `--name value` options of a subcommand.
pub(crate) struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(args: impl Iterator<Item = String>) -> Opts {
        let mut v = Vec::new();
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            let Some(name) = a.strip_prefix("--") else {
                die(&format!("unexpected argument {a:?}"))
            };
            let val = args
                .next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")));
            v.push((name.to_string(), val));
        }
        Opts(v)
    }
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn req(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| die(&format!("--{name} is required")))
    }
    pub(crate) fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| die(&format!("--{name}: bad number {v:?}"))),
        }
    }
}

/// Writes `text` to `path` atomically (write + rename): readers never see half a file.
pub(crate) fn write_file(path: &str, text: &str) {
    let tmp = format!("{path}.tmp");
    if std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        die(&format!("cannot write {path}"));
    }
}

/// Reads a port written by [`write_file`], waiting up to 30 s (guest time) for it.
pub(crate) fn read_port(path: &str) -> u16 {
    for _ in 0..3000 {
        if let Some(p) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return p;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    die(&format!("no port in {path} after 30 s"))
}

/// Names the calling thread (what `perf report --sort comm` shows).
fn set_comm(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME with a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let opts = Opts::parse(args);
    match cmd.as_str() {
        "serve" => set_comm(c"currency-svc"),
        "client" => set_comm(c"bench-client"),
        "sink" => set_comm(c"otlp-sink"),
        _ => {}
    }
    match cmd.as_str() {
        "serve" => service::run(&opts),
        "client" => client::run(&opts),
        "sink" => sink::run(&opts),
        "spin" => spin::run(&opts),
        "scale" => scale::run(&opts),
        _ => die("usage: spantrack-bench serve|client|sink|spin|scale ... (see src/main.rs)"),
    }
}
