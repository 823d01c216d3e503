//! `spantrack-tokio-svc STYLE PORT OUT.json`: an axum service on a 2-worker tokio runtime
//! whose requests make known "marker" system calls between awaits (the ground truth of
//! `tests/vm/async_check.py`, the same kinds as `preload/python/tests/vm_async.py`), with
//! the span carried across awaits in one of the two usual ways (STYLE):
//! - `tracing`: `tracing` + `tracing-opentelemetry` (`.instrument(span)`, `in_scope`);
//! - `context`: plain `opentelemetry` (`FutureExt::with_context`, `Context::attach`).
//!
//! Part of each request runs in a task of its own (`tokio::spawn`), so requests move
//! between the two workers; `thread` hands its calls to `spawn_blocking`. The only
//! spantrack code is the one-line processor wrap. An application processor inside it
//! calls getpgid in on_start/on_end: such calls must never appear under a span. SIGTERM
//! stops the server and writes every exported span to OUT.json.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor, Span, SpanData, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

const KINDS: [&str; 5] = ["disk", "stat", "sleep", "thread", "nested"];

#[derive(serde::Deserialize)]
struct Q {
    /// The request's number; negative: a warm-up request (not ground truth).
    #[serde(default)]
    i: i64,
}

/// The application's own processor: its calls run inside spantrack's processor.
#[derive(Debug)]
struct Marker<P>(P);

impl<P: SpanProcessor> SpanProcessor for Marker<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        // SAFETY: plain system call.
        unsafe { libc::getpgid(0) };
        self.0.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        // SAFETY: plain system call.
        unsafe { libc::getpgid(0) };
        self.0.on_end(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, t: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(t)
    }
    fn set_resource(&mut self, r: &Resource) {
        self.0.set_resource(r);
    }
}

struct Work {
    file: File,
    path: String,
    tracing: bool,
}

fn pause(i: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(1 + i % 3))
}

fn unames() {
    for _ in 0..5 {
        // SAFETY: `u` is a valid out-pointer.
        unsafe {
            let mut u: libc::utsname = std::mem::zeroed();
            libc::uname(&mut u);
        }
    }
}

fn ppids() {
    for _ in 0..7 {
        // SAFETY: plain system call.
        unsafe { libc::getppid() };
    }
}

impl Work {
    /// The request's own code after its first await, in a task of its own.
    async fn body(self: Arc<Self>, kind: &'static str, i: u64) {
        match kind {
            "disk" => {
                self.file.write_at(&[b'x'; 64], 0).expect("pwrite");
                pause(i).await;
                self.file.sync_all().expect("fsync");
                pause(i + 1).await;
                self.file.sync_all().expect("fsync");
            }
            "stat" => {
                for j in 0..20 {
                    std::fs::metadata(&self.path).expect("stat");
                    if j % 5 == 4 {
                        pause(i + j).await;
                    }
                }
            }
            "sleep" => std::thread::sleep(Duration::from_millis(2)),
            "thread" => {
                if self.tracing {
                    let span = tracing::Span::current();
                    tokio::task::spawn_blocking(move || span.in_scope(unames)).await.expect("join");
                } else {
                    let cx = Context::current();
                    tokio::task::spawn_blocking(move || {
                        let _g = cx.attach();
                        unames();
                    })
                    .await
                    .expect("join");
                }
            }
            "nested" => {
                pause(i).await;
                if self.tracing {
                    let child = tracing::info_span!("nested-child");
                    async {
                        ppids();
                        pause(i + 1).await;
                    }
                    .instrument(child)
                    .await;
                } else {
                    let tracer = opentelemetry::global::tracer("svc");
                    let cx = Context::current_with_span(tracer.start("nested-child"));
                    async {
                        ppids();
                        pause(i + 1).await;
                    }
                    .with_context(cx.clone())
                    .await;
                    cx.span().end();
                }
                pause(i + 2).await;
            }
            _ => {}
        }
        pause(i).await;
    }

    async fn request(self: Arc<Self>, kind: &'static str, i: u64, warmup: bool) -> &'static str {
        let label = if warmup { "warmup" } else { kind };
        if self.tracing {
            let span = tracing::info_span!("req", "otel.name" = format!("req {kind}"), "req.kind" = label);
            let inner = async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let body = Arc::clone(&self).body(kind, i).instrument(tracing::Span::current());
                tokio::spawn(body).await.expect("join");
                kind
            };
            inner.instrument(span).await
        } else {
            let tracer = opentelemetry::global::tracer("svc");
            let span = tracer
                .span_builder(format!("req {kind}"))
                .with_attributes([KeyValue::new("req.kind", label)])
                .start(&tracer);
            let cx = Context::current_with_span(span);
            let inner = async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let body = Arc::clone(&self).body(kind, i).with_current_context();
                tokio::spawn(body).await.expect("join");
                kind
            };
            let r = inner.with_context(cx.clone()).await;
            cx.span().end();
            r
        }
    }
}

fn json_value(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::I64(n) => n.to_string(),
        Value::F64(f) => format!("{f}"),
        other => format!("{:?}", other.as_str()),
    }
}

fn dump(spans: &[SpanData], path: &str) {
    let mut out = String::from("{\"spans\": [");
    for (n, s) in spans.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let parent = if s.parent_span_id == opentelemetry::trace::SpanId::INVALID {
            "null".to_string()
        } else {
            format!("\"{}\"", s.parent_span_id)
        };
        let _ = write!(
            out,
            "{{\"name\": {:?}, \"span_id\": \"{}\", \"parent\": {parent}, \"kind\": \"{:?}\", \"dur_ns\": {}, \"attributes\": {{",
            s.name.as_ref(),
            s.span_context.span_id(),
            s.span_kind,
            s.end_time.duration_since(s.start_time).map_or(0, |d| d.as_nanos())
        );
        for (k, kv) in s.attributes.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{:?}: {}", kv.key.as_str(), json_value(&kv.value));
        }
        out.push_str("}}");
    }
    out.push_str("]}");
    std::fs::write(path, out).expect("write the spans");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, style, port, out] = &args[..] else {
        eprintln!("usage: spantrack-tokio-svc tracing|context PORT OUT.json");
        std::process::exit(2);
    };
    let tracing_style = match style.as_str() {
        "tracing" => true,
        "context" => false,
        _ => {
            eprintln!("style: tracing or context");
            std::process::exit(2);
        }
    };
    let exporter = InMemorySpanExporter::default();
    let processor = spantrack_otel::SpantrackProcessor::new(Marker(SimpleSpanProcessor::new(exporter.clone())));
    eprintln!(
        "spantrack-tokio-svc: {style}, spantrack {}, activation {}",
        if processor.is_active() { "active" } else { "inactive" },
        spantrack_otel::activation::installed()
    );
    let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    if tracing_style {
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("svc"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("subscriber");
    }
    let path = std::env::temp_dir().join(format!("tokio_svc.{}", std::process::id()));
    let file = File::create(&path).expect("temp file");
    let work = Arc::new(Work {
        file,
        path: path.to_string_lossy().into_owned(),
        tracing: tracing_style,
    });
    let mut app = Router::new();
    for kind in KINDS {
        let w = Arc::clone(&work);
        app = app.route(
            &format!("/{kind}"),
            get(move |Query(q): Query<Q>| {
                Arc::clone(&w).request(kind, q.i.unsigned_abs(), q.i < 0)
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("port")))
        .await
        .expect("bind");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await
        .expect("serve");
    let _ = provider.force_flush();
    dump(&exporter.get_finished_spans().unwrap_or_default(), out);
    let _ = std::fs::remove_file(&path);
    let _ = provider.shutdown();
}
