//! The service's exporter: OTLP/HTTP protobuf (opentelemetry-otlp) over a minimal blocking
//! HTTP/1.1 client on `std::net` (no async runtime: the batch processor's thread drives the
//! future), wrapped in a counter of exported spans and batches.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

/// Plain-HTTP client to the loopback sink: one connection per export, `Connection: close`.
#[derive(Debug)]
pub struct LoopbackHttpClient {
    pub addr: SocketAddr,
}

fn err(msg: impl Into<String>) -> HttpError {
    msg.into().into()
}

impl LoopbackHttpClient {
    fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let timeout = Duration::from_secs(30);
        let mut stream = TcpStream::connect_timeout(&self.addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let body = request.body();
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            request.method(),
            self.addr,
            body.len()
        );
        for (k, v) in request.headers() {
            if k == http::header::CONTENT_LENGTH
                || k == http::header::HOST
                || k == http::header::CONNECTION
            {
                continue;
            }
            head.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap_or("")));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let status: u16 = std::str::from_utf8(&raw)
            .ok()
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("bad HTTP response from the sink"))?;
        Ok(Response::builder().status(status).body(Bytes::new())?)
    }
}

#[async_trait::async_trait]
impl HttpClient for LoopbackHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.send(request)
    }
}

/// Counts what goes through to the wrapped exporter.
#[derive(Debug, Default)]
pub struct Counts {
    pub spans: AtomicU64,
    pub batches: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug)]
pub struct CountingExporter<E> {
    pub inner: E,
    pub counts: Arc<Counts>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.counts
            .spans
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.counts.batches.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.export(batch).await;
        if r.is_err() {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
