//! spantrack-rust-demo-svc: a small HTTP service instrumented with opentelemetry_sdk and
//! `SpantrackProcessor`, exporting OTLP/HTTP protobuf; and the in-VM self-test.
//!
//! ```text
//! spantrack-rust-demo-svc [--listen ADDR] [--port-file PATH] [--workers N] [--export otlp|stdout|none]
//! spantrack-rust-demo-svc --selftest active|inactive
//! ```
//!
//! Serving: listens on `ADDR` (default `127.0.0.1:8081`; port 0 picks one, written to
//! `--port-file`), continues the caller's W3C `traceparent`, exports through a batch
//! processor to `$OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4318`, path
//! `/v1/traces`; `--export stdout` prints one JSON line per span instead). Stops on
//! SIGTERM/SIGINT after exporting what is left. Endpoints: see `http.rs`.
//!
//! Run it as `LD_PRELOAD=target/release/libspanhook.so spantrack-rust-demo-svc` with
//! spantrack.ko loaded to get the slow spans annotated; without either it behaves the same,
//! minus the annotation.

mod exporters;
mod http;
mod raw;
mod selftest;

use std::net::TcpListener;
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use spantrack_otel::SpantrackProcessor;

const USAGE: &str = "usage: spantrack-rust-demo-svc [--listen ADDR] [--port-file PATH] [--workers N] \
[--export otlp|stdout|none]\n       spantrack-rust-demo-svc --selftest active|inactive";

fn die(msg: &str) -> ! {
    eprintln!("spantrack-rust-demo-svc: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn resource() -> Resource {
    let b = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        b.build()
    } else {
        b.with_service_name("spantrack-rust-demo").build()
    }
}

fn provider(export: &str) -> SdkTracerProvider {
    let builder = SdkTracerProvider::builder().with_resource(resource());
    let builder = match export {
        "otlp" => {
            // The builder reads OTEL_EXPORTER_OTLP_ENDPOINT (and _TRACES_ENDPOINT) itself.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(spantrack_otel::http_client::StdHttpClient {
                    timeout: Duration::from_secs(10),
                })
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_else(|e| die(&format!("OTLP exporter: {e}")));
            builder.with_span_processor(SpantrackProcessor::new(BatchSpanProcessor::builder(exporter).build()))
        }
        "stdout" => builder.with_span_processor(SpantrackProcessor::new(
            BatchSpanProcessor::builder(exporters::JsonLinesExporter).build(),
        )),
        "none" => builder,
        other => die(&format!("unknown --export {other:?}")),
    };
    builder.build()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:8081".to_string();
    let mut port_file = None;
    let mut workers = 8usize;
    let mut export = "otlp".to_string();
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| die(&format!("{a} needs a value")));
        match a.as_str() {
            "--selftest" => {
                let mode = match val().as_str() {
                    "active" => selftest::Expect::Active,
                    "inactive" => selftest::Expect::Inactive,
                    other => die(&format!("--selftest {other:?}")),
                };
                std::process::exit(if selftest::run(mode) { 0 } else { 1 });
            }
            "--listen" => listen = val(),
            "--port-file" => port_file = Some(val()),
            "--workers" => workers = val().parse().unwrap_or_else(|_| die("--workers N")),
            "--export" => export = val(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => die(&format!("unknown argument {other:?}")),
        }
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| die(&format!("bind {listen}: {e}")));
    let addr = listener.local_addr().unwrap_or_else(|e| die(&format!("local_addr: {e}")));
    let provider = provider(&export);
    if let Some(p) = &port_file {
        let tmp = format!("{p}.tmp");
        if std::fs::write(&tmp, format!("{}\n", addr.port())).and_then(|()| std::fs::rename(&tmp, p)).is_err() {
            die(&format!("cannot write {p}"));
        }
    }
    let state = match spantrack_otel::SpanHook::find() {
        Ok(_) => "spantrack active".to_string(),
        Err(why) => format!("spantrack off: {why}"),
    };
    eprintln!("spantrack-rust-demo-svc: listening on {addr} ({state}; export {export})");
    http::serve(listener, provider.clone(), workers);
    if let Err(e) = provider.shutdown() {
        eprintln!("spantrack-rust-demo-svc: shutdown: {e:?}");
    }
}
