//! The service's exporter: OTLP/HTTP protobuf (opentelemetry-otlp) over spantrack-otel's
//! blocking `StdHttpClient` (no async runtime: the batch processor's thread drives the
//! future), wrapped in a counter of exported spans and batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

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
