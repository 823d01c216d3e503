//! [`SpantrackProcessor`]: the head of a Rust service's span pipeline. It tells the kernel
//! where each span begins and ends (through libspanhook.so), and hands slow spans, annotated
//! with the system calls the kernel recorded, to the processor it wraps.
//!
//! Service threads only write the begin/end (one `write(2)` each) and, for a span that may
//! be slow, push it onto a bounded queue: no lock, no clock read, no wake-up (any system call
//! there would land in the record of an enclosing span). One worker thread (untracked by the
//! kernel) polls the queue, waits for the records, builds the annotated span and its
//! children, and feeds the inner processor. Without the library (or with an inactive one)
//! the processor is a pure pass-through.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::trace::Span as _;
use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

use crate::annotate::{annotate_with, Record};
use crate::hook::{Absent, SpanHook, RECORD_MAX};

/// Tunables of a [`SpantrackProcessor`].
#[derive(Clone, Debug)]
pub struct Config {
    /// How long after a span's end the worker waits for its record before passing the
    /// span on unannotated (the kernel judged it fast).
    pub record_wait: Duration,
    /// Spans waiting for the worker; when full, spans pass through unannotated (counted).
    pub queue_capacity: usize,
    /// While spans wait for records, the worker re-checks them at least this often.
    pub recheck: Duration,
    /// With nothing waiting, the worker looks at its queue this often. It is never woken by
    /// the service threads: a wake-up would be a `futex` call on the service thread, inside
    /// whatever span encloses the one that ended.
    pub idle_poll: Duration,
    /// Child spans only for system calls at least this long (zero: one child per call, the
    /// default). Shorter calls stay in the slow span's count, duration and top-calls
    /// attributes, and `spantrack.syscalls.summarised` counts them: for services whose slow
    /// spans make hundreds of small calls, this keeps the export small.
    pub min_child_call: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            record_wait: Duration::from_millis(100),
            queue_capacity: 1024,
            recheck: Duration::from_millis(2),
            idle_poll: Duration::from_millis(10),
            min_child_call: Duration::ZERO,
        }
    }
}

/// Counters of one processor.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    /// Span begins the library refused (thread untracked, too deep, table full, ...).
    pub begin_errors: AtomicU64,
    /// Span ends the library refused (mostly: the begin had failed).
    pub end_errors: AtomicU64,
    /// Spans passed on at once: shorter than half the threshold.
    pub passed_fast: AtomicU64,
    /// Spans handed to the worker.
    pub queued: AtomicU64,
    /// Spans passed on unannotated because the worker's queue was full.
    pub queue_full: AtomicU64,
    /// Spans annotated with a record.
    pub annotated: AtomicU64,
    /// Queued spans for which no record came (the kernel judged them fast).
    pub no_record: AtomicU64,
    /// Records that could not be used (undecodable, other span, library error).
    pub bad_records: AtomicU64,
    /// Child spans emitted, one per itemised system call.
    pub children: AtomicU64,
}

/// A copy of [`ProcessorStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub begin_errors: u64,
    pub end_errors: u64,
    pub passed_fast: u64,
    pub queued: u64,
    pub queue_full: u64,
    pub annotated: u64,
    pub no_record: u64,
    pub bad_records: u64,
    pub children: u64,
}

impl ProcessorStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            begin_errors: g(&self.begin_errors),
            end_errors: g(&self.end_errors),
            passed_fast: g(&self.passed_fast),
            queued: g(&self.queued),
            queue_full: g(&self.queue_full),
            annotated: g(&self.annotated),
            no_record: g(&self.no_record),
            bad_records: g(&self.bad_records),
            children: g(&self.children),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A span waiting for its record.
struct Waiting<P> {
    span: SpanData,
    inner: Arc<P>,
    deadline: Instant,
}

/// A span handed to the worker (no clock read on the service thread: the worker starts the
/// span's wait when it picks it up).
struct Queued<P> {
    span: SpanData,
    inner: Arc<P>,
}

// Spans travel by value: boxing them would allocate on the service thread.
#[allow(clippy::large_enum_variant)]
enum Msg<P> {
    Span(Queued<P>),
    /// Resolve everything queued before, then acknowledge.
    Flush(SyncSender<()>),
    /// As `Flush`, then stop.
    Shutdown(SyncSender<()>),
}

struct Worker<P> {
    tx: SyncSender<Msg<P>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

/// The head of the span pipeline: wraps the processor that exports (`inner`).
///
/// ```no_run
/// # use opentelemetry_sdk::trace::{SdkTracerProvider, BatchSpanProcessor, InMemorySpanExporter};
/// # use spantrack_otel::SpantrackProcessor;
/// # let exporter = InMemorySpanExporter::default();
/// let provider = SdkTracerProvider::builder()
///     .with_span_processor(SpantrackProcessor::new(BatchSpanProcessor::builder(exporter).build()))
///     .build();
/// ```
///
/// Register it as the only processor: processors registered beside it receive the spans
/// without the annotation.
pub struct SpantrackProcessor<P: SpanProcessor + 'static> {
    inner: Arc<P>,
    hook: Option<SpanHook>,
    absent: Option<Absent>,
    worker: Option<Worker<P>>,
    stats: Arc<ProcessorStats>,
    config: Config,
}

impl<P: SpanProcessor + 'static> fmt::Debug for SpantrackProcessor<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpantrackProcessor")
            .field("active", &self.hook.is_some())
            .field("absent", &self.absent)
            .field("inner", &self.inner)
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

impl<P: SpanProcessor + 'static> SpantrackProcessor<P> {
    /// Wraps `inner` with the default [`Config`]; looks up the preloaded library.
    pub fn new(inner: P) -> Self {
        Self::with_config(inner, Config::default())
    }

    /// Wraps `inner`; looks up the preloaded library.
    pub fn with_config(inner: P, config: Config) -> Self {
        match SpanHook::find() {
            Ok(h) => {
                crate::activation::install(h);
                Self::with_hook(inner, config, h)
            }
            Err(why) => SpantrackProcessor {
                inner: Arc::new(inner),
                hook: None,
                absent: Some(why),
                worker: None,
                stats: Arc::default(),
                config,
            },
        }
    }

    /// Wraps `inner` using `hook` (the library's functions, or test doubles).
    pub(crate) fn with_hook(inner: P, config: Config, hook: SpanHook) -> Self {
        let stats = Arc::new(ProcessorStats::default());
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let (wstats, wconfig) = (Arc::clone(&stats), config.clone());
        let join = std::thread::Builder::new()
            .name("spantrack-otel".into())
            .spawn(move || run_worker(hook, rx, wconfig, wstats));
        match join {
            Ok(join) => SpantrackProcessor {
                inner: Arc::new(inner),
                hook: Some(hook),
                absent: None,
                worker: Some(Worker {
                    tx,
                    join: Mutex::new(Some(join)),
                }),
                stats,
                config,
            },
            // No worker, no annotation: still a correct pass-through.
            Err(_) => SpantrackProcessor {
                inner: Arc::new(inner),
                hook: None,
                absent: Some(Absent::Inactive),
                worker: None,
                stats,
                config,
            },
        }
    }

    /// True when spans are reported to the kernel (library preloaded and active).
    pub fn is_active(&self) -> bool {
        self.hook.is_some()
    }

    /// Why the processor is a pass-through, if it is.
    pub fn inactive_reason(&self) -> Option<&Absent> {
        self.absent.as_ref()
    }

    /// The processor's counters (shared: keep the handle after moving the processor into
    /// a provider).
    pub fn stats(&self) -> Arc<ProcessorStats> {
        Arc::clone(&self.stats)
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sends a flush (or shutdown) barrier to the worker and waits for its acknowledgement.
    fn worker_barrier(&self, shutdown: bool, timeout: Duration) -> OTelSdkResult {
        let Some(w) = &self.worker else { return Ok(()) };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let msg = if shutdown {
            Msg::Shutdown(ack_tx)
        } else {
            Msg::Flush(ack_tx)
        };
        if w.tx.send(msg).is_err() {
            return Ok(()); // worker already gone: nothing queued
        }
        match ack_rx.recv_timeout(timeout) {
            Ok(()) => {
                if shutdown {
                    if let Some(j) = w.join.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        let _ = j.join();
                    }
                }
                Ok(())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(()),
        }
    }
}

impl<P: SpanProcessor + 'static> SpanProcessor for SpantrackProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        let _ours = crate::activation::Suspend::new();
        self.inner.on_start(span, cx);
        // Last, so that the begin is as close as possible to the service's own code.
        if let Some(h) = &self.hook {
            let sc = span.span_context();
            if sc.is_valid() && h.begin(&sc.trace_id().to_bytes(), &sc.span_id().to_bytes()).is_err() {
                bump(&self.stats.begin_errors);
            }
        }
    }

    fn on_end(&self, span: SpanData) {
        let _ours = crate::activation::Suspend::new();
        let (Some(h), Some(w)) = (&self.hook, &self.worker) else {
            return self.inner.on_end(span);
        };
        let sc = &span.span_context;
        if !sc.is_valid() {
            return self.inner.on_end(span);
        }
        // First: the end write closes the kernel's span as early as possible.
        if h.end(&sc.trace_id().to_bytes(), &sc.span_id().to_bytes()).is_err() {
            // Never opened (begin failed) or library gone: the kernel has nothing.
            bump(&self.stats.end_errors);
            return self.inner.on_end(span);
        }
        let threshold = h.threshold_ns();
        let dur = span
            .end_time
            .duration_since(span.start_time)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        if threshold == u64::MAX || dur < threshold / 2 {
            bump(&self.stats.passed_fast);
            return self.inner.on_end(span);
        }
        let msg = Msg::Span(Queued {
            span,
            inner: Arc::clone(&self.inner),
        });
        match w.tx.try_send(msg) {
            Ok(()) => bump(&self.stats.queued),
            Err(TrySendError::Full(Msg::Span(m)) | TrySendError::Disconnected(Msg::Span(m))) => {
                bump(&self.stats.queue_full);
                self.inner.on_end(m.span);
            }
            Err(_) => {}
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.worker_barrier(false, Duration::from_secs(5))?;
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let start = Instant::now();
        let drained = self.worker_barrier(true, timeout);
        let left = timeout.saturating_sub(start.elapsed());
        let inner = self.inner.shutdown_with_timeout(left);
        drained.and(inner)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any span: nothing else holds `inner`.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

impl<P: SpanProcessor + 'static> Drop for SpantrackProcessor<P> {
    fn drop(&mut self) {
        // Normally shut down by the provider already; otherwise let the worker finish the
        // queue and stop on its own.
        if let Some(w) = &self.worker {
            let (ack, _) = mpsc::sync_channel(1);
            let _ = w.tx.try_send(Msg::Shutdown(ack));
        }
    }
}

/// The worker: resolves queued spans as their records arrive or their wait expires.
fn run_worker<P: SpanProcessor>(
    hook: SpanHook,
    rx: Receiver<Msg<P>>,
    config: Config,
    stats: Arc<ProcessorStats>,
) {
    // Our own system calls must never be attributed to anything.
    let _ = hook.unregister_thread();
    let ids = RandomIdGenerator::default();
    let mut new_id = || ids.new_span_id();
    let mut buf = Vec::with_capacity(RECORD_MAX);
    let mut waiting: VecDeque<Waiting<P>> = VecDeque::new();
    let cap = config.queue_capacity.max(1);
    let min_child_ns = u64::try_from(config.min_child_call.as_nanos()).unwrap_or(u64::MAX);
    loop {
        // Take what the service threads queued (never blocking: they never wake us).
        let mut barrier: Option<(SyncSender<()>, bool)> = None;
        let mut gone = false;
        while barrier.is_none() && waiting.len() < cap {
            match rx.try_recv() {
                Ok(Msg::Span(q)) => waiting.push_back(Waiting {
                    span: q.span,
                    inner: q.inner,
                    deadline: Instant::now() + config.record_wait,
                }),
                Ok(Msg::Flush(a)) => barrier = Some((a, false)),
                Ok(Msg::Shutdown(a)) => barrier = Some((a, true)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        resolve(&hook, &mut waiting, &mut buf, &mut new_id, &stats, min_child_ns);
        // Wait for the oldest span's record (woken when it arrives), then look at all of
        // them again; before a barrier, until none is left.
        while !waiting.is_empty() {
            if let Some(first) = waiting.front() {
                let left = first.deadline.saturating_duration_since(Instant::now());
                let wait = left.min(config.recheck);
                if !wait.is_zero() {
                    let sc = &first.span.span_context;
                    let got = hook.take_record(&sc.trace_id().to_bytes(), &sc.span_id().to_bytes(), &mut buf, wait);
                    if got == Ok(true) {
                        if let Some(w) = waiting.pop_front() {
                            emit(w, Some(&buf), &mut new_id, &stats, min_child_ns);
                        }
                    }
                }
            }
            resolve(&hook, &mut waiting, &mut buf, &mut new_id, &stats, min_child_ns);
            if barrier.is_none() {
                break; // back to the queue: new spans may have come
            }
        }
        if let Some((ack, stop)) = barrier {
            let _ = ack.try_send(());
            if stop {
                // Spans still queued behind the shutdown go through unannotated.
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Span(q) = m {
                        q.inner.on_end(q.span);
                    }
                }
                return;
            }
            continue;
        }
        if waiting.is_empty() {
            if gone {
                return;
            }
            std::thread::sleep(config.idle_poll);
        }
    }
}

/// Takes every record that is there; passes on the spans whose wait is over.
fn resolve<P: SpanProcessor>(
    hook: &SpanHook,
    waiting: &mut VecDeque<Waiting<P>>,
    buf: &mut Vec<u8>,
    new_id: &mut dyn FnMut() -> opentelemetry::trace::SpanId,
    stats: &ProcessorStats,
    min_child_ns: u64,
) {
    let now = Instant::now();
    let mut i = 0;
    while i < waiting.len() {
        let sc = &waiting[i].span.span_context;
        let got = hook.take_record(&sc.trace_id().to_bytes(), &sc.span_id().to_bytes(), buf, Duration::ZERO);
        let done = match got {
            Ok(true) => Some(Some(&buf[..])),
            Ok(false) if now >= waiting[i].deadline => Some(None),
            Ok(false) => None,
            Err(_) => {
                bump(&stats.bad_records);
                Some(None)
            }
        };
        match done {
            Some(rec) => {
                if let Some(w) = waiting.remove(i) {
                    let counted_bad = got.is_err();
                    if rec.is_none() && !counted_bad {
                        bump(&stats.no_record);
                    }
                    emit(w, rec, new_id, stats, min_child_ns);
                }
            }
            None => i += 1,
        }
    }
}

/// Passes the span on: annotated with its children if `record` is usable, else unchanged.
fn emit<P: SpanProcessor>(
    w: Waiting<P>,
    record: Option<&[u8]>,
    new_id: &mut dyn FnMut() -> opentelemetry::trace::SpanId,
    stats: &ProcessorStats,
    min_child_ns: u64,
) {
    let Waiting { mut span, inner, .. } = w;
    let Some(bytes) = record else {
        return inner.on_end(span);
    };
    match Record::decode(bytes).and_then(|rec| annotate_with(&mut span, &rec, new_id, min_child_ns)) {
        Ok(children) => {
            bump(&stats.annotated);
            stats.children.fetch_add(children.len() as u64, Ordering::Relaxed);
            for c in children {
                inner.on_end(c);
            }
        }
        Err(_) => bump(&stats.bad_records),
    }
    inner.on_end(span);
}
