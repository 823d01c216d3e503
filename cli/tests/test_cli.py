"""Host tests of `spantrack status/set/top` (cli/spantrack_cli/admin.py) against a fake
/proc and /sys tree (SPANTRACK_FS_ROOT): output, --json, exit codes, error messages. The
real module is exercised in the VM by tests/vm/t_cli.sh."""

import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CMD = os.path.join(ROOT, "scripts", "spantrack")
sys.path.insert(0, os.path.join(ROOT, "cli"))

from spantrack_cli import admin  # noqa: E402


def read(p):
    with open(p) as f:
        return f.read()


def run(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([sys.executable, CMD, *args], capture_output=True, text=True, env=e)
    return p.returncode, p.stdout, p.stderr


class FakeModule(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.env = {"SPANTRACK_FS_ROOT": self.root, "SPANTRACK_OPS_DIR": os.path.join(self.root, "ops")}

    def load(self):
        os.makedirs(os.path.join(self.root, "proc/spantrack"))
        with open(os.path.join(self.root, "proc/spantrack/stats"), "w") as f:
            f.write("processes 1\nspans_begun 42\nspans_slow 3\n")
        open(os.path.join(self.root, "proc/spantrack/control"), "w").close()
        d = os.path.join(self.root, "sys/kernel/spantrack")
        os.makedirs(d)
        for k, v in (("threshold_ns", "1000000"), ("timeout_ns", "60000000000"),
                     ("max_calls", "1024"), ("filter", "all")):
            with open(os.path.join(d, k), "w") as f:
                f.write(v + "\n")

    def test_not_loaded(self):
        rc, out, _ = run("status", env=self.env)
        self.assertEqual((rc, "not loaded" in out), (1, True))
        rc, out, _ = run("status", "--json", env=self.env)
        self.assertEqual((rc, json.loads(out)), (1, {"loaded": False}))
        rc, _, err = run("set", "threshold", "5ms", env=self.env)
        self.assertEqual((rc, "not loaded" in err), (1, True))

    def test_status(self):
        self.load()
        rc, out, _ = run("status", "--json", env=self.env)
        self.assertEqual(rc, 0)
        d = json.loads(out)
        self.assertEqual(d["tunables"]["threshold_ns"], 1000000)
        self.assertEqual(d["stats"]["spans_begun"], 42)
        self.assertIsNone(d["processes"])  # no debugfs: the list needs root
        rc, out, _ = run("status", env=self.env)
        self.assertEqual(rc, 0)
        self.assertIn("threshold_ns", out)
        self.assertIn("1ms", out)
        self.assertIn("needs root", out)

    def test_set(self):
        self.load()
        p = os.path.join(self.root, "sys/kernel/spantrack/threshold_ns")
        rc, out, _ = run("set", "threshold", "5ms", env=self.env)
        self.assertEqual(rc, 0, out)
        self.assertEqual(read(p).strip(), "5000000")
        self.assertIn("1000000 -> 5000000", out)
        rc, out, _ = run("set", "--json", "timeout", "1.5s", env=self.env)
        self.assertEqual((rc, json.loads(out)["new"]), (0, "1500000000"))
        rc, out, _ = run("set", "filter", "deny", "futex", env=self.env)
        self.assertEqual(read(os.path.join(self.root, "sys/kernel/spantrack/filter")), "deny futex\n")
        for bad in (("threshold", "5parsecs"), ("max_calls", "many"), ("nosuch", "1")):
            rc, _, err = run("set", *bad, env=self.env)
            self.assertEqual(rc, 2, (bad, err))
        rc, _, err = run("set", env=self.env)
        self.assertEqual(rc, 2)

    @unittest.skipIf(os.geteuid() == 0, "root may write anything")
    def test_set_not_root(self):
        self.load()
        os.chmod(os.path.join(self.root, "sys/kernel/spantrack/threshold_ns"), 0o444)
        rc, _, err = run("set", "threshold", "5ms", env=self.env)
        self.assertEqual((rc, "not root" in err), (1, True))

    def test_durations(self):
        self.assertEqual(admin.parse_duration("5ms"), 5_000_000)
        self.assertEqual(admin.parse_duration("250us"), 250_000)
        self.assertEqual(admin.parse_duration("1.5s"), 1_500_000_000)
        self.assertEqual(admin.parse_duration("7"), 7)
        for bad in ("", "5 parsecs", "-1ms", "1e6"):
            with self.assertRaises(ValueError):
                admin.parse_duration(bad)
        self.assertEqual(admin.fmt_ns(1_500_000), "1.5ms")

    def test_top_reads_published_operations(self):
        ops = os.path.join(self.root, "ops")
        os.makedirs(ops)
        doc = {"pid": 77, "operations": [{"service": "svc", "name": "GET /", "kind": "server",
                                          "spans": 10, "annotated": 1, "capped": 0, "samples": 10,
                                          "p50_ns": 1000, "p95_ns": 2000, "p99_ns": 3000, "cv": 0.5,
                                          "threshold_ns": 2100, "source": "adaptive"}]}
        with open(os.path.join(ops, "77.json"), "w") as f:
            json.dump(doc, f)
        rc, out, _ = run("top", "--once", "--json", "--interval", "0.01", env=self.env)
        self.assertEqual(rc, 0)
        d = json.loads(out)
        self.assertEqual([(o["pid"], o["name"], o["source"]) for o in d["operations"]], [(77, "GET /", "adaptive")])
        rc, out, _ = run("top", "--once", "--interval", "0.01", env=self.env)
        self.assertIn("svc:GET / (server)", out)

    def test_records_decoder(self):
        sys.path.insert(0, os.path.join(ROOT, "preload", "python"))
        from spantrack_hook import record
        raw = record.encode(record.SpanRecord(b"\x01" * 16, b"\x02" * 8, 5, 4, 100, 300, 1100, 1300, 0, 0,
                                              1, 50, 0, 0, 0, [record.SyscallEntry(74, 5, 0, 120, 170)]))
        recs, used = admin.decode_stream(raw + raw[:10])
        self.assertEqual(used, len(raw))
        self.assertEqual(len(recs), 1)
        r = recs[0]
        self.assertEqual((r["span_id"], r["duration_ns"], r["calls"][0]["nr"]), ("02" * 8, 200, 74))

    def test_help(self):
        rc, out, _ = run("--help")
        self.assertEqual(rc, 0)
        for sub in ("status", "set", "records", "top", "view"):
            self.assertIn(sub, out)
        rc, out, _ = run("set", "--help")
        self.assertIn("threshold 5ms", out)


if __name__ == "__main__":
    unittest.main()
