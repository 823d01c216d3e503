"""Host tests of where a wait blocked: the kernel and user symbolizers (stacks.py; the Rust
processor's otel/src/stacks.rs has the same cases) and the Python-frame sampler's interval
matching (pystacks.py). The golden records check both integrations' strings together.
Run: $(scripts/python-env.sh)/bin/python -m unittest discover -s preload/python/tests"""

import os
import sys
import tempfile
import threading
import time
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_DIR = os.path.dirname(HERE)
sys.path.insert(0, PKG_DIR)
sys.path.insert(0, HERE)

from fake_spanhook import FakeSpanHook, make_record, wait_until  # noqa: E402
from spantrack_hook import annotate, pystacks, record, stacks  # noqa: E402

KALLSYMS = """\
ffffffff81c5ea70 T schedule
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81c5e1a0 t __schedule
ffffffff810c4a40 T __traceiter_sched_switch
ffffffff82a01000 D jiffies
ffffffff81c63f20 t do_nanosleep
ffffffff811e0000 T hrtimer_nanosleep
ffffffff81c5ec00 T io_schedule
ffffffff81001000 W arch_cpu_idle_dead
ffffffffc0a10000 t st_probe_sched_switch\t[spantrack]
ffffffffc0a20000 t st_probe_other\t[other]
ffffffff81c64000 t st_probe_lookalike
"""

MAPS = """\
55d0c0a4c000-55d0c0c3e000 r-xp 0004c000 fe:01 1311                       /usr/local/bin/catalog-svc
55d0c0a00000-55d0c0a4c000 r--p 00000000 fe:01 1311                       /usr/local/bin/catalog-svc
7f2a90000000-7f2a90021000 rw-p 00000000 00:00 0 
7f2a93a26000-7f2a93b7b000 r-xp 00026000 fe:01 2201                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a93c00000-7f2a93c40000 r-xp 00001000 fe:01 3301                       /opt/my plugins/libplug in.so
7ffd8e5f6000-7ffd8e5f8000 r-xp 00000000 00:00 0                          [vdso]
"""

STACK = [
    0xffffffffc0a1005a,  # st_probe_sched_switch [spantrack]
    0xffffffff810c4a7c,  # __traceiter_sched_switch
    0xffffffff81c5e591,  # __schedule
    0xffffffff81c5ea97,  # schedule
    0xffffffff81c5ec46,  # io_schedule
    0xffffffff81c5ea97,  # schedule again: not leading, kept
    0xffffffff811e00b4,  # hrtimer_nanosleep
    0xffffffff80000010,  # below every symbol
]


class KernelStacks(unittest.TestCase):
    def test_sorted_text_symbols_first_listed_wins(self):
        k = stacks.KernelSymbols.parse(KALLSYMS)
        self.assertEqual(len(k), 11)  # jiffies is data; _text is _stext's alias
        self.assertEqual(k.lookup(0xffffffff81000010), ("_stext", 0x10, False))
        self.assertEqual(k.lookup(0xffffffff81c5ea97), ("schedule", 0x27, False))
        # A return address at a symbol's start belongs to the call before it.
        self.assertEqual(k.lookup(0xffffffff81c5ec00), ("schedule", 0x190, False))
        self.assertEqual(k.lookup(0xffffffff81c5ec01), ("io_schedule", 1, False))
        self.assertIsNone(k.lookup(0xffffffff81000000))  # below the first symbol
        self.assertIsNone(k.lookup(0))
        self.assertEqual(k.lookup(0xffffffffc0a1005a), ("st_probe_sched_switch", 0x5a, True))
        self.assertEqual(k.lookup(0xffffffff81001008), ("arch_cpu_idle_dead", 8, False))

    def test_hidden_addresses_are_unusable(self):
        hidden = "".join("0" * 16 + line[16:] + "\n" for line in KALLSYMS.splitlines())
        self.assertIsNone(stacks.KernelSymbols.parse(hidden))
        self.assertIsNone(stacks.KernelSymbols.parse(""))

    def test_leading_scheduler_frames_are_dropped(self):
        k = stacks.KernelSymbols.parse(KALLSYMS)
        self.assertEqual(stacks.kernel_frames(k, STACK),
                         ["io_schedule+0x46", "schedule+0x27", "hrtimer_nanosleep+0xb4",
                          "0xffffffff80000010"])
        # 7.x: the tracepoint's out-of-line caller is the scheduler's too.
        self.assertTrue(stacks.is_scheduler_frame("__do_trace_sched_switch", False))
        self.assertFalse(stacks.is_scheduler_frame("do_trace_sched_switch", False))
        # Only a module's st_probe_ is the probe.
        self.assertEqual(stacks.kernel_frames(k, [0xffffffff81c64010, 0xffffffffc0a20010]),
                         ["st_probe_lookalike+0x10", "st_probe_other+0x10"])
        self.assertEqual(stacks.kernel_frames(k, [0xffffffffc0a20010, 0xffffffff81c5ea97]), [])
        self.assertEqual(stacks.kernel_frames(k, STACK[:4]), [])
        # Without symbols: every address, none dropped.
        self.assertEqual(stacks.kernel_frames(None, STACK[:2]),
                         ["0xffffffffc0a1005a", "0xffffffff810c4a7c"])


class UserStacks(unittest.TestCase):
    def test_frames_from_the_mappings(self):
        m = stacks.ProcessMaps.parse(MAPS)
        addrs = [0x7f2a93ae8f3a, 0x55d0c0b12345, 0x55d0c0a00010, 0x7f2a93c01234, 0x7ffd8e5f6a10,
                 0x7f2a90000100, 0x1234, 0x7f2a93b7b000]
        self.assertEqual(stacks.user_frames(m, addrs),
                         ["libc.so.6+0xe8f3a", "catalog-svc+0x112345", "catalog-svc+0x10",
                          "libplug in.so+0x2234", "[vdso]+0xa10", "0x7f2a90000100", "0x1234",
                          "0x7f2a93b7b000"])
        self.assertEqual(m.mapping(0x7f2a90000100), (None, 0x100))
        self.assertEqual(stacks.ProcessMaps.parse("garbage\n\n")._maps, [])

    def test_this_process(self):
        """The host symbolizer names this process's own mappings: the interpreter's code."""
        h = stacks.HostSymbols()
        import ctypes
        addr = ctypes.cast(ctypes.pythonapi.Py_IncRef, ctypes.c_void_p).value
        frame = h.user_stack([addr])[0]
        self.assertRegex(frame, r"^(python3[.\d]*|libpython[^+]*)\+0x[0-9a-f]+$")

    def test_host_sources_read_once_and_again_on_a_miss(self):
        with tempfile.TemporaryDirectory() as d:
            ks, ms = os.path.join(d, "kallsyms"), os.path.join(d, "maps")
            with open(ks, "w") as f:
                f.write(KALLSYMS)
            with open(ms, "w") as f:
                f.write(MAPS)
            h = stacks.HostSymbols(ks, ms)
            self.assertEqual(h.kernel_stack(STACK[3:5]), ["io_schedule+0x46"])
            os.unlink(ks)  # read once: a module loaded later is not seen
            self.assertEqual(h.kernel_stack(STACK[6:7]), ["hrtimer_nanosleep+0xb4"])
            self.assertEqual(h.user_stack([0x55d0c0b12345]), ["catalog-svc+0x112345"])
            with open(ms, "a") as f:
                f.write("7f2a95000000-7f2a95001000 r-xp 00000000 fe:01 1 /usr/lib/libnew.so\n")
            # Known addresses use the cached maps; an unknown one reads them again, at most
            # once per MAPS_REREAD_S.
            self.assertEqual(h.user_stack([0x7f2a95000010]), ["0x7f2a95000010"])
            h._maps_read_at -= h.MAPS_REREAD_S
            self.assertEqual(h.user_stack([0x7f2a95000010]), ["libnew.so+0x10"])
            with open(ms, "a") as f:
                f.write("7f2a96000000-7f2a96001000 r-xp 00000000 fe:01 1 /usr/lib/libnewer.so\n")
            self.assertEqual(h.user_stack([0x7f2a96000010]), ["0x7f2a96000010"])
            h._maps_read_at -= h.MAPS_REREAD_S
            self.assertEqual(h.user_stack([0x7f2a96000010]), ["libnewer.so+0x10"])
            # prepare() loads what a record's waits need, nothing more.
            h = stacks.HostSymbols(ks + ".none", ms)
            w = record.WaitEntry(ustack=(0x55d0c0b12345,) + (0,) * 11, n_ustack=1)
            rec = record.decode(make_record(b"\x01" * 16, b"\x02" * 8, [], flags=record.REC_SCHED,
                                            sched=record.SchedPart(n_waits=1, waits=(w,))))
            h.prepare(rec)
            self.assertFalse(h._kallsyms_read)
            self.assertIsNotNone(h._maps_read_at)
            h.prepare(rec._replace(sched=rec.sched._replace(waits=(w._replace(n_kstack=1),))))
            self.assertTrue(h._kallsyms_read)
        missing = stacks.HostSymbols("/nonexistent/kallsyms", "/nonexistent/maps")
        self.assertEqual(missing.kernel_stack([0x10]), ["0x10"])
        self.assertEqual(missing.user_stack([0x10]), ["0x10"])


def code_in(filename, name="handler"):
    """A code object of function `name` as if defined in `filename`."""
    ns = {}
    exec(compile(f"def {name}():\n    pass\n", filename, "exec"), ns)
    return ns[name].__code__


def frame(code, lineno, back=None, lasti=0):
    return types.SimpleNamespace(f_code=code, f_lineno=lineno, f_back=back, f_lasti=lasti)


MS = 1_000_000


class StackRingMatching(unittest.TestCase):
    def test_a_sample_inside_the_wait(self):
        r = pystacks.StackRing()
        r.add(10 * MS, "a", lambda: ("A",))
        r.add(15 * MS, "b", lambda: ("B",))
        r.add(20 * MS, "b", lambda: self.fail("an unchanged stack is not walked again"))
        r.add(25 * MS, "c", lambda: ("C",))
        self.assertEqual(r.find(9 * MS, 11 * MS), ("A",))
        self.assertEqual(r.find(14 * MS, 16 * MS), ("B",))
        self.assertEqual(r.find(20 * MS, 21 * MS), ("B",))  # the run's last sample
        self.assertEqual(r.find(10 * MS, 10 * MS), ("A",))  # bounds included
        self.assertIsNone(r.find(11 * MS, 14 * MS))  # between two samples: none inside
        self.assertIsNone(r.find(26 * MS, 40 * MS))
        self.assertIsNone(r.find(0, 9 * MS))
        # Several inside: the latest.
        self.assertEqual(r.find(0, 30 * MS), ("C",))

    def test_a_run_around_the_wait(self):
        r = pystacks.StackRing()
        for t in range(0, 50, 5):  # 0, 5, ..., 45 ms: one run, gaps of 5 ms
            r.add(t * MS, "blocked", lambda: ("S",))
        self.assertEqual(len(r.runs), 1)
        self.assertEqual(r.find(11 * MS, 16 * MS), ("S",))  # 5 ms: a sample is inside
        self.assertIsNone(r.find(11 * MS, 14 * MS))  # 3 ms, maybe between two samples
        r.add(80 * MS, "blocked", lambda: ("S",))  # a late sample: a gap of 35 ms
        self.assertIsNone(r.find(11 * MS, 16 * MS))
        self.assertEqual(r.find(11 * MS, 46 * MS), ("S",))

    def test_the_ring_keeps_the_last(self):
        r = pystacks.StackRing(size=3)
        for i in range(5):
            r.add(i * MS, i, lambda i=i: (i,))
        self.assertEqual([run[4] for run in r.runs], [(2,), (3,), (4,)])
        self.assertIsNone(r.find(0, 1 * MS))
        self.assertEqual(r.find(4 * MS, 4 * MS), (4,))


class SamplerOptIn(unittest.TestCase):
    """The sampler reads other threads' frames, which has crashed CPython 3.11 services in
    other samplers (pystacks.py): it runs only when the user sets an interval."""

    def interval(self, value):
        old = os.environ.pop("SPANTRACK_PY_STACK_INTERVAL_MS", None)
        try:
            if value is not None:
                os.environ["SPANTRACK_PY_STACK_INTERVAL_MS"] = value
            return pystacks.interval_ms_from_env()
        finally:
            os.environ.pop("SPANTRACK_PY_STACK_INTERVAL_MS", None)
            if old is not None:
                os.environ["SPANTRACK_PY_STACK_INTERVAL_MS"] = old

    def test_off_unless_set(self):
        self.assertEqual(self.interval(None), 0.0)
        self.assertEqual(self.interval("0"), 0.0)
        self.assertEqual(self.interval("-3"), 0.0)
        self.assertEqual(self.interval("five"), 0.0)
        self.assertEqual(self.interval("5"), 5.0)
        self.assertEqual(self.interval("0.5"), 0.5)

    def test_no_sampler_thread_by_default(self):
        old = os.environ.pop("SPANTRACK_PY_STACK_INTERVAL_MS", None)
        saved, pystacks._SAMPLER = pystacks._SAMPLER, None
        try:
            self.assertIsNone(pystacks.start(None, object()))
            self.assertIsNone(pystacks._SAMPLER)
        finally:
            pystacks._SAMPLER = saved
            if old is not None:
                os.environ["SPANTRACK_PY_STACK_INTERVAL_MS"] = old


class SamplerBackOff(unittest.TestCase):
    def test_a_busy_interpreter_stretches_the_interval_and_a_quiet_one_restores_it(self):
        ms = 1_000_000
        nxt = pystacks.next_interval_ns
        self.assertEqual(nxt(5 * ms, 5 * ms, 0), 5 * ms, "quiet: unchanged")
        self.assertEqual(nxt(5 * ms, 5 * ms, ms), 5 * ms, "a fifth of the interval late: unchanged")
        self.assertEqual(nxt(5 * ms, 5 * ms, 2 * ms), 10 * ms, "over a quarter late: doubles")
        cur = 5 * ms
        for _ in range(10):
            cur = nxt(cur, 5 * ms, 50 * ms)
        self.assertEqual(cur, pystacks.MAX_INTERVAL_NS, "capped: a wait of 20 ms still gets a sample")
        for _ in range(10):
            cur = nxt(cur, 5 * ms, 100_000)
        self.assertEqual(cur, 5 * ms, "back to the configured interval, never below")
        self.assertEqual(nxt(50 * ms, 50 * ms, 40 * ms), 50 * ms, "a configured interval over the cap stays")


class Sampling(unittest.TestCase):
    def test_samples_map_idents_to_native_tids_and_skip_the_hooks_frames(self):
        s = pystacks.Sampler(None, 5)
        app = code_in("/srv/app/handlers.py")
        hook = code_in(os.path.join(os.path.dirname(pystacks.__file__), "processor.py"), "on_start")
        main = code_in("/srv/app/main.py", "main")
        top = frame(hook, 7, frame(app, 42, frame(main, 3)), lasti=8)
        other = frame(app, 50, None)
        threads = {101: types.SimpleNamespace(native_id=5001),
                   102: types.SimpleNamespace(native_id=5002),
                   103: types.SimpleNamespace(native_id=None)}
        pystacks.HOOK_THREADS.add(5002)
        try:
            s.sample(10 * MS, {101: top, 102: other, 103: other, 104: other}, threads)
            s.sample(15 * MS, {101: top, 102: other}, threads)
        finally:
            pystacks.HOOK_THREADS.discard(5002)
        self.assertEqual(sorted(s._rings), [5001])
        self.assertEqual(s.python_stack(5001, 12 * MS, 16 * MS),
                         ("handler (/srv/app/handlers.py:42)", "main (/srv/app/main.py:3)"))
        self.assertIsNone(s.python_stack(5001, 11 * MS, 14 * MS))
        self.assertIsNone(s.python_stack(5002, 0, 20 * MS))
        # The innermost frame moved: a new run, walked again.
        s.sample(20 * MS, {101: frame(app, 43, frame(main, 3), lasti=9)}, threads)
        self.assertEqual(s.python_stack(5001, 19 * MS, 21 * MS)[0], "handler (/srv/app/handlers.py:43)")
        # Threads not seen for long lose their rings.
        s.sample(20 * MS + pystacks.FORGET_NS + 2_000_000_000, {}, threads)
        self.assertEqual(s._rings, {})

    def test_a_real_thread_blocked_in_a_known_function(self):
        """The sampler thread, on this process: a thread sleeping in blocked_here() while a
        span is open is seen inside its sleep; with no span open the sampler sleeps until
        a span starts."""
        class Processor:
            _open = {}

        fake = FakeSpanHook()
        proc = Processor()
        s = pystacks.Sampler(fake, 2)
        s.linger_ns, s.idle_poll_s, s.dormant_ns = 50 * MS, 0.01, 400 * MS
        s.watch(proc)
        self.assertTrue(s.start())
        try:
            self.assertTrue(wait_until(lambda: s._idle, 5))
            self.assertIn(s._thread.ident, fake.unregistered)
            n = s.samples
            time.sleep(0.05)
            self.assertEqual(s.samples, n, "no sample while no span is open")
            proc._open[1] = "span"
            s.span_starting()
            seen = {}

            def blocked_here():
                seen["start"] = time.monotonic_ns()
                time.sleep(0.1)
                seen["end"] = time.monotonic_ns()

            t = threading.Thread(target=blocked_here)
            t.start()
            t.join()
            frames = s.python_stack(t.native_id, seen["start"], seen["end"])
            self.assertIsNotNone(frames, s._rings.get(t.native_id))
            self.assertRegex(frames[0], r"blocked_here \(.*test_stacks.py:\d+\)$")
            self.assertTrue(all("spantrack_hook" not in f for f in frames), frames)
            self.assertIsNone(s.python_stack(t.native_id, seen["end"] + 10**9, seen["end"] + 2 * 10**9))
            self.assertIsNone(s.python_stack(threading.current_thread().native_id, 0, 1))
            proc._open.clear()
            # linger_ns after the last span it stops sampling, then looks every idle_poll_s
            # and picks up a span that starts then without being woken.
            time.sleep(0.1)
            n = s.samples
            time.sleep(0.05)
            self.assertEqual((s.samples, s._idle), (n, False), "between spans: no sample")
            proc._open[2] = "span"
            self.assertTrue(wait_until(lambda: s.samples > n + 2, 5))
            proc._open.clear()
            self.assertTrue(wait_until(lambda: s._idle, 5))  # dormant_ns after the last span
        finally:
            proc._open.clear()


class WaitEvents(unittest.TestCase):
    class Stacks(stacks.Symbols):
        def __init__(self):
            super().__init__(KALLSYMS, MAPS)
            self.asked = []

        def python_stack(self, tid, start_ns, end_ns):
            self.asked.append((tid, start_ns, end_ns))
            return ["handler (/srv/app/handlers.py:42)"]

    def attrs(self, w, sym):
        raw = make_record(b"\x01" * 16, b"\x02" * 8, [], flags=record.REC_SCHED,
                          sched=record.SchedPart(n_waits=1, waits=(w,)))
        rec = record.decode(raw)
        return annotate.wait_attributes(rec, rec.sched.waits[0], sym)

    def test_stack_attributes(self):
        sym = self.Stacks()
        w = record.WaitEntry(start_mono_ns=7 * MS, blocked_ns=3 * MS, cause=record.CAUSE_TIMER,
                             kstack=tuple(STACK) + (0,) * 8, n_kstack=7,
                             ustack=(0x7f2a93ae8f3a, 0x1234) + (0,) * 10, n_ustack=2)
        a = self.attrs(w, sym)
        self.assertEqual(a[stacks.KERNEL_STACK],
                         ("io_schedule+0x46", "schedule+0x27", "hrtimer_nanosleep+0xb4"))
        self.assertEqual(a[stacks.USER_STACK], ("libc.so.6+0xe8f3a", "0x1234"))
        self.assertEqual(a[stacks.PYTHON_STACK], ("handler (/srv/app/handlers.py:42)",))
        # The thread (0: the beginning thread's) and the wait's interval.
        begin = 1_000_000_000  # make_record's begin_mono: the waits' starts are offsets from it
        self.assertEqual(sym.asked, [(4242, begin + 7 * MS, begin + 10 * MS)])

    def test_no_stacks_no_python_stack(self):
        """A wait without kernel or user stack (sysfs sched_stacks at 0, a preemption) gets
        no stack attribute, and its Python frames are not looked for."""
        sym = self.Stacks()
        a = self.attrs(record.WaitEntry(start_mono_ns=7 * MS, blocked_ns=3 * MS, tid=99), sym)
        self.assertFalse([k for k in a if k.endswith("_stack")])
        self.assertEqual(sym.asked, [])
        # Only scheduler frames, and only a user stack: no kernel_stack, the rest present.
        w = record.WaitEntry(kstack=tuple(STACK[:4]) + (0,) * 12, n_kstack=4,
                             ustack=(0x1234,) + (0,) * 11, n_ustack=1, tid=99)
        a = self.attrs(w, sym)
        self.assertNotIn(stacks.KERNEL_STACK, a)
        self.assertEqual(a[stacks.USER_STACK], ("0x1234",))
        self.assertIn(stacks.PYTHON_STACK, a)
        self.assertEqual(sym.asked[-1][0], 99)


if __name__ == "__main__":
    unittest.main()
