"""The per-operation threshold estimator (spantrack_hook/threshold.py): the golden file that
the Rust suite checks too, percentiles against exact ones, warm-up, bursts, drift."""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from spantrack_hook import threshold as th  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests", "golden", "thresholds.txt")


def exact(sorted_vals, q_bp):
    rank = max(1, -(-(len(sorted_vals) * q_bp) // 10_000))
    return sorted_vals[rank - 1]


class GoldenFile(unittest.TestCase):
    def test_golden_file_agrees(self):
        est, name, checked = None, "", 0
        opt = lambda w: None if w == "-" else int(w)  # noqa: E731
        with open(GOLDEN) as f:
            for no, line in enumerate(f, 1):
                w = line.split()
                if not w or w[0].startswith("#"):
                    continue
                if w[0] == "case":
                    name = w[1]
                    est = th.Estimator(int(w[2]), int(w[3]), int(w[4]), int(w[5]))
                elif w[0] == "s":
                    est.record(int(w[1]), int(w[2]))
                elif w[0] == "e":
                    e = est.estimate()
                    at = f"{name}, line {no}"
                    self.assertEqual(e["threshold_ns"], opt(w[1]), at)
                    self.assertEqual((e["p50_ns"], e["p95_ns"], e["p99_ns"]),
                                     (opt(w[2]), opt(w[3]), opt(w[4])), at)
                    self.assertEqual(e["samples"], int(w[5]), at)
                    want = float(w[6])
                    self.assertLessEqual(abs(e["cv"] - want), 1e-12 * max(abs(want), 1.0), at)
                    checked += 1
                else:
                    self.fail(f"line {no}: {line!r}")
        self.assertGreater(checked, 100)


class Estimates(unittest.TestCase):
    def test_buckets(self):
        for v in list(range(5000)) + [1 << k | k for k in range(60)]:
            lo, w = th.bucket_bounds(th.bucket_of(v))
            if v < (1 << th.MAX_EXP):
                self.assertTrue(lo <= v < lo + w, v)
                self.assertTrue(w == 1 or w * 8 <= lo, v)
        self.assertEqual(th.bucket_of(2**64 - 1), th.N_BUCKETS - 1)
        self.assertEqual(th.default_warmup(9500), 59)
        self.assertEqual(th.default_warmup(9900), 299)
        self.assertEqual(th.parse_percentile("99.9"), 9990)
        self.assertIsNone(th.parse_percentile("100"))

    def test_percentiles_within_one_sixteenth(self):
        r = random.Random(5)
        shapes = [lambda: r.randrange(2_000_000), lambda: int(10 ** r.uniform(2, 11)),
                  lambda: int(r.lognormvariate(13, 1)),
                  lambda: 200_000_000 if r.random() < 0.05 else r.randrange(900_000, 1_100_000)]
        for case in range(120):
            vals = [shapes[case % 4]() for _ in range(r.randrange(1, 3000))]
            est = th.Estimator(9500, 1, th.MAX_WINDOW_SAMPLES, 10**18)
            for v in vals:
                est.record(v, 0)
            e = est.estimate()
            vals.sort()
            for q, got in ((5000, e["p50_ns"]), (9500, e["p95_ns"]), (9900, e["p99_ns"])):
                want = exact(vals, q)
                self.assertLessEqual(abs(got - want) * 16, want, (case, q, got, want))
            t, want = e["threshold_ns"], exact(vals, 9500)
            self.assertTrue(want < t and (t - want) * 8 <= want + 8, (case, t, want))
            self.assertLessEqual(sum(1 for v in vals if v >= t) * 20, len(vals), case)

    def test_burst_cannot_hide_and_step_is_followed(self):
        est = th.Estimator(9500, 59, 200, 10**18)
        for i in range(200):
            est.record(1_000_000 + (i % 60) * 1000, i)
        before = est.threshold_ns()
        for i in range(100):
            est.record(10_000_000 if i % 2 == 0 else 1_030_000, 200 + i)
            self.assertLessEqual(est.threshold_ns(), max(before, 1_200_000))
        # Step down at a window boundary: followed within one window (+ warm-up).
        est = th.Estimator(9500, 59, 1000, 10**18)
        for i in range(3000):
            est.record(5_000_000 + i % 100, i)
        for k in range(1, 2000):
            est.record(1_000_000 + k % 100, 3000 + k)
            if abs(est.threshold_ns() - 1_000_000) * 10 < 1_000_000:
                break
        self.assertLessEqual(k, 1059)

    def test_config_from_env(self):
        c = th.ThresholdConfig({})
        self.assertEqual((c.adaptive, c.percentile_bp, c.warmup, c.window_samples), (True, 9500, 59, 1000))
        c = th.ThresholdConfig({"SPANTRACK_THRESHOLD": "fixed", "SPANTRACK_THRESHOLD_PERCENTILE": "99"})
        self.assertEqual((c.adaptive, c.percentile_bp, c.warmup), (False, 9900, 299))
        c = th.ThresholdConfig({"SPANTRACK_THRESHOLD_PERCENTILE": "abc", "SPANTRACK_THRESHOLD_WARMUP": "20",
                                "SPANTRACK_THRESHOLD_WINDOW": "5"})
        self.assertEqual((c.percentile_bp, c.warmup, c.window_samples), (9500, 20, 20))

    def test_floor_is_1_ms_by_default(self):
        self.assertEqual(th.ThresholdConfig({}).floor_ns, 1_000_000)
        self.assertEqual(th.ThresholdConfig({"SPANTRACK_THRESHOLD_FLOOR_NS": "0"}).floor_ns, 0)
        self.assertEqual(th.ThresholdConfig({"SPANTRACK_THRESHOLD_FLOOR_NS": "250000"}).floor_ns, 250_000)
        # A 30 us operation: its threshold is the floor, or its own p95 without one.
        cfg = th.ThresholdConfig({"SPANTRACK_THRESHOLD_WARMUP": "5", "SPANTRACK_THRESHOLD_WINDOW": "100"})
        for floor, lo, hi in ((1_000_000, 1_000_000, 1_000_000), (0, 30_000, 36_000)):
            op = th.Op(("svc", "op", 1), cfg)
            for i in range(40):
                op.record(30_000 + i % 3 * 100, i, floor)
            self.assertTrue(lo <= op.threshold <= hi, (floor, op.threshold))

    def test_op_table_and_cap(self):
        cfg = th.ThresholdConfig({"SPANTRACK_THRESHOLD_MAX_OPS": "2", "SPANTRACK_THRESHOLD_WARMUP": "5"})
        t = th.OpTable(cfg)
        a, b = t.get(("svc", "a", 1)), t.get(("svc", "b", 1))
        self.assertIsNone(t.get(("svc", "c", 1)))
        self.assertIs(t.get(("svc", "a", 1)), a)
        self.assertEqual(t.overflow, 1)
        self.assertIsNone(a.threshold)
        for i in range(5):
            a.record(2_000_000, i, 0)
        self.assertIsNotNone(a.threshold)
        self.assertEqual(sum(a.allow_annotation(10, 1000) for _ in range(20)), 10)
        self.assertTrue(a.allow_annotation(10, 1000 + 100_000_000))
        self.assertFalse(a.allow_annotation(10, 1000 + 100_000_000))
        self.assertTrue(b.allow_annotation(0, 0))


class SparseWalk(unittest.TestCase):
    def test_sparse_estimate_equals_the_walk_over_every_bucket(self):
        """The estimator walks only its non-empty buckets and keeps running sums: the same
        numbers as the plain walk over all 320 buckets (percentile_upper, _percentiles,
        cv), window rotations included."""
        rng = random.Random(19)
        for case in range(40):
            est = th.Estimator(rng.choice([5000, 9500, 9900]), rng.randint(1, 60),
                               rng.randint(60, 400), 10**9)
            now = 0
            for i in range(rng.randint(1, 1500)):
                now += rng.randint(0, 5_000_000)
                est.record(int(rng.lognormvariate(14, rng.choice([0.1, 1.0, 3.0]))), now)
                if i % 37:
                    continue
                both = [a + b for a, b in zip(*est.windows)]
                n = est.n[0] + est.n[1]
                e = est.estimate()
                want = th._percentiles(both, n, (5000, 9500, 9900))
                self.assertEqual([e["p50_ns"], e["p95_ns"], e["p99_ns"]], want, (case, i))
                self.assertEqual(e["cv"], th.cv(both, n), (case, i))
                c, p = est.cur, est.cur ^ 1
                ups = [th.percentile_upper(est.windows[w], est.n[w], est.percentile_bp)
                       if est.n[w] >= est.warmup else None for w in (p, c)]
                ups = [u for u in ups if u is not None]
                self.assertEqual(e["threshold_ns"], min(ups) if ups else None, (case, i))


if __name__ == "__main__":
    unittest.main()
