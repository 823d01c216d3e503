"""Per-operation latency thresholds: the same estimator as the Rust processor's
(otel/src/threshold.rs, whose documentation explains the choices), integer maths only, so
both give the same numbers; tests/golden/thresholds.json is checked by both test suites.

An operation is service + span name + span kind. Its latencies go into a log-linear integer
histogram (8 buckets per power of two, 320 buckets up to 2^42 ns); two alternating windows;
the threshold is the previous window's percentile, or the lower of it and the current
window's once that one is warm; until then the module's threshold_ns applies (warm-up).
Percentile estimates (bucket midpoints) are within 1/16 of the exact sample percentile; the
threshold is the upper edge of the percentile's bucket (within 1/8 above it, and at most
1 - q of a window's samples at or above it).
"""

import itertools
import math
import os
import threading

SUB_BITS = 3
MAX_EXP = 42
N_BUCKETS = 8 * (MAX_EXP - 2)
MAX_WINDOW_SAMPLES = 1 << 20
MAX_THRESHOLD_NS = 3_600_000_000_000
REFRESH_EVERY = 32

SOURCE_ADAPTIVE = "adaptive"
SOURCE_FIXED = "fixed"
SOURCE_WARMUP = "warmup"

_TOP = (1 << MAX_EXP) - 1


def bucket_of(v: int) -> int:
    if v > _TOP:
        v = _TOP
    if v < 8:
        return max(v, 0)
    e = v.bit_length() - 1
    return 8 * (e - 2) + ((v >> (e - SUB_BITS)) & 7)


def bucket_bounds(i: int):
    if i < 8:
        return i, 1
    e = i // 8 + 2
    m = i % 8
    return (8 + m) << (e - SUB_BITS), 1 << (e - SUB_BITS)


_MIDS = [lo + w // 2 for lo, w in map(bucket_bounds, range(N_BUCKETS))]


def bucket_mid(i: int) -> int:
    return _MIDS[i]


def percentile(counts, n: int, q_bp: int):
    """Midpoint of the bucket holding the sample of rank ceil(n q) (q in basis points)."""
    if n == 0:
        return None
    rank = max(1, -(-(n * q_bp) // 10_000))
    for i, cum in enumerate(itertools.accumulate(counts)):
        if cum >= rank:
            return _MIDS[i]
    return _MIDS[len(counts) - 1]


def percentile_upper(counts, n: int, q_bp: int):
    """Upper edge of the bucket holding the percentile: the threshold (at most 1 - q of the
    samples at or above it; within 1/8 above the exact percentile)."""
    if n == 0:
        return None
    rank = max(1, -(-(n * q_bp) // 10_000))
    for i, cum in enumerate(itertools.accumulate(counts)):
        if cum >= rank:
            lo, w = bucket_bounds(i)
            return lo + w
    lo, w = bucket_bounds(len(counts) - 1)
    return lo + w


def _percentiles(counts, n: int, qs):
    """Several percentiles in one pass (qs ascending)."""
    return _percentiles_sparse(range(len(counts)), counts, n, qs)


def cv(counts, n: int) -> float:
    s1 = s2 = 0
    for c, m in zip(counts, _MIDS):
        if c:
            s1 += c * m
            s2 += c * m * m
    if s1 == 0:
        return 0.0
    var = max(0, n * s2 - s1 * s1)
    return math.sqrt(float(var)) / float(s1)


def default_warmup(percentile_bp: int) -> int:
    q = min(max(percentile_bp, 1), 9999) / 10_000.0
    return max(1, math.ceil(math.log(0.05) / math.log(q)))


def parse_percentile(s):
    try:
        v = float(str(s).strip())
    except ValueError:
        return None
    bp = round(v * 100.0)
    return int(bp) if 1 <= bp <= 9999 else None


class ThresholdConfig:
    """From the environment (the same variables and defaults as the Rust Config)."""

    def __init__(self, env=None):
        env = os.environ if env is None else env

        def num(k, default):
            try:
                return int(str(env.get(k, "")).strip())
            except ValueError:
                return default

        self.adaptive = str(env.get("SPANTRACK_THRESHOLD", "adaptive")).strip() != "fixed"
        self.percentile_bp = parse_percentile(env.get("SPANTRACK_THRESHOLD_PERCENTILE", "95")) or 9500
        w = num("SPANTRACK_THRESHOLD_WARMUP", 0)
        self.warmup = min(w, MAX_WINDOW_SAMPLES) if w >= 1 else default_warmup(self.percentile_bp)
        ws = num("SPANTRACK_THRESHOLD_WINDOW", 1000)
        self.window_samples = max(min(ws if ws >= 0 else 1000, MAX_WINDOW_SAMPLES), self.warmup)
        s = num("SPANTRACK_THRESHOLD_WINDOW_S", 60)
        self.window_ns = (s if s >= 1 else 60) * 1_000_000_000
        self.floor_ns = max(0, num("SPANTRACK_THRESHOLD_FLOOR_NS", DEFAULT_FLOOR_NS))
        self.max_ops = max(0, num("SPANTRACK_THRESHOLD_MAX_OPS", 256))
        self.annotations_per_s = max(0, num("SPANTRACK_OP_ANNOTATIONS_PER_S", 100))


class Estimator:
    """One operation's windows (see the module's documentation). Besides its 320 counts,
    each window keeps the set of its non-empty buckets and the sums of count x midpoint and
    count x midpoint^2, so that the percentiles walk only the non-empty buckets and the CV
    needs no walk: the same integers as a walk over all buckets, so the same results as
    the Rust estimator, at a few microseconds where the full walk cost ~45 us per slow
    span in the interpreter."""

    __slots__ = ("windows", "nonzero", "s1", "s2", "n", "start", "cur", "percentile_bp",
                 "warmup", "window_samples", "window_ns")

    def __init__(self, percentile_bp=9500, warmup=59, window_samples=1000,
                 window_ns=60_000_000_000):
        self.windows = [[0] * N_BUCKETS, [0] * N_BUCKETS]
        self.nonzero = [set(), set()]
        self.s1 = [0, 0]
        self.s2 = [0, 0]
        self.n = [0, 0]
        self.start = [0, 0]
        self.cur = 0
        self.percentile_bp = percentile_bp
        self.warmup = max(1, warmup)
        self.window_samples = min(max(window_samples, self.warmup), MAX_WINDOW_SAMPLES)
        self.window_ns = window_ns

    @classmethod
    def of(cls, cfg: ThresholdConfig):
        return cls(cfg.percentile_bp, cfg.warmup, cfg.window_samples, cfg.window_ns)

    def record(self, v: int, now_ns: int) -> bool:
        """Adds a latency of v ns observed at now_ns; whether a window closed."""
        c = self.cur
        n = self.n[c]
        full = n >= self.window_samples or (n >= self.warmup and now_ns - self.start[c] >= self.window_ns)
        if full:
            c = self.cur = c ^ 1
            self.windows[c] = [0] * N_BUCKETS
            self.nonzero[c] = set()
            self.s1[c] = self.s2[c] = 0
            self.n[c] = 0
        if self.n[c] == 0:
            self.start[c] = now_ns
        b = bucket_of(v)
        w = self.windows[c]
        if not w[b]:
            self.nonzero[c].add(b)
        w[b] += 1
        m = _MIDS[b]
        self.s1[c] += m
        self.s2[c] += m * m
        self.n[c] += 1
        return full

    def current_samples(self) -> int:
        return self.n[self.cur]

    def _upper(self, c: int):
        """percentile_upper of window c, over its non-empty buckets."""
        n = self.n[c]
        if n == 0:
            return None
        rank = max(1, -(-(n * self.percentile_bp) // 10_000))
        w = self.windows[c]
        cum = 0
        for i in sorted(self.nonzero[c]):
            cum += w[i]
            if cum >= rank:
                lo, width = bucket_bounds(i)
                return lo + width
        lo, width = bucket_bounds(N_BUCKETS - 1)
        return lo + width

    def threshold_ns(self):
        c, p = self.cur, self.cur ^ 1
        tp = self._upper(p) if self.n[p] >= self.warmup else None
        tc = self._upper(c) if self.n[c] >= self.warmup else None
        if tp is not None and tc is not None:
            return min(tp, tc)
        return tp if tp is not None else tc

    def estimate(self) -> dict:
        n = self.n[0] + self.n[1]
        w0, w1 = self.windows
        idx = sorted(self.nonzero[0] | self.nonzero[1])
        p50, p95, p99 = _percentiles_sparse(idx, [w0[i] + w1[i] for i in idx], n, (5000, 9500, 9900))
        return {"threshold_ns": self.threshold_ns(), "p50_ns": p50, "p95_ns": p95,
                "p99_ns": p99, "samples": n,
                "cv": _cv_of_sums(self.s1[0] + self.s1[1], self.s2[0] + self.s2[1], n)}


def _percentiles_sparse(idx, counts, n: int, qs):
    """_percentiles over the non-empty buckets idx (ascending) with their counts."""
    if n == 0:
        return [None] * len(qs)
    ranks = [max(1, -(-(n * q) // 10_000)) for q in qs]
    out = []
    k = 0
    cum = 0
    for i, c in zip(idx, counts):
        cum += c
        while k < len(ranks) and cum >= ranks[k]:
            out.append(_MIDS[i])
            k += 1
        if k == len(ranks):
            break
    while len(out) < len(qs):
        out.append(_MIDS[-1])
    return out


def _cv_of_sums(s1: int, s2: int, n: int) -> float:
    """cv() from the sums of count x midpoint and count x midpoint^2."""
    if s1 == 0:
        return 0.0
    var = max(0, n * s2 - s1 * s1)
    return math.sqrt(float(var)) / float(s1)


# The default floor of adaptive thresholds, as the Rust library's DEFAULT_FLOOR_NS (1 ms, the
# module's default threshold_ns): without it an operation of tens of microseconds would have
# 5% of its spans annotated.
DEFAULT_FLOOR_NS = 1_000_000

DEFAULT_OPS_DIR = "/tmp/spantrack-ops"


def publish(directory: str, pid: int, doc: dict) -> None:
    """Writes doc as JSON to <directory>/<pid>.json (a new file renamed over it; the
    directory is created sticky and world-writable like /tmp)."""
    import json
    if not os.path.isdir(directory):
        try:
            os.mkdir(directory, 0o1777)
            os.chmod(directory, 0o1777)
        except OSError:
            pass
    tmp = os.path.join(directory, f".{pid}.json.tmp")
    try:
        os.unlink(tmp)
    except OSError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.rename(tmp, os.path.join(directory, f"{pid}.json"))


def unpublish(directory: str, pid: int) -> None:
    try:
        os.unlink(os.path.join(directory, f"{pid}.json"))
    except OSError:
        pass


class Op:
    """One operation of the process: its estimator, the cached threshold its next spans get,
    counters and the per-operation annotation cap. Used under the GIL."""

    __slots__ = ("key", "est", "threshold", "spans", "annotated", "capped", "_tokens", "_at",
                 "lock")

    def __init__(self, key, cfg: ThresholdConfig):
        self.key = key
        self.est = Estimator.of(cfg)
        self.threshold = None  # None: warm-up
        self.spans = 0
        self.annotated = 0
        self.capped = 0
        self._tokens = cfg.annotations_per_s * 1000
        self._at = 0
        self.lock = threading.Lock()

    def record(self, dur: int, now_ns: int, floor_ns: int) -> None:
        self.spans += 1
        if not self.lock.acquire(blocking=False):
            return
        try:
            est = self.est
            rotated = est.record(dur, now_ns)
            n = est.n[est.cur]
            # The threshold changes only when a window closes, when the current one turns
            # warm, and (slowly) as a warm one fills.
            if rotated or n == est.warmup or (n > est.warmup and n % REFRESH_EVERY == 0):
                t = est.threshold_ns()
                self.threshold = None if t is None else min(max(t, floor_ns, 1), MAX_THRESHOLD_NS)
        finally:
            self.lock.release()

    def estimate(self) -> dict:
        with self.lock:
            return self.est.estimate()

    def allow_annotation(self, per_s: int, now_ns: int) -> bool:
        if per_s == 0:
            return True
        cap = per_s * 1000
        elapsed = max(0, now_ns - self._at)
        self._tokens = min(cap, self._tokens + elapsed * per_s // 1_000_000)
        self._at = now_ns
        if self._tokens >= 1000:
            self._tokens -= 1000
            return True
        self.capped += 1
        return False


class OpTable:
    """The operations of a process, at most cfg.max_ops; later ones are counted in overflow."""

    def __init__(self, cfg: ThresholdConfig):
        self.cfg = cfg
        self.ops = {}
        self.overflow = 0

    def get(self, key):
        op = self.ops.get(key)
        if op is None:
            if len(self.ops) >= self.cfg.max_ops:
                self.overflow += 1
                return None
            op = self.ops.setdefault(key, Op(key, self.cfg))
        return op
