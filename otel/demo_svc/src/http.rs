//! The demo service: a minimal HTTP/1.1 server on `std::net` (one request per connection),
//! a server span per request continuing the caller's W3C `traceparent`, and endpoints that
//! are slow for different reasons:
//!
//! | request | what the span does |
//! | --- | --- |
//! | `GET /convert?fsync=N` | N times: write 64 KiB to a file (under `$SPANTRACK_DEMO_DIR`, default `/tmp`) and `fsync` it |
//! | `GET /convert?sleep_ms=N` | sleeps N ms (`clock_nanosleep`) |
//! | `GET /convert?lock=1` | has a background thread take a mutex for 20 ms, then takes it too (`futex`) |
//! | `GET /fast` | nothing |
//! | `POST /flush` | (not traced) exports the spans ended so far |
//! | `GET /healthz` | (not traced) `ok` |
//!
//! Parameters of `/convert` combine (`?fsync=1&sleep_ms=5`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{global, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// Set by SIGTERM / SIGINT.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGTERM and SIGINT set [`STOP`] (the accept loop notices within 200 ms).
pub fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// The mutex `/convert?lock=1` contends on.
static CONTENDED: Mutex<()> = Mutex::new(());
/// Set by the holder thread once it holds [`CONTENDED`].
static HELD: AtomicBool = AtomicBool::new(false);
/// Set by the requester just before it takes [`CONTENDED`]: the holder's 20 ms count from
/// then, so that the wait is ~20 ms however late the requester saw [`HELD`] (a loaded,
/// emulated machine can deschedule it for longer than that).
static WAITING: AtomicBool = AtomicBool::new(false);
/// Asks the holder thread to take [`CONTENDED`] for 20 ms.
static HOLD: Mutex<Option<mpsc::Sender<()>>> = Mutex::new(None);

/// The background thread that holds the mutex ~20 ms whenever a `lock=1` request asks.
fn start_lock_holder() {
    let (tx, rx) = mpsc::channel::<()>();
    *HOLD.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    let _ = std::thread::Builder::new().name("lock-holder".into()).spawn(move || {
        while rx.recv().is_ok() {
            let g = CONTENDED.lock().unwrap_or_else(|e| e.into_inner());
            HELD.store(true, Ordering::Release);
            let t = Instant::now();
            while !WAITING.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(Duration::from_millis(20));
            HELD.store(false, Ordering::Release);
            WAITING.store(false, Ordering::Release);
            drop(g);
        }
    });
}

/// Makes the holder take the mutex, waits until it has it, then takes it too: the calling
/// thread waits ~20 ms in `futex`. Returns how long it waited.
fn contend() -> Duration {
    let t = Instant::now();
    let sent = HOLD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|tx| tx.send(()).is_ok());
    if sent {
        let mut spins = 0u64;
        while !HELD.load(Ordering::Acquire) && spins < 1_000_000_000 {
            std::hint::spin_loop();
            spins += 1;
        }
        WAITING.store(true, Ordering::Release);
    }
    drop(CONTENDED.lock().unwrap_or_else(|e| e.into_inner()));
    t.elapsed()
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
}

struct HeaderExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(&key.to_ascii_lowercase()).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len.min(1 << 20)];
    r.read_exact(&mut body)?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    Ok(Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
    }))
}

fn respond(mut stream: &TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Error",
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes())
}

fn param(req: &Request, k: &str) -> u64 {
    req.query.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The work of `/convert`: returns a short description or an error.
fn convert(req: &Request) -> Result<String, String> {
    let mut done = Vec::new();
    let fsyncs = param(req, "fsync");
    if fsyncs > 0 {
        let dir = std::env::var("SPANTRACK_DEMO_DIR").unwrap_or_else(|_| "/tmp".into());
        let path = format!("{dir}/spantrack-demo-{}.dat", crate::raw::gettid());
        let mut f = std::fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?;
        let block = vec![0x5au8; 64 * 1024];
        for _ in 0..fsyncs {
            f.write_all(&block).map_err(|e| format!("write {path}: {e}"))?;
            f.sync_all().map_err(|e| format!("fsync {path}: {e}"))?;
        }
        drop(f);
        let _ = std::fs::remove_file(&path);
        done.push(format!("fsync={fsyncs}"));
    }
    let sleep_ms = param(req, "sleep_ms");
    if sleep_ms > 0 {
        std::thread::sleep(Duration::from_millis(sleep_ms));
        done.push(format!("sleep_ms={sleep_ms}"));
    }
    if param(req, "lock") > 0 {
        done.push(format!("lock_wait_us={}", contend().as_micros()));
    }
    Ok(done.join(","))
}

fn handle(stream: TcpStream, tracer: &SdkTracer, provider: &SdkTracerProvider) {
    let req = match read_request(&stream) {
        Ok(Some(r)) => r,
        _ => return,
    };
    match (req.method.as_str(), req.path.as_str()) {
        (_, "/healthz") => {
            let _ = respond(&stream, 200, "{\"ok\":true}");
            return;
        }
        ("POST", "/flush") => {
            let r = provider.force_flush();
            let _ = respond(&stream, 200, &format!("{{\"flushed\":{}}}", r.is_ok()));
            return;
        }
        _ => {}
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(&req.headers));
    let route = match req.path.as_str() {
        "/convert" | "/fast" => req.path.clone(),
        _ => "unknown".to_string(),
    };
    let span = tracer
        .span_builder(format!("{} {route}", req.method))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", req.method.clone()),
            KeyValue::new("url.path", req.path.clone()),
            KeyValue::new("http.route", route.clone()),
        ])
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(span);
    let _guard = cx.clone().attach();
    let span = cx.span();
    let sc = span.span_context().clone();
    let (status, body) = match route.as_str() {
        "/fast" => (200, String::new()),
        "/convert" => match convert(&req) {
            Ok(d) => (200, d),
            Err(e) => {
                span.set_status(Status::error(e.clone()));
                (500, e)
            }
        },
        _ => (404, "no such route".to_string()),
    };
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
    let body = format!(
        "{{\"route\":\"{route}\",\"did\":\"{body}\",\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
        sc.trace_id(),
        sc.span_id()
    );
    let _ = respond(&stream, status, &body);
    span.end();
}

/// Serves until SIGTERM/SIGINT, with `workers` request threads.
pub fn serve(listener: TcpListener, provider: SdkTracerProvider, workers: usize) {
    install_signal_handlers();
    start_lock_holder();
    let tracer = provider.tracer_with_scope(
        opentelemetry::InstrumentationScope::builder("spantrack-rust-demo-svc").build(),
    );
    global::set_tracer_provider(provider.clone());
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::new();
    for i in 0..workers.max(1) {
        let (rx, tracer, provider) = (Arc::clone(&rx), tracer.clone(), provider.clone());
        let h = std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || loop {
                let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                match next {
                    Ok(s) => handle(s, &tracer, &provider),
                    Err(_) => return,
                }
            });
        if let Ok(h) = h {
            handles.push(h);
        }
    }
    let _ = listener.set_nonblocking(true);
    while !STOP.load(Ordering::Relaxed) {
        let mut p = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 200) };
        if n <= 0 {
            continue;
        }
        while let Ok((s, _)) = listener.accept() {
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            if tx.send(s).is_err() {
                break;
            }
        }
    }
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
}
