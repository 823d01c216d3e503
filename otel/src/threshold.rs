//! Per-operation latency thresholds: "slow" means slow *for that operation*.
//!
//! An operation is service + span name + span kind. Each keeps a bounded streaming estimate
//! of its recent latencies, a log-linear integer histogram ([`bucket_of`]: the highest set
//! bit and the next 3 bits, 8 buckets per power of two, 320 buckets from 0 ns to 2^42 ns
//! (73 min; longer latencies count in the last bucket)). Integers only: the same maths in
//! Python (`preload/python/spantrack_hook/threshold.py`), checked by both test suites
//! against one golden file (`tests/golden/thresholds.json`).
//!
//! **Error.** A percentile estimate is the midpoint of the bucket holding the exact sample
//! percentile (the sample of rank `ceil(q n)`), so it is within 1/16 (6.25%) of it (a
//! bucket `[L, L + L/8)` has its midpoint at most `L/16` from any value in it; buckets
//! below 16 ns are exact). The *threshold* is the bucket's upper edge instead
//! ([`percentile_upper`]): within 1/8 above the exact percentile, and at most `1 - q` of the
//! window's spans at or above it (so a narrow distribution is not annotated whole).
//!
//! **Windows.** Two alternating windows: samples go to the current one; it is closed when
//! it holds `window_samples` samples, or is older than `window_ns` and warm. The threshold
//! is the percentile of the previous (closed) window, or the lower of the previous and the
//! current one's once the current one is warm. A burst of slow spans in the current
//! window cannot raise the threshold above the previous window's, so it is annotated
//! (it cannot hide itself); a latency that falls is followed as soon as the current window
//! is warm, one that rises when the window it rose in closes (a step that fills at least
//! 5% of that window: otherwise at the end of the next one).
//!
//! **Warm-up.** Until an operation has `warmup` samples in a window, the module's
//! `threshold_ns` applies (`source = warmup`). Default for the percentile q: the smallest
//! n with `q^n <= 0.05`, `ceil(ln 0.05 / ln q)`: with n samples the largest exceeds the true
//! q-quantile with probability `1 - q^n`, so 95% of the time the estimate is not below the
//! true quantile for lack of data. 59 for p95, 299 for p99.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The attributes that say why a span was annotated (the same in Python).
pub mod attr {
    /// The threshold the span was judged by (ns).
    pub const THRESHOLD_NS: &str = "spantrack.threshold_ns";
    /// Where it came from: `adaptive`, `fixed` or `warmup`.
    pub const THRESHOLD_SOURCE: &str = "spantrack.threshold.source";
    /// The operation's estimates at the span's end (both windows).
    pub const OP_P50_NS: &str = "spantrack.op.p50_ns";
    pub const OP_P95_NS: &str = "spantrack.op.p95_ns";
    pub const OP_P99_NS: &str = "spantrack.op.p99_ns";
    /// Samples behind them.
    pub const OP_SAMPLES: &str = "spantrack.op.samples";
    /// The operation's coefficient of variation (a float).
    pub const OP_CV: &str = "spantrack.op.cv";
}

/// Sub-buckets per power of two: 2^SUB_BITS.
pub const SUB_BITS: u32 = 3;
/// Values at or above 2^MAX_EXP ns count in the last bucket.
pub const MAX_EXP: u32 = 42;
/// Number of buckets.
pub const N_BUCKETS: usize = 8 * (MAX_EXP as usize - 2);
/// Longest window accepted (samples): keeps the CV sums within `u128`.
pub const MAX_WINDOW_SAMPLES: u32 = 1 << 20;

/// The bucket of a latency of `v` ns.
#[inline]
pub fn bucket_of(v: u64) -> usize {
    let v = v.min((1u64 << MAX_EXP) - 1);
    if v < 8 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 3
    8 * (e as usize - 2) + ((v >> (e - SUB_BITS)) & 7) as usize
}

/// Lowest value of bucket `i` and its width.
#[inline]
pub fn bucket_bounds(i: usize) -> (u64, u64) {
    if i < 8 {
        return (i as u64, 1);
    }
    let e = (i / 8 + 2) as u32;
    let m = (i % 8) as u64;
    ((8 + m) << (e - SUB_BITS), 1u64 << (e - SUB_BITS))
}

/// The value that stands for bucket `i`: its midpoint (rounded down).
#[inline]
pub fn bucket_mid(i: usize) -> u64 {
    let (lo, w) = bucket_bounds(i);
    lo + w / 2
}

/// Calls `f` with each non-empty bucket of a histogram, `(index, count)` in order, until it
/// returns false. Skips empty runs 8 buckets at a time: an operation's samples fill a few
/// dozen of the 320.
#[inline]
fn each_occupied(counts: &[u32], mut f: impl FnMut(usize, u32) -> bool) {
    for (k, chunk) in counts.chunks(8).enumerate() {
        if chunk.iter().fold(0, |a, &c| a | c) == 0 {
            continue;
        }
        for (j, &c) in chunk.iter().enumerate() {
            if c != 0 && !f(8 * k + j, c) {
                return;
            }
        }
    }
}

/// The rank of the `q_bp`-th percentile of `n` samples: `ceil(n q)`, at least 1.
fn rank(n: u64, q_bp: u32) -> u64 {
    (n * u64::from(q_bp)).div_ceil(10_000).max(1)
}

/// The bucket holding the sample of rank [`rank`]`(n, q_bp)` (the last bucket if the counts
/// hold fewer than `n`).
fn rank_bucket(counts: &[u32], n: u64, q_bp: u32) -> Option<usize> {
    let rank = rank(n, q_bp);
    let (mut cum, mut at) = (0u64, None);
    each_occupied(counts, |i, c| {
        cum += u64::from(c);
        if cum >= rank {
            at = Some(i);
        }
        at.is_none()
    });
    at.or(counts.len().checked_sub(1))
}

/// The `q_bp`-th percentile (basis points: 9500 = p95) of a histogram: the midpoint of the
/// bucket holding the sample of rank `ceil(n q)` (at least 1); `None` when empty.
pub fn percentile(counts: &[u32], n: u64, q_bp: u32) -> Option<u64> {
    if n == 0 {
        return None;
    }
    rank_bucket(counts, n, q_bp).map(bucket_mid)
}

/// The upper edge of the bucket holding the `q_bp`-th percentile (the first value above
/// it): what the threshold is, so that at most `1 - q` of a window's spans are at or above
/// it (a midpoint would put every span of a narrow distribution above the threshold when
/// they fall in the upper half of one bucket). Within 1/8 above the exact percentile.
pub fn percentile_upper(counts: &[u32], n: u64, q_bp: u32) -> Option<u64> {
    if n == 0 {
        return None;
    }
    rank_bucket(counts, n, q_bp).map(|i| {
        let (lo, w) = bucket_bounds(i);
        lo + w
    })
}

/// Coefficient of variation (standard deviation / mean) of a histogram, each sample taken
/// at its bucket's midpoint: `sqrt(n S2 - S1^2) / S1` from exact integer sums, so Rust and
/// Python compute the same `f64`.
pub fn cv(counts: &[u32], n: u64) -> f64 {
    let (mut s1, mut s2) = (0u128, 0u128);
    each_occupied(counts, |i, c| {
        let m = u128::from(bucket_mid(i));
        s1 += u128::from(c) * m;
        s2 += u128::from(c) * m * m;
        true
    });
    cv_of_sums(s1, s2, n)
}

/// `sqrt(n S2 - S1^2) / S1` (0 when `S1` is).
fn cv_of_sums(s1: u128, s2: u128, n: u64) -> f64 {
    if s1 == 0 {
        return 0.0;
    }
    let var = (u128::from(n) * s2).saturating_sub(s1 * s1);
    (var as f64).sqrt() / (s1 as f64)
}

/// Where a span's threshold came from (`spantrack.threshold.source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The operation's estimate.
    Adaptive,
    /// The module's `threshold_ns` (`SPANTRACK_THRESHOLD=fixed`).
    Fixed,
    /// The module's `threshold_ns`, until the operation has enough samples.
    Warmup,
}

impl Source {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Adaptive => "adaptive",
            Source::Fixed => "fixed",
            Source::Warmup => "warmup",
        }
    }
}

/// How thresholds are chosen (`Config::threshold`).
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdConfig {
    /// Per operation (`SPANTRACK_THRESHOLD=adaptive`, the default) or the module's
    /// `threshold_ns` for every span (`fixed`: the behaviour before ABI 4).
    pub adaptive: bool,
    /// The percentile, in basis points (`SPANTRACK_THRESHOLD_PERCENTILE=95` → 9500).
    pub percentile_bp: u32,
    /// Samples a window needs before its estimate is used (`SPANTRACK_THRESHOLD_WARMUP`;
    /// default from the percentile, see the module's documentation).
    pub warmup: u32,
    /// A window closes after this many samples (`SPANTRACK_THRESHOLD_WINDOW`, 1000).
    pub window_samples: u32,
    /// ... or when older than this and warm (`SPANTRACK_THRESHOLD_WINDOW_S`, 60 s).
    pub window_ns: u64,
    /// No adaptive threshold below this (`SPANTRACK_THRESHOLD_FLOOR_NS`, [`DEFAULT_FLOOR_NS`];
    /// 0: none).
    pub floor_ns: u64,
    /// Operations per process; spans of later ones get the module's threshold, counted in
    /// `ops_overflow` (`SPANTRACK_THRESHOLD_MAX_OPS`, 256).
    pub max_ops: usize,
    /// Annotated spans per operation per second (burst: one second's worth); later slow
    /// spans of the operation get the summary (`SPANTRACK_OP_ANNOTATIONS_PER_S`, 100; 0: no cap).
    pub annotations_per_s: u32,
    /// Where the per-operation statistics are published once a second for `spantrack top`
    /// (`<dir>/<pid>.json`; `SPANTRACK_OPS_DIR`, default `/tmp/spantrack-ops`; empty: not).
    pub publish_dir: Option<String>,
}

/// The default floor of adaptive thresholds: 1 ms, the module's default `threshold_ns`.
/// Without one, an operation of tens of microseconds has its p95 as threshold, and 5% of
/// its spans (and, within the margin, most of the rest) go through the annotation path:
/// `make bench`'s 30 µs RPC cost +27% over OpenTelemetry that way, against +3.5% with
/// the fixed 1 ms. A span faster than a millisecond is rarely the one a person opens.
pub const DEFAULT_FLOOR_NS: u64 = 1_000_000;

/// The default warm-up for a percentile: `ceil(ln 0.05 / ln q)`.
pub fn default_warmup(percentile_bp: u32) -> u32 {
    let q = f64::from(percentile_bp.clamp(1, 9999)) / 10_000.0;
    ((0.05f64).ln() / q.ln()).ceil().max(1.0) as u32
}

/// Parses a percentile ("95", "99.9") into basis points; `None` outside (0, 100).
pub fn parse_percentile(s: &str) -> Option<u32> {
    let v: f64 = s.trim().parse().ok()?;
    let bp = (v * 100.0).round();
    (bp >= 1.0 && bp <= 9999.0).then_some(bp as u32)
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        Self::from_env_with(|k| std::env::var(k).ok())
    }
}

impl ThresholdConfig {
    /// The configuration the environment gives (invalid values: the default).
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Self {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let adaptive = !matches!(get("SPANTRACK_THRESHOLD").as_deref().map(str::trim), Some("fixed"));
        let percentile_bp = get("SPANTRACK_THRESHOLD_PERCENTILE").and_then(|v| parse_percentile(&v)).unwrap_or(9500);
        let warmup = num("SPANTRACK_THRESHOLD_WARMUP")
            .filter(|&w| w >= 1)
            .map_or_else(|| default_warmup(percentile_bp), |w| w.min(u64::from(MAX_WINDOW_SAMPLES)) as u32);
        let window_samples = num("SPANTRACK_THRESHOLD_WINDOW")
            .map_or(1000, |w| w.min(u64::from(MAX_WINDOW_SAMPLES)) as u32)
            .max(warmup);
        ThresholdConfig {
            adaptive,
            percentile_bp,
            warmup,
            window_samples,
            window_ns: num("SPANTRACK_THRESHOLD_WINDOW_S").filter(|&s| s >= 1).unwrap_or(60).saturating_mul(1_000_000_000),
            floor_ns: num("SPANTRACK_THRESHOLD_FLOOR_NS").unwrap_or(DEFAULT_FLOOR_NS),
            max_ops: num("SPANTRACK_THRESHOLD_MAX_OPS").map_or(256, |v| v as usize),
            annotations_per_s: num("SPANTRACK_OP_ANNOTATIONS_PER_S").map_or(100, |v| v.min(u64::from(u32::MAX)) as u32),
            publish_dir: match get("SPANTRACK_OPS_DIR") {
                Some(d) if d.is_empty() => None,
                Some(d) => Some(d),
                None => Some(DEFAULT_OPS_DIR.to_string()),
            },
        }
    }
}

/// One window of samples.
#[derive(Clone, Debug)]
struct Window {
    counts: Box<[u32; N_BUCKETS]>,
    n: u32,
    start_ns: u64,
}

impl Window {
    fn new() -> Window {
        Window { counts: Box::new([0; N_BUCKETS]), n: 0, start_ns: 0 }
    }
}

/// What an operation's estimator says now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The threshold for its next spans; `None` while warming up.
    pub threshold_ns: Option<u64>,
    /// p50, p95, p99 of both windows together (`None`: no samples).
    pub p50_ns: Option<u64>,
    pub p95_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// Samples in both windows.
    pub samples: u64,
    /// Coefficient of variation of both windows.
    pub cv: f64,
}

/// The streaming estimator of one operation (see the module's documentation).
#[derive(Clone, Debug)]
pub struct Estimator {
    windows: [Window; 2],
    cur: usize,
    percentile_bp: u32,
    warmup: u32,
    window_samples: u32,
    window_ns: u64,
}

impl Estimator {
    pub fn new(cfg: &ThresholdConfig) -> Estimator {
        Estimator {
            windows: [Window::new(), Window::new()],
            cur: 0,
            percentile_bp: cfg.percentile_bp,
            warmup: cfg.warmup.max(1),
            window_samples: cfg.window_samples.clamp(cfg.warmup.max(1), MAX_WINDOW_SAMPLES),
            window_ns: cfg.window_ns,
        }
    }

    /// Adds a latency of `v` ns, observed at `now_ns` (any clock that does not go back;
    /// the span's end time). Returns whether a window closed.
    pub fn record(&mut self, v: u64, now_ns: u64) -> bool {
        let w = &self.windows[self.cur];
        let full = w.n >= self.window_samples
            || (w.n >= self.warmup && now_ns.saturating_sub(w.start_ns) >= self.window_ns);
        if full {
            self.cur ^= 1;
            let w = &mut self.windows[self.cur];
            w.counts.fill(0);
            w.n = 0;
        }
        let w = &mut self.windows[self.cur];
        if w.n == 0 {
            w.start_ns = now_ns;
        }
        w.counts[bucket_of(v)] += 1;
        w.n += 1;
        full
    }

    /// Samples in the current window.
    pub fn current_samples(&self) -> u32 {
        self.windows[self.cur].n
    }

    /// The threshold for the operation's next spans: the percentile of the previous
    /// window, or the lower of it and the current one's once that is warm; `None` while
    /// neither is warm.
    pub fn threshold_ns(&self) -> Option<u64> {
        let warm = |w: &Window| (w.n >= self.warmup).then(|| percentile_upper(&w.counts[..], u64::from(w.n), self.percentile_bp)).flatten();
        match (warm(&self.windows[self.cur ^ 1]), warm(&self.windows[self.cur])) {
            (Some(p), Some(c)) => Some(p.min(c)),
            (p, c) => p.or(c),
        }
    }

    /// The threshold and the operation's statistics now.
    pub fn estimate(&self) -> Estimate {
        let (threshold, both, n) = self.both();
        Estimate::of(threshold, &both, n)
    }

    /// The threshold, both windows' histogram together and its samples.
    fn both(&self) -> (Option<u64>, [u32; N_BUCKETS], u64) {
        let (cur, prev) = (&self.windows[self.cur], &self.windows[self.cur ^ 1]);
        let mut both = [0u32; N_BUCKETS];
        for (b, (c, p)) in both.iter_mut().zip(cur.counts.iter().zip(prev.counts.iter())) {
            *b = c + p;
        }
        (self.threshold_ns(), both, u64::from(cur.n) + u64::from(prev.n))
    }
}

impl Estimate {
    /// The statistics of histogram `counts` of `n` samples with `threshold_ns`: in one pass
    /// over the buckets, the same values as [`percentile`] (p50, p95, p99) and [`cv`] give.
    pub fn of(threshold_ns: Option<u64>, counts: &[u32; N_BUCKETS], n: u64) -> Estimate {
        const QS: [u32; 3] = [5000, 9500, 9900];
        let ranks = QS.map(|q| rank(n, q));
        let mut pct: [Option<u64>; 3] = [None; 3];
        let mut next = 0;
        let (mut cum, mut s1, mut s2) = (0u64, 0u128, 0u128);
        each_occupied(counts, |i, c| {
            let m = bucket_mid(i);
            cum += u64::from(c);
            while next < QS.len() && cum >= ranks[next] {
                pct[next] = Some(m);
                next += 1;
            }
            let cm = u128::from(c) * u128::from(m);
            s1 += cm;
            s2 += cm * u128::from(m);
            true
        });
        if n == 0 {
            pct = [None; 3];
        } else {
            // Never when `n` is the counts' sum (as `percentile`: the last bucket).
            for p in &mut pct[next..] {
                *p = Some(bucket_mid(N_BUCKETS - 1));
            }
        }
        Estimate { threshold_ns, p50_ns: pct[0], p95_ns: pct[1], p99_ns: pct[2], samples: n, cv: cv_of_sums(s1, s2, n) }
    }
}

/// Refresh an operation's cached threshold after this many samples of a warm window (and
/// when a window closes or turns warm: the only other times it changes).
pub const REFRESH_EVERY: u32 = 32;

/// `Op::cached`: threshold << 2 | source (0 = warm-up).
const SRC_ADAPTIVE: u64 = 1;

/// One operation's state, shared by the service threads (record, cached threshold) and the
/// worker (statistics for the attributes, annotation cap).
#[derive(Debug)]
pub struct Op {
    est: Mutex<Estimator>,
    /// The threshold its next spans get: `ns << 2 | SRC_ADAPTIVE`, or 0 (warm-up).
    cached: AtomicU64,
    /// Samples not recorded because another thread held the estimator (never waited for).
    pub skipped: AtomicU64,
    pub spans: AtomicU64,
    pub annotated: AtomicU64,
    pub capped: AtomicU64,
    /// The per-operation annotation cap: tokens (thousandths) and when last refilled (ns).
    cap: Mutex<(u64, u64)>,
}

impl Op {
    fn new(cfg: &ThresholdConfig) -> Op {
        Op {
            est: Mutex::new(Estimator::new(cfg)),
            cached: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            spans: AtomicU64::new(0),
            annotated: AtomicU64::new(0),
            capped: AtomicU64::new(0),
            cap: Mutex::new((u64::from(cfg.annotations_per_s) * 1000, 0)),
        }
    }

    /// The threshold for a span beginning now: `(Some(ns), Adaptive)` or `(None, Warmup)`.
    #[inline]
    pub fn threshold(&self) -> (Option<u64>, Source) {
        let c = self.cached.load(Ordering::Relaxed);
        if c & SRC_ADAPTIVE != 0 {
            (Some(c >> 2), Source::Adaptive)
        } else {
            (None, Source::Warmup)
        }
    }

    /// Records a span of `dur` ns that ended at `now_ns`. Never waits: if another thread
    /// holds the estimator, the sample is skipped (counted).
    pub fn record(&self, dur: u64, now_ns: u64, floor_ns: u64) {
        self.spans.fetch_add(1, Ordering::Relaxed);
        let Ok(mut e) = self.est.try_lock() else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let rotated = e.record(dur, now_ns);
        let n = e.current_samples();
        if rotated || n == e.warmup || (n > e.warmup && n % REFRESH_EVERY == 0) {
            let c = match e.threshold_ns() {
                Some(t) => (t.max(floor_ns).clamp(1, MAX_THRESHOLD_NS) << 2) | SRC_ADAPTIVE,
                None => 0,
            };
            self.cached.store(c, Ordering::Relaxed);
        }
    }

    /// The estimator's statistics now (the worker's view, for the attributes).
    pub fn estimate(&self) -> Estimate {
        // Only the sums under the lock (a service thread that finds it held skips its
        // sample); the statistics after.
        let (threshold, both, n) = self.est.lock().unwrap_or_else(|e| e.into_inner()).both();
        Estimate::of(threshold, &both, n)
    }

    /// May one more span of this operation be annotated now (the per-operation cap)?
    pub fn allow_annotation(&self, per_s: u32, now_ns: u64) -> bool {
        if per_s == 0 {
            return true;
        }
        let mut c = self.cap.lock().unwrap_or_else(|e| e.into_inner());
        let max = u64::from(per_s) * 1000;
        let elapsed = now_ns.saturating_sub(c.1);
        let refill = u64::try_from(u128::from(elapsed) * u128::from(per_s) / 1_000_000).unwrap_or(u64::MAX);
        c.0 = c.0.saturating_add(refill).min(max);
        c.1 = now_ns;
        if c.0 >= 1000 {
            c.0 -= 1000;
            true
        } else {
            self.capped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Default directory of the published statistics (`spantrack top`).
pub const DEFAULT_OPS_DIR: &str = "/tmp/spantrack-ops";

/// Writes `doc` to `<dir>/<pid>.json` (through a new file renamed over it; the directory is
/// created sticky and world-writable like /tmp, each file is its writer's).
pub fn publish(dir: &str, pid: u32, doc: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if std::fs::metadata(dir).is_err() {
        let _ = std::fs::DirBuilder::new().mode(0o1777).create(dir);
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777));
    }
    let tmp = format!("{dir}/.{pid}.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(doc.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, format!("{dir}/{pid}.json"))
}

/// Removes what [`publish`] wrote.
pub fn unpublish(dir: &str, pid: u32) {
    let _ = std::fs::remove_file(format!("{dir}/{pid}.json"));
}

/// Largest threshold the module accepts (`MAX_THRESHOLD_NS` of its tunables, 1 hour).
pub const MAX_THRESHOLD_NS: u64 = spantrack_logic::tunables::MAX_THRESHOLD_NS;

/// An operation within one processor: span name and kind (the service is the processor's).
pub type OpKey = (Cow<'static, str>, u8);

/// The operations of a process, at most `max_ops`.
#[derive(Debug)]
pub struct OpTable {
    ops: RwLock<HashMap<OpKey, Arc<Op>>>,
    cfg: ThresholdConfig,
    /// Spans whose operation found no room (or the table busy being extended).
    pub overflow: AtomicU64,
    /// The service (`service.name` of the provider's resource).
    service: RwLock<String>,
}

/// The name of a span kind code (`processor::kind_code`).
pub fn kind_name(code: u8) -> &'static str {
    ["client", "server", "producer", "consumer", "internal"].get(usize::from(code)).copied().unwrap_or("internal")
}

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

impl OpTable {
    pub fn new(cfg: ThresholdConfig) -> OpTable {
        OpTable { ops: RwLock::new(HashMap::new()), cfg, overflow: AtomicU64::new(0), service: RwLock::new(String::new()) }
    }

    /// Sets the service name (from the provider's resource).
    pub fn set_service(&self, name: &str) {
        *self.service.write().unwrap_or_else(|e| e.into_inner()) = name.to_string();
    }

    /// The per-operation statistics as the JSON document `spantrack top` reads.
    pub fn to_json(&self, pid: u32, extra: &[(&str, u64)]) -> String {
        let service = self.service.read().unwrap_or_else(|e| e.into_inner()).clone();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut s = format!(
            "{{\"pid\":{pid},\"time\":{now:.3},\"runtime\":\"rust\",\"mode\":\"{}\",\"percentile_bp\":{},\"warmup\":{},\"ops_overflow\":{}",
            if self.cfg.adaptive { "adaptive" } else { "fixed" },
            self.cfg.percentile_bp,
            self.cfg.warmup,
            self.overflow.load(Ordering::Relaxed)
        );
        for (k, v) in extra {
            s.push_str(&format!(",\"{k}\":{v}"));
        }
        s.push_str(",\"operations\":[");
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        for (i, ((name, kind), op)) in self.snapshot().into_iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let e = op.estimate();
            let (t, src) = op.threshold();
            let src = if self.cfg.adaptive { src.as_str() } else { Source::Fixed.as_str() };
            s.push_str("{\"service\":");
            json_str(&service, &mut s);
            s.push_str(",\"name\":");
            json_str(&name, &mut s);
            s.push_str(&format!(
                ",\"kind\":\"{}\",\"spans\":{},\"annotated\":{},\"capped\":{},\"samples\":{},\"p50_ns\":{},\"p95_ns\":{},\"p99_ns\":{},\"cv\":{},\"threshold_ns\":{},\"source\":\"{}\"}}",
                kind_name(kind),
                op.spans.load(Ordering::Relaxed),
                op.annotated.load(Ordering::Relaxed),
                op.capped.load(Ordering::Relaxed),
                e.samples,
                opt(e.p50_ns),
                opt(e.p95_ns),
                opt(e.p99_ns),
                if e.cv.is_finite() { e.cv } else { 0.0 },
                if self.cfg.adaptive { opt(t) } else { "null".to_string() },
                src
            ));
        }
        s.push_str("]}\n");
        s
    }

    pub fn config(&self) -> &ThresholdConfig {
        &self.cfg
    }

    /// The operation, added if there is room. Never waits for a lock: when another
    /// thread is adding an operation, `None` (the span gets the default threshold).
    pub fn get_or_add(&self, name: &Cow<'static, str>, kind: u8) -> Option<Arc<Op>> {
        let key: OpKey = (name.clone(), kind);
        if let Ok(m) = self.ops.try_read() {
            if let Some(op) = m.get(&key) {
                return Some(Arc::clone(op));
            }
            if m.len() >= self.cfg.max_ops {
                self.overflow.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let Ok(mut m) = self.ops.try_write() else {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if m.len() >= self.cfg.max_ops && !m.contains_key(&key) {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Arc::clone(m.entry(key).or_insert_with(|| Arc::new(Op::new(&self.cfg)))))
    }

    /// A copy of the table (name, kind, operation), for reports.
    pub fn snapshot(&self) -> Vec<(OpKey, Arc<Op>)> {
        let m = self.ops.read().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(warmup: u32, window: u32) -> ThresholdConfig {
        ThresholdConfig {
            adaptive: true,
            percentile_bp: 9500,
            warmup,
            window_samples: window,
            window_ns: u64::MAX,
            floor_ns: 0,
            max_ops: 4,
            annotations_per_s: 10,
            publish_dir: None,
        }
    }

    /// Exact sample percentile: the value of rank ceil(n q).
    fn exact(sorted: &[u64], q_bp: u32) -> u64 {
        let n = sorted.len() as u64;
        let rank = ((n * u64::from(q_bp)).div_ceil(10_000)).max(1);
        sorted[rank as usize - 1]
    }

    #[test]
    fn buckets_are_monotonic_and_narrow() {
        let mut last = 0;
        for (k, v) in (0..5000u64).chain((0..2000).map(|i| 1u64 << (i % 42) | i)).enumerate() {
            let b = bucket_of(v);
            let (lo, w) = bucket_bounds(b);
            assert!(lo <= v && v < lo + w, "{v} in bucket {b} [{lo}, +{w})");
            assert!(w == 1 || w * 8 <= lo, "{v}: width {w} of {lo}");
            if k < 5000 {
                assert!(b >= last);
                last = b;
            }
        }
        assert_eq!(bucket_of(u64::MAX), N_BUCKETS - 1);
        assert_eq!(default_warmup(9500), 59);
        assert_eq!(default_warmup(9900), 299);
        assert_eq!(parse_percentile("99.9"), Some(9990));
        assert_eq!(parse_percentile("100"), None);
    }

    /// Property: on random data of several shapes, every percentile is within 1/16 of the
    /// exact sample percentile.
    #[test]
    fn percentiles_within_one_sixteenth() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..300 {
            let n = 1 + (rnd() % 3000) as usize;
            let shape = case % 4;
            let v: Vec<u64> = (0..n)
                .map(|_| match shape {
                    0 => rnd() % 2_000_000,                          // uniform up to 2 ms
                    1 => 1u64 << (rnd() % 40) | (rnd() % 1024),        // log-uniform
                    2 => 1_000_000 + (rnd() % 50_000) * (1 + rnd() % 3), // narrow with a tail
                    _ => if rnd() % 20 == 0 { 200_000_000 } else { 900_000 + rnd() % 200_000 },
                })
                .collect();
            let mut e = Estimator::new(&cfg(1, MAX_WINDOW_SAMPLES));
            for &s in &v {
                e.record(s, 0);
            }
            let mut sorted = v.clone();
            sorted.sort_unstable();
            let est = e.estimate();
            for (q, got) in [(5000, est.p50_ns), (9500, est.p95_ns), (9900, est.p99_ns)] {
                let want = exact(&sorted, q);
                let got = got.unwrap();
                assert!(got.abs_diff(want) * 16 <= want, "case {case} q {q}: {got} vs {want}");
            }
            // The threshold: above the exact p95, by at most 1/8, and no more than 5% of the
            // samples at or above it.
            let t = est.threshold_ns.unwrap();
            let want = exact(&sorted, 9500);
            assert!(t > want && (t - want) * 8 <= want + 8, "case {case}: threshold {t} vs p95 {want}");
            assert!(sorted.iter().filter(|&&s| s >= t).count() * 20 <= sorted.len(), "case {case}");
        }
    }

    #[test]
    fn warmup_then_adaptive_and_burst_cannot_hide() {
        let mut e = Estimator::new(&cfg(59, 200));
        for i in 0..58 {
            e.record(1_000_000 + i * 1000, i);
        }
        assert_eq!(e.estimate().threshold_ns, None);
        e.record(1_000_000, 58);
        let t = e.estimate().threshold_ns.unwrap();
        assert!((1_000_000..1_200_000).contains(&t), "{t}");
        for i in 59..200 {
            e.record(1_000_000 + (i % 60) * 1000, i);
        }
        let before = e.estimate().threshold_ns.unwrap();
        // A burst: half the next window ten times slower. The threshold stays the previous
        // window's, so every burst span is above it.
        for i in 0..100 {
            e.record(if i % 2 == 0 { 10_000_000 } else { 1_030_000 }, 200 + i);
            assert!(e.estimate().threshold_ns.unwrap() <= before.max(1_200_000));
        }
    }

    /// Drift: a step at a window boundary is followed within one window, both ways; a step
    /// anywhere within two.
    #[test]
    fn step_is_followed() {
        for (a, b) in [(1_000_000u64, 5_000_000u64), (5_000_000, 1_000_000)] {
            for offset in [0u64, 137, 950] {
                let w = 1000u64;
                let mut e = Estimator::new(&cfg(59, w as u32));
                let mut i = 0u64;
                while i < 3 * w + offset {
                    e.record(a + i % 100, i);
                    i += 1;
                }
                let limit = if offset == 0 { w + 59 } else { 2 * w };
                let mut followed = None;
                for k in 0..3 * w {
                    e.record(b + k % 100, i + k);
                    let t = e.estimate().threshold_ns.unwrap();
                    if t.abs_diff(b) * 10 < b && followed.is_none() {
                        followed = Some(k + 1);
                    }
                    if followed.is_some() {
                        assert!(t.abs_diff(b) * 10 < b, "{a}->{b} offset {offset}: back to {t} at {k}");
                    }
                }
                let f = followed.unwrap();
                assert!(f <= limit, "{a}->{b} offset {offset}: followed after {f} samples");
            }
        }
    }

    #[test]
    fn one_pass_statistics_are_the_separate_functions() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..400 {
            let mut counts = [0u32; N_BUCKETS];
            let filled = (rnd() % 40) as usize;
            for _ in 0..filled {
                let i = (rnd() % N_BUCKETS as u64) as usize;
                counts[i] += (rnd() % if case % 3 == 0 { 3 } else { 5000 }) as u32;
            }
            if case % 7 == 0 {
                counts[N_BUCKETS - 1] += 1;
            }
            let n: u64 = counts.iter().map(|&c| u64::from(c)).sum();
            let e = Estimate::of(Some(42), &counts, n);
            assert_eq!(e.p50_ns, percentile(&counts, n, 5000), "case {case}");
            assert_eq!(e.p95_ns, percentile(&counts, n, 9500), "case {case}");
            assert_eq!(e.p99_ns, percentile(&counts, n, 9900), "case {case}");
            assert_eq!(e.cv.to_bits(), cv(&counts, n).to_bits(), "case {case}");
            assert_eq!((e.samples, e.threshold_ns), (n, Some(42)));
        }
    }

    /// The golden file that the Python suite checks too: both give the same estimates.
    #[test]
    fn golden_file_agrees() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/thresholds.txt");
        let text = std::fs::read_to_string(path).expect("tests/golden/thresholds.txt");
        let opt = |w: &str| (w != "-").then(|| w.parse::<u64>().unwrap());
        let (mut est, mut name, mut checked) = (None, String::new(), 0);
        for (no, line) in text.lines().enumerate() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                [] => {}
                [c, ..] if c.starts_with('#') => {}
                ["case", n, q, warm, win, age] => {
                    name = n.to_string();
                    est = Some(Estimator::new(&ThresholdConfig {
                        percentile_bp: q.parse().unwrap(),
                        warmup: warm.parse().unwrap(),
                        window_samples: win.parse().unwrap(),
                        window_ns: age.parse().unwrap(),
                        ..cfg(1, 1)
                    }));
                }
                ["s", v, t] => {
                    est.as_mut().unwrap().record(v.parse().unwrap(), t.parse().unwrap());
                }
                ["e", th, p50, p95, p99, n, cv] => {
                    let e = est.as_ref().unwrap().estimate();
                    let at = format!("{name}, line {}", no + 1);
                    assert_eq!(e.threshold_ns, opt(th), "{at}");
                    assert_eq!((e.p50_ns, e.p95_ns, e.p99_ns), (opt(p50), opt(p95), opt(p99)), "{at}");
                    assert_eq!(e.samples, n.parse::<u64>().unwrap(), "{at}");
                    let want: f64 = cv.parse().unwrap();
                    assert!((e.cv - want).abs() <= 1e-12 * want.abs().max(1.0), "{at}: cv {} vs {want}", e.cv);
                    checked += 1;
                }
                _ => panic!("line {}: {line:?}", no + 1),
            }
        }
        assert!(checked > 100, "only {checked} estimates checked");
    }

    #[test]
    fn time_closes_a_warm_window() {
        let mut c = cfg(10, 1000);
        c.window_ns = 1_000;
        let mut e = Estimator::new(&c);
        for i in 0..10 {
            assert!(!e.record(100, i));
        }
        assert!(e.record(100, 2_000));
        assert_eq!(e.current_samples(), 1);
    }

    #[test]
    fn adaptive_thresholds_have_a_floor_of_1_ms_by_default() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            ThresholdConfig::from_env_with(move |k| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string()))
        };
        assert_eq!(env(&[]).floor_ns, 1_000_000);
        assert_eq!(env(&[("SPANTRACK_THRESHOLD_FLOOR_NS", "0")]).floor_ns, 0);
        assert_eq!(env(&[("SPANTRACK_THRESHOLD_FLOOR_NS", "250000")]).floor_ns, 250_000);
        assert_eq!(env(&[("SPANTRACK_THRESHOLD_FLOOR_NS", "x")]).floor_ns, 1_000_000);
        // A 30 µs operation: its threshold is the floor, or its own p95 without one.
        for (floor, lo, hi) in [(1_000_000, 1_000_000, 1_000_000), (0, 30_000, 36_000)] {
            let op = Op::new(&cfg(5, 100));
            for i in 0..40 {
                op.record(30_000 + i % 3 * 100, i, floor);
            }
            let t = op.threshold().0.unwrap();
            assert!((lo..=hi).contains(&t), "floor {floor}: threshold {t}");
        }
    }

    #[test]
    fn op_table_is_bounded_and_cap_refills() {
        let t = OpTable::new(cfg(5, 100));
        for i in 0..4 {
            assert!(t.get_or_add(&Cow::Owned(format!("op{i}")), 1).is_some());
        }
        assert!(t.get_or_add(&Cow::Borrowed("op9"), 1).is_none());
        assert!(t.get_or_add(&Cow::Borrowed("op1"), 1).is_some());
        assert_eq!(t.overflow.load(Ordering::Relaxed), 1);
        let op = t.get_or_add(&Cow::Borrowed("op0"), 1).unwrap();
        assert_eq!(op.threshold(), (None, Source::Warmup));
        for i in 0..5 {
            op.record(2_000_000, i, 0);
        }
        assert!(matches!(op.threshold(), (Some(_), Source::Adaptive)));
        op.record(2_000_000, 6, 5_000_000);
        let _ = op.threshold();
        let ok = (0..20).filter(|_| op.allow_annotation(10, 1_000)).count();
        assert_eq!(ok, 10);
        assert!(op.allow_annotation(10, 1_000 + 100_000_000));
        assert!(!op.allow_annotation(10, 1_000 + 100_000_000));
    }
}
