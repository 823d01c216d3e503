//! [`SpantrackProcessor`]: the head of a Rust service's span pipeline. It tells the kernel
//! where each span begins and ends (through libspanhook.so), and hands slow spans, annotated
//! with the system calls the kernel recorded, to the processor it wraps.
//!
//! Service threads only write the begin/end (one `write(2)` each), update their operation's
//! latency estimate ([`crate::threshold`]: the span's own end time, locks only tried, a busy
//! one skips the sample) and, for a span that may be slow, push it onto a bounded queue: no
//! waiting lock, no clock read, no wake-up (any system call there would land in the record
//! of an enclosing span). With adaptive thresholds (the default) each begin carries its
//! operation's threshold, and each slow span says why it was slow. One worker thread (untracked by the
//! kernel) polls the queue, waits for the records, builds the annotated span and its
//! children, and feeds the inner processor. Without the library (or with an inactive one)
//! the processor is a pure pass-through.
//!
//! Every span reaches the inner processor exactly once: annotated, or without its calls and
//! saying why in `spantrack.annotation.missing` ([`crate::annotate::missing`]) when it was
//! slow (queue full, no record in time, shutdown or flush out of time, over the annotation
//! budget, unusable record, module gone). After a shutdown, the worker hands nothing more
//! to the inner processor: shutdown closes a gate, which the worker passes for every hand-off,
//! before it shuts the inner processor down.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::trace::Span as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

use crate::annotate::{annotate_with, mark, missing, summarise, Record};
use crate::hook::{Absent, SpanHook, RECORD_MAX};
use crate::threshold::{self, Op, OpTable, Source, ThresholdConfig};

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
    /// The annotation budget: the share of one CPU the worker may spend building child
    /// spans and handing them on (0.1: 10%; 1 or more: no limit). Within it the slowest
    /// spans (relative to the threshold) go first; past it a span gets the summary
    /// attributes only, with `spantrack.annotation.missing = over_budget`. Default:
    /// `SPANTRACK_BUDGET_PCT` percent, else 10%.
    pub budget: f64,
    /// Per-operation thresholds (adaptive by default; [`ThresholdConfig`], from the
    /// `SPANTRACK_THRESHOLD*` variables).
    pub threshold: ThresholdConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            record_wait: Duration::from_millis(100),
            queue_capacity: 1024,
            recheck: Duration::from_millis(2),
            idle_poll: Duration::from_millis(10),
            min_child_call: Duration::ZERO,
            budget: budget_from_env(),
            threshold: ThresholdConfig::default(),
        }
    }
}

/// `SPANTRACK_BUDGET_PCT` (percent of one CPU) as a share, 0.1 when unset or invalid.
pub fn budget_from_env() -> f64 {
    std::env::var("SPANTRACK_BUDGET_PCT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map_or(0.1, |pct| pct / 100.0)
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
    /// Slow spans passed on without their calls, by reason (`spantrack.annotation.missing`).
    pub missing_queue_full: AtomicU64,
    pub missing_no_record: AtomicU64,
    pub missing_shutdown: AtomicU64,
    pub missing_over_budget: AtomicU64,
    pub missing_worker_error: AtomicU64,
    pub missing_inactive: AtomicU64,
    /// Spans the worker still held when a shutdown had already shut the inner processor
    /// down (the worker was stuck in the inner processor past the shutdown's timeout):
    /// never handed to it.
    pub after_shutdown: AtomicU64,
    /// The same for the system-call child spans spantrack made (not the service's spans:
    /// apart, so that `after_shutdown` + exported = spans the service made).
    pub children_after_shutdown: AtomicU64,
    /// Annotations the worker finished after a flush or shutdown out of time had passed
    /// their span on without its calls (it was stuck with it): dropped, the span went once.
    pub late_dropped: AtomicU64,
    /// Slow spans past their operation's annotations per second
    /// (`Config::threshold.annotations_per_s`): summary only, `over_budget`.
    pub op_capped: AtomicU64,
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
    pub missing_queue_full: u64,
    pub missing_no_record: u64,
    pub missing_shutdown: u64,
    pub missing_over_budget: u64,
    pub missing_worker_error: u64,
    pub missing_inactive: u64,
    pub after_shutdown: u64,
    pub children_after_shutdown: u64,
    pub late_dropped: u64,
    pub op_capped: u64,
}

impl StatsSnapshot {
    /// Slow spans passed on without their calls, all reasons.
    pub fn missing(&self) -> u64 {
        self.missing_queue_full
            + self.missing_no_record
            + self.missing_shutdown
            + self.missing_over_budget
            + self.missing_worker_error
            + self.missing_inactive
    }
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
            missing_queue_full: g(&self.missing_queue_full),
            missing_no_record: g(&self.missing_no_record),
            missing_shutdown: g(&self.missing_shutdown),
            missing_over_budget: g(&self.missing_over_budget),
            missing_worker_error: g(&self.missing_worker_error),
            missing_inactive: g(&self.missing_inactive),
            after_shutdown: g(&self.after_shutdown),
            children_after_shutdown: g(&self.children_after_shutdown),
            late_dropped: g(&self.late_dropped),
            op_capped: g(&self.op_capped),
        }
    }

    fn missing(&self, why: &str) -> &AtomicU64 {
        match why {
            missing::QUEUE_FULL => &self.missing_queue_full,
            missing::NO_RECORD => &self.missing_no_record,
            missing::SHUTDOWN => &self.missing_shutdown,
            missing::OVER_BUDGET => &self.missing_over_budget,
            missing::INACTIVE => &self.missing_inactive,
            _ => &self.missing_worker_error,
        }
    }
}

/// Says why on a slow span without calls, and counts it (a span that was not slow, only
/// queued in case, goes on unchanged).
fn mark_missing(span: &mut SpanData, slow: bool, why: &'static str, stats: &ProcessorStats) {
    if slow {
        mark(span, why);
        bump(stats.missing(why));
    }
}

/// Hands a queued span on through the gate without its calls: a slow one says why it was
/// slow and why it has none (the worker's pass, and a flush's or shutdown's drain).
fn pass_without_calls<P: SpanProcessor>(
    shared: &Shared,
    stats: &ProcessorStats,
    inner: &P,
    mut span: SpanData,
    slow: bool,
    reason: &Why,
    why: &'static str,
) {
    // Its record, if one comes, is nobody's now.
    shared.forget(&span);
    if slow {
        explain(&mut span, reason);
    }
    mark_missing(&mut span, slow, why, stats);
    shared.deliver(inner, span, stats);
}

/// What the processor and its worker share.
#[derive(Debug)]
struct Shared {
    /// > 0: a flush or shutdown ran out of time: pass everything on unannotated, now.
    hurry: AtomicU32,
    /// Set by shutdown: spans that cannot be queued any more say `shutdown`.
    shut: AtomicBool,
    /// Open until a shutdown shuts the inner processor down; the worker hands spans on
    /// only while it holds the gate open.
    gate: Mutex<bool>,
    /// The last threshold an active library reported (u64::MAX: none yet).
    last_threshold: AtomicU64,
    /// The library, to forget the records of spans passed on without them.
    hook: Option<SpanHook>,
}

impl Shared {
    /// The span goes on without its record: the library drops it (held, or on arrival).
    fn forget(&self, span: &SpanData) {
        if let Some(h) = &self.hook {
            let sc = &span.span_context;
            h.forget(&sc.trace_id().to_bytes(), &sc.span_id().to_bytes());
        }
    }

    fn hurrying(&self) -> bool {
        self.hurry.load(Ordering::Acquire) > 0
    }

    /// Hands the service's span to the inner processor unless it was shut down (counted).
    fn deliver<P: SpanProcessor>(&self, inner: &P, span: SpanData, stats: &ProcessorStats) {
        self.deliver_counted(inner, [span], &stats.after_shutdown);
    }

    /// The same for child spans spantrack made.
    fn deliver_children<P: SpanProcessor>(&self, inner: &P, spans: Vec<SpanData>, stats: &ProcessorStats) {
        self.deliver_counted(inner, spans, &stats.children_after_shutdown);
    }

    fn deliver_counted<P: SpanProcessor>(&self, inner: &P, spans: impl IntoIterator<Item = SpanData>, late: &AtomicU64) {
        let open = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        for s in spans {
            if *open {
                inner.on_end(s);
            } else {
                bump(late);
            }
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
    /// At least the threshold long (else it was queued in case: no record is likely).
    slow: bool,
    /// Its duration in thousandths of the threshold: the slowest go first.
    ratio: u64,
    /// Why it is slow (its threshold and operation).
    why: Why,
}

impl<P> Waiting<P> {
    /// The span's ids, as the library takes them.
    fn ids(&self) -> (TraceIdBytes, SpanIdBytes) {
        let sc = &self.span.span_context;
        (sc.trace_id().to_bytes(), sc.span_id().to_bytes())
    }

    /// A copy to pass on without calls, should the worker be stuck with the original.
    fn backup(&self) -> Waiting<P> {
        Waiting {
            span: self.span.clone(),
            inner: Arc::clone(&self.inner),
            deadline: self.deadline,
            slow: self.slow,
            ratio: self.ratio,
            why: self.why.clone(),
        }
    }
}

/// The spans the worker holds, shared with a flush or shutdown that runs out of time
/// ([`SpantrackProcessor::worker_barrier`]), which passes them on itself: a worker kept off
/// the CPU, or stuck loading symbol tables or in a slow exporter, must not take them past
/// the inner processor's shutdown (nor the process's exit). Each span is in exactly one
/// place; taking it out is under the lock, so it is passed on once.
struct Held<P> {
    /// Waiting for their records.
    waiting: VecDeque<Waiting<P>>,
    /// With their records, to annotate (slowest first).
    ready: VecDeque<(Waiting<P>, Vec<u8>)>,
    /// A copy of the span being annotated: whoever takes it hands the span on (the worker
    /// its annotated span, a barrier out of time the copy without calls).
    in_hand: Option<Waiting<P>>,
}

impl<P> Held<P> {
    fn new() -> Self {
        Held {
            waiting: VecDeque::new(),
            ready: VecDeque::new(),
            in_hand: None,
        }
    }
}

fn lock_held<P>(held: &Mutex<Held<P>>) -> std::sync::MutexGuard<'_, Held<P>> {
    held.lock().unwrap_or_else(|e| e.into_inner())
}

/// The threshold a span was judged by, where it came from, and its operation.
#[derive(Clone, Debug)]
struct Why {
    threshold_ns: u64,
    source: Source,
    op: Option<Arc<Op>>,
}

/// A span handed to the worker (no clock read on the service thread: the worker starts the
/// span's wait when it picks it up).
struct Queued<P> {
    span: SpanData,
    inner: Arc<P>,
    slow: bool,
    ratio: u64,
    why: Why,
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
    /// The worker's end of the queue, shared: a flush or shutdown whose time runs out while
    /// the worker is stuck or starved (a busy host, a slow exporter) takes what is still
    /// queued and passes it on itself.
    rx: Arc<Mutex<Receiver<Msg<P>>>>,
    held: Arc<Mutex<Held<P>>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

/// Takes one message off the queue (the lock is held only for this).
fn take_msg<P>(rx: &Mutex<Receiver<Msg<P>>>) -> Result<Msg<P>, TryRecvError> {
    rx.lock().unwrap_or_else(|e| e.into_inner()).try_recv()
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
    shared: Arc<Shared>,
    config: Config,
    ops: Arc<OpTable>,
}

fn new_shared(hook: Option<SpanHook>) -> Arc<Shared> {
    Arc::new(Shared {
        hurry: AtomicU32::new(0),
        shut: AtomicBool::new(false),
        gate: Mutex::new(true),
        last_threshold: AtomicU64::new(u64::MAX),
        hook,
    })
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
                // The stacks' symbols load in a thread of their own, untracked like the worker;
                // with the module there, they start loading now.
                crate::stacks::set_thread_init(move || {
                    let _ = h.unregister_thread();
                });
                if h.is_active() {
                    crate::stacks::host().warm_up();
                }
                Self::with_hook(inner, config, h)
            }
            Err(why) => SpantrackProcessor {
                inner: Arc::new(inner),
                hook: None,
                absent: Some(why),
                worker: None,
                stats: Arc::default(),
                shared: new_shared(None),
                ops: Arc::new(OpTable::new(config.threshold.clone())),
                config,
            },
        }
    }

    /// Wraps `inner` using `hook` (the library's functions, or test doubles).
    pub(crate) fn with_hook(inner: P, config: Config, hook: SpanHook) -> Self {
        let stats = Arc::new(ProcessorStats::default());
        let shared = new_shared(Some(hook));
        shared.last_threshold.store(hook.threshold_ns(), Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let wrx = Arc::clone(&rx);
        let held = Arc::new(Mutex::new(Held::new()));
        let wheld = Arc::clone(&held);
        let ops = Arc::new(OpTable::new(config.threshold.clone()));
        let (wstats, wconfig, wshared) = (Arc::clone(&stats), config.clone(), Arc::clone(&shared));
        let join = std::thread::Builder::new()
            .name("spantrack-otel".into())
            .spawn({
                let ops = Arc::clone(&ops);
                move || run_worker(hook, &wrx, &wheld, wconfig, wstats, wshared, ops)
            });
        match join {
            Ok(join) => SpantrackProcessor {
                inner: Arc::new(inner),
                hook: Some(hook),
                absent: None,
                worker: Some(Worker {
                    tx,
                    rx,
                    held,
                    join: Mutex::new(Some(join)),
                }),
                stats,
                shared,
                config,
                ops,
            },
            // No worker, no annotation: still a correct pass-through.
            Err(_) => SpantrackProcessor {
                inner: Arc::new(inner),
                hook: None,
                absent: Some(Absent::Inactive),
                worker: None,
                stats,
                shared,
                config,
                ops,
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

    /// The operations seen so far, with their estimators and counters (shared).
    pub fn operations(&self) -> Arc<OpTable> {
        Arc::clone(&self.ops)
    }

    /// Sends a flush (or shutdown) barrier to the worker and waits for its acknowledgement:
    /// for half of `timeout` while the worker annotates, then the worker hurries (passes
    /// what it holds on unannotated) until 80% of it. A shutdown then closes the gate, so
    /// that whatever the worker still holds never reaches the inner processor after its
    /// shutdown (with the rest of `timeout`).
    fn worker_barrier(&self, shutdown: bool, timeout: Duration) -> OTelSdkResult {
        let Some(w) = &self.worker else { return Ok(()) };
        let start = Instant::now();
        let annotate_until = start + timeout.mul_f64(0.5);
        let give_up = start + timeout.mul_f64(0.8);
        if shutdown {
            self.shared.shut.store(true, Ordering::Release);
        }
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut msg = Some(if shutdown {
            Msg::Shutdown(ack_tx)
        } else {
            Msg::Flush(ack_tx)
        });
        let mut hurried = false;
        let mut hurry = |on: bool| {
            if on && !hurried {
                self.shared.hurry.fetch_add(1, Ordering::AcqRel);
                hurried = true;
            }
            hurried
        };
        let mut gone = false;
        while let Some(m) = msg.take() {
            match w.tx.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) => {
                    let now = Instant::now();
                    hurry(now >= annotate_until);
                    msg = Some(m); // kept until here: dropping it would disconnect the ack
                    if now >= give_up {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => gone = true, // worker gone: nothing queued
            }
        }
        let sent = msg.is_none() && !gone;
        let mut acked = gone;
        if sent {
            for until in [annotate_until, give_up] {
                let left = until.saturating_duration_since(Instant::now());
                match ack_rx.recv_timeout(left) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        acked = true;
                        break;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        hurry(true);
                    }
                }
            }
        }
        if !acked {
            // The worker did not get through in time: what it holds and what is still queued
            // go on from here.
            self.pass_held(w, shutdown, start + timeout.mul_f64(0.95));
            self.drain_queue(w, shutdown, start + timeout.mul_f64(0.95));
        }
        if shutdown {
            // Waits for a hand-off in progress; none after this.
            *self.shared.gate.lock().unwrap_or_else(|e| e.into_inner()) = false;
            if acked {
                if let Some(j) = w.join.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = j.join();
                }
            }
        } else if hurry(false) {
            self.shared.hurry.fetch_sub(1, Ordering::AcqRel);
        }
        if acked {
            Ok(())
        } else {
            Err(OTelSdkError::Timeout(timeout))
        }
    }

    /// Passes on, unannotated (`shutdown`), the spans the worker holds (see [`Held`]), until
    /// `until`; past it, as in [`Self::drain_queue`], a flush leaves the rest to the worker
    /// and a shutdown counts them as held back (`after_shutdown`).
    fn pass_held(&self, w: &Worker<P>, shutdown: bool, until: Instant) {
        loop {
            let late = Instant::now() >= until;
            if late && !shutdown {
                return;
            }
            let next = {
                let mut h = lock_held(&w.held);
                h.in_hand.take().or_else(|| h.ready.pop_front().map(|r| r.0)).or_else(|| h.waiting.pop_front())
            };
            let Some(x) = next else { return };
            if late {
                bump(&self.stats.after_shutdown);
            } else {
                pass_without_calls(&self.shared, &self.stats, &*x.inner, x.span, x.slow, &x.why, missing::SHUTDOWN);
            }
        }
    }

    /// Passes on, unannotated (`shutdown`), the spans still queued for a worker that did not
    /// answer a barrier in time, until `until`. Past it, a flush leaves the rest to the
    /// worker; a shutdown counts them as held back (`after_shutdown`): the inner processor
    /// shuts down next. Barriers met on the way are acknowledged.
    fn drain_queue(&self, w: &Worker<P>, shutdown: bool, until: Instant) {
        loop {
            let late = Instant::now() >= until;
            if late && !shutdown {
                return;
            }
            match take_msg(&w.rx) {
                Ok(Msg::Span(q)) if !late => {
                    pass_without_calls(&self.shared, &self.stats, &*q.inner, q.span, q.slow, &q.why, missing::SHUTDOWN);
                }
                Ok(Msg::Span(_)) => bump(&self.stats.after_shutdown),
                Ok(Msg::Flush(a) | Msg::Shutdown(a)) => {
                    let _ = a.try_send(());
                }
                Err(_) => return,
            }
        }
    }

    /// A span the kernel did not track (end refused): as slow as the last threshold the
    /// library reported, it says `inactive`.
    fn pass_untracked(&self, mut span: SpanData, dur: u64) {
        let slow = dur >= self.shared.last_threshold.load(Ordering::Relaxed);
        mark_missing(&mut span, slow, missing::INACTIVE, &self.stats);
        self.inner.on_end(span);
    }
}

/// `SpanKind` as a small number (part of an operation's key).
fn kind_code(k: &opentelemetry::trace::SpanKind) -> u8 {
    use opentelemetry::trace::SpanKind;
    match k {
        SpanKind::Client => 0,
        SpanKind::Server => 1,
        SpanKind::Producer => 2,
        SpanKind::Consumer => 3,
        SpanKind::Internal => 4,
    }
}

/// CLOCK_REALTIME in ns (the worker's clock for the per-operation cap).
fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Takes the span's own threshold (`spantrack.threshold_ns`, set at its start) off it.
fn take_threshold(span: &mut SpanData) -> Option<u64> {
    let i = span.attributes.iter().rposition(|kv| kv.key.as_str() == threshold::attr::THRESHOLD_NS)?;
    let kv = span.attributes.remove(i);
    match kv.value {
        opentelemetry::Value::I64(v) => u64::try_from(v).ok(),
        _ => None,
    }
}

/// Says why a slow span was slow: its threshold, where it came from, and its operation's
/// statistics now (`spantrack.threshold_ns`, `spantrack.threshold.source`,
/// `spantrack.op.p50_ns/p95_ns/p99_ns`, `spantrack.op.samples`, `spantrack.op.cv`).
fn explain(span: &mut SpanData, why: &Why) {
    use threshold::attr;
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    span.attributes.push(KeyValue::new(attr::THRESHOLD_NS, i(why.threshold_ns)));
    span.attributes.push(KeyValue::new(attr::THRESHOLD_SOURCE, why.source.as_str()));
    if let Some(op) = &why.op {
        let e = op.estimate();
        for (k, v) in [(attr::OP_P50_NS, e.p50_ns), (attr::OP_P95_NS, e.p95_ns), (attr::OP_P99_NS, e.p99_ns)] {
            if let Some(v) = v {
                span.attributes.push(KeyValue::new(k, i(v)));
            }
        }
        span.attributes.push(KeyValue::new(attr::OP_SAMPLES, i(e.samples)));
        span.attributes.push(KeyValue::new(attr::OP_CV, e.cv));
    }
}

fn duration_ns(span: &SpanData) -> u64 {
    span.end_time
        .duration_since(span.start_time)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl<P: SpanProcessor + 'static> SpanProcessor for SpantrackProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        let _ours = crate::activation::Suspend::new();
        self.inner.on_start(span, cx);
        // Last, so that the begin is as close as possible to the service's own code.
        if let Some(h) = &self.hook {
            let sc = span.span_context();
            if !sc.is_valid() {
                return;
            }
            let (t, s) = (sc.trace_id().to_bytes(), sc.span_id().to_bytes());
            let r = if self.ops.config().adaptive {
                // The operation's threshold now, kept on the span until its end (where it is
                // removed from a fast span). The SDK shows a span's name and kind only in a
                // copy of its data.
                let op = span.exported_data().and_then(|d| self.ops.get_or_add(&d.name, kind_code(&d.span_kind)));
                let threshold = op.and_then(|op| op.threshold().0);
                if let Some(ns) = threshold {
                    span.set_attribute(KeyValue::new(threshold::attr::THRESHOLD_NS, i64::try_from(ns).unwrap_or(i64::MAX)));
                }
                h.begin_with_threshold(&t, &s, threshold)
            } else {
                h.begin(&t, &s)
            };
            if r.is_err() {
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
            let dur = duration_ns(&span);
            return self.pass_untracked(span, dur);
        }
        let module_threshold = h.threshold_ns();
        let dur = duration_ns(&span);
        let mut span = span;
        // The span's own threshold (set at its start), taken off the span.
        let own = take_threshold(&mut span);
        let op = self.ops.get_or_add(&span.name, kind_code(&span.span_kind));
        if let Some(op) = &op {
            let end = span.end_time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            op.record(dur, end, self.ops.config().floor_ns);
        }
        let (threshold, source) = match own {
            Some(t) => (t, Source::Adaptive),
            None if self.ops.config().adaptive => (module_threshold, Source::Warmup),
            None => (module_threshold, Source::Fixed),
        };
        // A span's own threshold is the one the kernel used: only the clocks' difference (the
        // SDK's times vs the begin/end writes) is uncertain; the module's may have changed
        // since the library last read it.
        let margin = if source == Source::Adaptive { threshold / 16 } else { threshold / 2 };
        if threshold == u64::MAX || module_threshold == u64::MAX || dur < threshold - margin {
            bump(&self.stats.passed_fast);
            return self.inner.on_end(span);
        }
        let why = Why { threshold_ns: threshold, source, op };
        if self.shared.last_threshold.load(Ordering::Relaxed) != threshold {
            self.shared.last_threshold.store(threshold, Ordering::Relaxed);
        }
        let slow = dur >= threshold;
        let ratio = u64::try_from(u128::from(dur) * 1000 / u128::from(threshold.max(1))).unwrap_or(u64::MAX);
        let msg = Msg::Span(Queued {
            span,
            inner: Arc::clone(&self.inner),
            slow,
            ratio,
            why,
        });
        match w.tx.try_send(msg) {
            Ok(()) => bump(&self.stats.queued),
            Err(TrySendError::Full(Msg::Span(mut m))) => {
                bump(&self.stats.queue_full);
                self.shared.forget(&m.span);
                if m.slow {
                    explain(&mut m.span, &m.why);
                }
                mark_missing(&mut m.span, m.slow, missing::QUEUE_FULL, &self.stats);
                self.inner.on_end(m.span);
            }
            Err(TrySendError::Disconnected(Msg::Span(mut m))) => {
                self.shared.forget(&m.span);
                if m.slow {
                    explain(&mut m.span, &m.why);
                }
                let why = if self.shared.shut.load(Ordering::Acquire) {
                    missing::SHUTDOWN
                } else {
                    missing::WORKER_ERROR
                };
                mark_missing(&mut m.span, m.slow, why, &self.stats);
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
        if let Some(v) = resource.get(&opentelemetry::Key::from_static_str("service.name")) {
            self.ops.set_service(&v.as_str());
        }
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

/// The annotation budget: CPU seconds the worker may spend on annotating, refilled at
/// `share` of wall-clock time, saved up to [`BUDGET_BURST_S`].
struct Budget {
    share: f64,
    credit: f64,
    at: Instant,
}

/// A burst of slow spans (an incident) is annotated whole; sustained load gets `share`.
const BUDGET_BURST_S: f64 = 1.0;

impl Budget {
    fn new(share: f64) -> Budget {
        Budget {
            share,
            credit: if share > 0.0 { BUDGET_BURST_S } else { 0.0 },
            at: Instant::now(),
        }
    }

    fn allows(&mut self) -> bool {
        if self.share >= 1.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.share;
        self.credit = (self.credit + refill).min(BUDGET_BURST_S);
        self.at = now;
        self.credit > 0.0
    }
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// What the worker works with.
struct Ctx<'a> {
    hook: &'a SpanHook,
    stats: &'a ProcessorStats,
    shared: &'a Shared,
    new_id: &'a mut dyn FnMut() -> opentelemetry::trace::SpanId,
    buf: Vec<u8>,
    min_child_ns: u64,
    budget: Budget,
    annotations_per_s: u32,
}

impl Ctx<'_> {
    /// Passes a span on without its calls (saying why when it is slow).
    fn pass<P: SpanProcessor>(&self, w: Waiting<P>, why: &'static str) {
        pass_without_calls(self.shared, self.stats, &*w.inner, w.span, w.slow, &w.why, why);
    }

    /// Passes on everything waiting, unannotated (a flush or shutdown out of time).
    fn pass_all<P: SpanProcessor>(&self, held: &Mutex<Held<P>>) {
        let mut h = lock_held(held);
        while let Some((w, _)) = h.ready.pop_front() {
            self.pass(w, missing::SHUTDOWN);
        }
        while let Some(w) = h.waiting.pop_front() {
            self.pass(w, missing::SHUTDOWN);
        }
    }

    /// Annotates the span with its record (within the budget), or summarises it. The caller
    /// took `w` out of [`Held`] and left a copy in `in_hand` in the same step; the span is
    /// handed on only if that copy is still there (else a barrier out of time passed it on).
    fn annotate<P: SpanProcessor>(&mut self, held: &Mutex<Held<P>>, w: Waiting<P>, bytes: &[u8]) {
        let Waiting { mut span, inner, why: reason, .. } = w;
        span.attributes.reserve(crate::annotate::SLOW_SPAN_ATTRS);
        explain(&mut span, &reason);
        let claim = |stats: &ProcessorStats| {
            let mine = lock_held(held).in_hand.take().is_some();
            if !mine {
                bump(&stats.late_dropped);
            }
            mine
        };
        let rec = match Record::decode(bytes) {
            Ok(r) => r,
            Err(_) => {
                bump(&self.stats.bad_records);
                mark_missing(&mut span, true, missing::WORKER_ERROR, self.stats);
                if claim(self.stats) {
                    self.shared.deliver(&*inner, span, self.stats);
                }
                return;
            }
        };
        let capped = reason.op.as_ref().is_some_and(|op| !op.allow_annotation(self.annotations_per_s, now_ns()));
        if capped {
            bump(&self.stats.op_capped);
        }
        if capped || !self.budget.allows() {
            let why = match summarise(&mut span, &rec, self.min_child_ns) {
                Ok(()) => missing::OVER_BUDGET,
                Err(_) => {
                    bump(&self.stats.bad_records);
                    missing::WORKER_ERROR
                }
            };
            mark_missing(&mut span, true, why, self.stats);
            if claim(self.stats) {
                self.shared.deliver(&*inner, span, self.stats);
            }
            return;
        }
        // The symbol tables the waits' stacks need, loaded once: not the budget's (it is for
        // building and handing on the child spans; naming a frame then takes microseconds).
        crate::stacks::host().prepare(&rec.header);
        let t0 = thread_cpu_s();
        let children = match annotate_with(&mut span, &rec, self.new_id, self.min_child_ns) {
            Ok(children) => Some(children),
            Err(_) => {
                bump(&self.stats.bad_records);
                mark_missing(&mut span, true, missing::WORKER_ERROR, self.stats);
                None
            }
        };
        if !claim(self.stats) {
            return;
        }
        if let Some(children) = children {
            bump(&self.stats.annotated);
            if let Some(op) = &reason.op {
                op.annotated.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.children.fetch_add(children.len() as u64, Ordering::Relaxed);
            self.shared.deliver_children(&*inner, children, self.stats);
        }
        // What annotating cost beyond passing the span on: the children, built and handed on.
        self.budget.credit -= thread_cpu_s() - t0;
        self.shared.deliver(&*inner, span, self.stats);
    }

    /// Takes every record that is there; passes on the spans whose wait is over; annotates
    /// those with a record, slowest (relative to the threshold) first.
    fn resolve<P: SpanProcessor>(&mut self, held: &Mutex<Held<P>>) {
        let now = Instant::now();
        // The records are taken without the lock (the worker may be kept off the CPU in
        // there: a barrier out of time must not wait for it), the spans moved with it, so
        // that a barrier finds each span in one place.
        let ids: Vec<(TraceIdBytes, SpanIdBytes, Instant)> = lock_held(held)
            .waiting
            .iter()
            .map(|w| {
                let (t, s) = w.ids();
                (t, s, w.deadline)
            })
            .collect();
        let mut done: Vec<(TraceIdBytes, SpanIdBytes, Result<Vec<u8>, &'static str>)> = Vec::new();
        for (t, s, deadline) in ids {
            match self.hook.take_record(&t, &s, &mut self.buf, Duration::ZERO) {
                Ok(false) if now < deadline => {}
                Ok(true) => done.push((t, s, Ok(self.buf.clone()))),
                Ok(false) => done.push((t, s, Err(missing::NO_RECORD))),
                Err(_) => {
                    let why = if self.hook.is_active() {
                        missing::WORKER_ERROR
                    } else {
                        missing::INACTIVE
                    };
                    done.push((t, s, Err(why)));
                }
            }
        }
        if done.is_empty() {
            return self.annotate_ready(held);
        }
        {
            let mut h = lock_held(held);
            let mut ready: Vec<(Waiting<P>, Vec<u8>)> = Vec::new();
            for (t, s, got) in done {
                // Gone: a barrier out of time passed it on meanwhile (its record goes too).
                let Some(pos) = h.waiting.iter().position(|w| w.ids() == (t, s)) else {
                    bump(&self.stats.late_dropped);
                    continue;
                };
                let Some(w) = h.waiting.remove(pos) else { continue };
                match got {
                    Ok(rec) => ready.push((w, rec)),
                    Err(why) => {
                        if why == missing::NO_RECORD {
                            bump(&self.stats.no_record);
                        } else {
                            bump(&self.stats.bad_records);
                        }
                        self.pass(w, why);
                    }
                }
            }
            ready.sort_by_key(|r| std::cmp::Reverse(r.0.ratio));
            h.ready.extend(ready);
        }
        self.annotate_ready(held);
    }

    /// Annotates the spans with a record, slowest first (all passed on unannotated when a
    /// barrier hurries).
    fn annotate_ready<P: SpanProcessor>(&mut self, held: &Mutex<Held<P>>) {
        while let Some((w, rec)) = take_ready(held) {
            if self.shared.hurrying() {
                if lock_held(held).in_hand.take().is_some() {
                    self.pass(w, missing::SHUTDOWN);
                } else {
                    bump(&self.stats.late_dropped);
                }
            } else {
                self.annotate(held, w, &rec);
            }
        }
    }
}

type TraceIdBytes = [u8; 16];
type SpanIdBytes = [u8; 8];

/// The next span with a record, leaving a copy in `in_hand` (one step under the lock).
fn take_ready<P>(held: &Mutex<Held<P>>) -> Option<(Waiting<P>, Vec<u8>)> {
    let mut h = lock_held(held);
    let r = h.ready.pop_front()?;
    h.in_hand = Some(r.0.backup());
    Some(r)
}

/// The worker: resolves queued spans as their records arrive or their wait expires.
fn run_worker<P: SpanProcessor>(
    hook: SpanHook,
    rx: &Mutex<Receiver<Msg<P>>>,
    held: &Mutex<Held<P>>,
    config: Config,
    stats: Arc<ProcessorStats>,
    shared: Arc<Shared>,
    ops: Arc<OpTable>,
) {
    let pid = std::process::id();
    let mut published = Instant::now();
    let publish = |stats: &ProcessorStats| {
        if let Some(dir) = &config.threshold.publish_dir {
            let s = stats.snapshot();
            let doc = ops.to_json(pid, &[("annotated", s.annotated), ("missing", s.missing()), ("op_capped", s.op_capped)]);
            let _ = threshold::publish(dir, pid, &doc);
        }
    };
    let unpublish = || {
        if let Some(dir) = &config.threshold.publish_dir {
            threshold::unpublish(dir, pid);
        }
    };
    // Our own system calls must never be attributed to anything.
    let _ = hook.unregister_thread();
    let ids = RandomIdGenerator::default();
    let mut new_id = || ids.new_span_id();
    let mut cx = Ctx {
        hook: &hook,
        stats: &stats,
        shared: &shared,
        new_id: &mut new_id,
        buf: Vec::with_capacity(RECORD_MAX),
        min_child_ns: u64::try_from(config.min_child_call.as_nanos()).unwrap_or(u64::MAX),
        budget: Budget::new(config.budget),
        annotations_per_s: config.threshold.annotations_per_s,
    };
    let cap = config.queue_capacity.max(1);
    let waiting_len = || lock_held(held).waiting.len();
    loop {
        // Take what the service threads queued (never blocking: they never wake us).
        let mut barrier: Option<(SyncSender<()>, bool)> = None;
        let mut gone = false;
        while barrier.is_none() && (waiting_len() < cap || shared.hurrying()) {
            match take_msg(rx) {
                Ok(Msg::Span(q)) => {
                    let w = Waiting {
                        span: q.span,
                        inner: q.inner,
                        deadline: Instant::now() + config.record_wait,
                        slow: q.slow,
                        ratio: q.ratio,
                        why: q.why,
                    };
                    if shared.hurrying() {
                        cx.pass(w, missing::SHUTDOWN);
                    } else {
                        lock_held(held).waiting.push_back(w);
                    }
                }
                Ok(Msg::Flush(a)) => barrier = Some((a, false)),
                Ok(Msg::Shutdown(a)) => barrier = Some((a, true)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        // Wait for the oldest span's record (woken when it arrives), then look at all of
        // them again; before a barrier, until none is left.
        loop {
            if shared.hurrying() {
                cx.pass_all(held);
            }
            cx.resolve(held);
            // The oldest span's ids and deadline (the lock is not held while waiting).
            let first = lock_held(held).waiting.front().map(|f| {
                let (t, s) = f.ids();
                (t, s, f.deadline)
            });
            let Some((t, s, deadline)) = first else {
                break;
            };
            let wait = deadline.saturating_duration_since(Instant::now()).min(config.recheck);
            if !wait.is_zero() && hook.take_record(&t, &s, &mut cx.buf, wait) == Ok(true) {
                // Still the oldest, unless a barrier out of time passed it on meanwhile
                // (then its record is dropped with it).
                let w = {
                    let mut h = lock_held(held);
                    let same = h.waiting.front().is_some_and(|f| f.ids() == (t, s));
                    let w = if same { h.waiting.pop_front() } else { None };
                    if let Some(w) = &w {
                        h.in_hand = Some(w.backup());
                    }
                    w
                };
                if let Some(w) = w {
                    let rec = std::mem::take(&mut cx.buf);
                    cx.annotate(held, w, &rec);
                    cx.buf = rec;
                } else {
                    bump(&stats.late_dropped);
                }
            }
            if barrier.is_none() {
                break; // back to the queue: new spans may have come
            }
        }
        if let Some((ack, stop)) = barrier {
            if stop {
                // Spans queued behind the shutdown go through unannotated, before the ack
                // (then the inner processor shuts down).
                while let Ok(m) = take_msg(rx) {
                    if let Msg::Span(q) = m {
                        let w = Waiting {
                            span: q.span,
                            inner: q.inner,
                            deadline: Instant::now(),
                            slow: q.slow,
                            ratio: q.ratio,
                            why: q.why,
                        };
                        cx.pass(w, missing::SHUTDOWN);
                    }
                }
            }
            let _ = ack.try_send(());
            if stop {
                unpublish();
                return;
            }
            continue;
        }
        if published.elapsed() >= Duration::from_secs(1) {
            publish(&stats);
            published = Instant::now();
        }
        if waiting_len() == 0 {
            if gone {
                unpublish();
                return;
            }
            std::thread::sleep(config.idle_poll);
        }
    }
}
