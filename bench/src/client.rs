//! The client: `warmup` unmeasured requests, then `n` measured ones, one at a time on one
//! connection; then asks the service for its counters (which also stops it). Prints one
//! JSON line. Times are guest CLOCK_MONOTONIC (vDSO, no system call): under QEMU
//! `-icount shift=0`, one nanosecond is one executed guest instruction.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use crate::{die, mono_ns, read_port, Opts};

const PAIRS: &[(&str, &str)] = &[
    ("EUR", "USD"),
    ("USD", "JPY"),
    ("GBP", "CHF"),
    ("CAD", "AUD"),
    ("SEK", "NOK"),
    ("PLN", "CZK"),
    ("INR", "EUR"),
];

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

pub fn run(opts: &Opts) {
    let port = read_port(opts.req("port-file"));
    let n: usize = opts.num("n", 1000);
    let warmup: usize = opts.num("warmup", 200);
    let stream =
        TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| die(&format!("connect: {e}")));
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone().unwrap_or_else(|e| die(&format!("{e}")));
    let mut r = BufReader::new(stream);
    let mut line = String::with_capacity(64);
    let realistic = match opts.get("app").unwrap_or("tiny") {
        "tiny" => false,
        "realistic" => true,
        other => die(&format!("unknown --app {other:?} (tiny|realistic)")),
    };
    let reqs: Vec<String> = if realistic {
        crate::realistic::requests(997)
    } else {
        (0..97)
            .map(|i| {
                let (a, b) = PAIRS[i % PAIRS.len()];
                format!("C {a} {b} {}\n", 1000 + i * 12_345)
            })
            .collect()
    };
    let mut lat = Vec::with_capacity(n);
    let call = |i: usize, line: &mut String, out: &mut TcpStream, r: &mut BufReader<TcpStream>| {
        out.write_all(reqs[i % reqs.len()].as_bytes())
            .unwrap_or_else(|e| die(&format!("send: {e}")));
        line.clear();
        if r.read_line(line).unwrap_or(0) == 0 || line.starts_with("ERR") || line.starts_with("{\"error\"") {
            die(&format!("bad reply {line:?}"));
        }
    };
    for i in 0..warmup {
        call(i, &mut line, &mut out, &mut r);
    }
    // The realistic service: mark the start of the measured requests (the service reports
    // its threads' CPU time since the mark); the client's own CPU time too.
    let self_ns = || {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()))
            .unwrap_or(0)
    };
    if realistic {
        out.write_all(b"M\n").unwrap_or_else(|e| die(&format!("send: {e}")));
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            die("no reply to the mark");
        }
    }
    let c0 = self_ns();
    let t0 = mono_ns();
    for i in 0..n {
        let a = mono_ns();
        call(i, &mut line, &mut out, &mut r);
        lat.push(mono_ns() - a);
    }
    let total = mono_ns() - t0;
    let client_cpu = self_ns() - c0;
    // The stop (the provider's shutdown: what is still queued is exported, spantrack's
    // worker drained) is timed apart: `total_ns + stop_ns` holds every deferred cost.
    let s0 = mono_ns();
    out.write_all(b"S\n")
        .unwrap_or_else(|e| die(&format!("send: {e}")));
    line.clear();
    let _ = r.read_line(&mut line);
    let stop = mono_ns() - s0;
    let server = if line.trim().starts_with('{') {
        line.trim().to_string()
    } else {
        "null".to_string()
    };
    lat.sort_unstable();
    println!(
        "{{\"n\":{n},\"total_ns\":{total},\"stop_ns\":{stop},\"client_cpu_ns\":{client_cpu},\"mean_ns\":{},\"p50_ns\":{},\"p90_ns\":{},\"p99_ns\":{},\"max_ns\":{},\"server\":{server}}}",
        total / n.max(1) as u64,
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        lat.last().copied().unwrap_or(0)
    );
}
