//! spantrack-otel: annotates the slow spans of a Rust service with the system calls the
//! kernel module spantrack.ko recorded for them, inside the service's own OpenTelemetry
//! pipeline. One line in the service:
//!
//! ```no_run
//! # use opentelemetry_sdk::trace::{SdkTracerProvider, BatchSpanProcessor, InMemorySpanExporter};
//! # let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder()
//!     .with_span_processor(spantrack_otel::SpantrackProcessor::new(
//!         BatchSpanProcessor::builder(exporter).build(),
//!     ))
//!     .build();
//! ```
//!
//! and `LD_PRELOAD=libspanhook.so` when it runs. The processor finds the preloaded library
//! with `dlsym` ([`hook`]); without it (or without the module) it passes every span through
//! unchanged. With it, each span's thread writes the span's begin and end to the kernel, and
//! a slow span reaches the inner processor with `spantrack.*` attributes and one child span
//! per system call ([`annotate`]), and, when the module accounted its scheduler time, where
//! its wall time went, its longest waits as events (with where they blocked: [`stacks`]) and
//! links to the spans that woke it ([`sched`]).

pub mod activation;
pub mod annotate;
pub mod errno;
pub mod hook;
#[cfg(feature = "http-client")]
pub mod http_client;
pub mod processor;
pub mod sched;
pub mod stacks;
pub mod threshold;

pub use hook::SpanHook;
pub use processor::{Config, ProcessorStats, SpantrackProcessor, StatsSnapshot};

#[cfg(test)]
mod processor_tests;
