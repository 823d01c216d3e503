"""The Python frames of a thread while it waited (`spantrack.wait.python_stack`, Python only:
the kernel's user stack of a Python service ends in the interpreter's C code, which names no
Python function).

A daemon thread of the hook (untracked by the module, as the annotator) samples every
thread's frames (`sys._current_frames()`) every SPANTRACK_PY_STACK_INTERVAL_MS milliseconds
(default 0: no sampler, no Python stacks; the README suggests 5) while spans are open, and for
a second after the last one; then it only looks for open spans every 100 ms, and after 10 s without any it sleeps
until a span starts (waking it at every span's start would make the sampler compete for the
GIL with the span's first steps). It keeps, per native thread id
(Thread.native_id), a ring of the last RING distinct stacks, each with the first and last
times (CLOCK_MONOTONIC) it was seen: a thread that stays blocked keeps one entry however long
it waits. When a record's wait (tid, start_mono_ns .. start_mono_ns + blocked_ns) is
annotated, the stack of a sample taken inside that interval is its `python_stack`: innermost
first, `function (file:line)`, the hook's own frames left out; absent when no sample falls
inside (a wait shorter than the interval, or a thread the sampler could not see).

What it costs: one wake-up of the sampler per interval while spans are open; each sample
holds the GIL for `sys._current_frames()` and, per thread whose innermost frame moved since the
last sample, a walk of at most DEPTH frames (README: "What it costs"). A thread that runs
Python code when the sampler wants the GIL hands it over (a futex system call in its span).

Why it is off unless asked for: reading another thread's frames from Python
(`sys._current_frames()`, then `f_back`, `f_lineno`) is how in-process samplers have crashed
CPython 3.11 services with a segmentation fault under concurrent load (sentry-python #6119,
2026, its thread-sampling profiler; dd-trace-py #13567, 2025, on Debian 12's 3.11), and one of
our demo's Python services died of one once, between two requests, with the sampler on (not
reproduced since). The hook must never harm the service: a user who wants the Python frames
of the waits turns the sampler on, knowing that. When on, a sample takes the frames and
walks them before it takes any lock (a blocked lock would hand the GIL over while it holds
other threads' frames), and drops them at once.
"""

import collections
import os
import sys
import threading
import time
import weakref
from typing import Optional, Tuple

# Native thread ids of the hook's own threads (sampler, annotator, publisher): not sampled.
HOOK_THREADS = set()
_HOOK_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

RING = 64      # distinct stacks kept per thread
DEPTH = 32     # frames kept per stack (innermost first)
LINGER_NS = 1_000_000_000  # keeps sampling this long after the last open span
IDLE_POLL_S = 0.1  # then looks for open spans this often
DORMANT_NS = 10_000_000_000  # and after this long without any, sleeps until a span starts
FORGET_NS = 10_000_000_000  # a thread not seen for this long loses its ring
MAX_INTERVAL_NS = 20_000_000  # the longest interval the back-off goes to (a wait of 20 ms
# or more still gets a sample)


def next_interval_ns(cur_ns: int, base_ns: int, delay_ns: int) -> int:
    """The sampler's next interval. `delay_ns`: how late it woke (waiting for a CPU and for
    the GIL) plus what the sample took. A busy interpreter shows in it: when it is more than
    a quarter of the interval the interval doubles (up to MAX_INTERVAL_NS), so that the
    sampler never competes much for the GIL with a saturated service; below a sixteenth
    it halves back towards the configured one."""
    if delay_ns * 4 > cur_ns:
        return min(max(cur_ns * 2, base_ns), max(MAX_INTERVAL_NS, base_ns))
    if delay_ns * 16 < cur_ns and cur_ns > base_ns:
        return max(cur_ns // 2, base_ns)
    return cur_ns


def interval_ms_from_env() -> float:
    """SPANTRACK_PY_STACK_INTERVAL_MS (default 0: off; 0, below 0 or not a number: off)."""
    try:
        v = float(os.environ.get("SPANTRACK_PY_STACK_INTERVAL_MS", "0"))
    except ValueError:
        return 0.0
    return v if v > 0 else 0.0


def frame_name(code, lineno) -> str:
    """`function (file:line)`: the qualified name where the interpreter has it (3.11)."""
    name = getattr(code, "co_qualname", None) or code.co_name
    return f"{name} ({code.co_filename}:{lineno})"


def walk(frame, depth: int = DEPTH) -> Tuple:
    """(code, line) of `frame` and its callers, innermost first, without the hook's own."""
    out = []
    f = frame
    while f is not None and len(out) < depth:
        code = f.f_code
        if not code.co_filename.startswith(_HOOK_DIR):
            out.append((code, f.f_lineno))
        f = f.f_back
    return tuple(out)


class StackRing:
    """A thread's recent distinct stacks: [first_ns, last_ns, max_gap_ns, key, frames] runs of
    consecutive samples whose innermost frame was the same (the same frame object at the same
    instruction: the stack cannot have changed between them)."""

    __slots__ = ("runs", "seen_ns")

    def __init__(self, size: int = RING):
        self.runs = collections.deque(maxlen=size)
        self.seen_ns = 0

    def add(self, t_ns: int, key, frames_of) -> None:
        """A sample at t_ns whose innermost frame is `key`; `frames_of()` walks its stack
        (only when the key moved)."""
        self.seen_ns = t_ns
        if self.runs:
            last = self.runs[-1]
            if last[3] == key:
                last[2] = max(last[2], t_ns - last[1])
                last[1] = t_ns
                return
        self.runs.append([t_ns, t_ns, 0, key, frames_of()])

    def find(self, start_ns: int, end_ns: int):
        """The frames of a sample taken inside [start_ns, end_ns] (the latest such run), or
        None. A run that began before and ended after the interval holds a sample inside
        it only when the interval is at least as long as the run's longest gap between
        samples."""
        for first, last, gap, _, frames in reversed(self.runs):
            if last < start_ns or first > end_ns:
                continue
            if start_ns <= first or last <= end_ns or end_ns - start_ns >= gap:
                return frames
        return None


class Sampler:
    """The sampling thread and the rings it fills (one per process: `start`)."""

    def __init__(self, lib, interval_ms: float, clock=time.monotonic_ns,
                 current_frames=sys._current_frames):
        self._lib = lib
        self.interval_s = interval_ms / 1000
        self.linger_ns = LINGER_NS
        self.idle_poll_s = IDLE_POLL_S
        self.dormant_ns = DORMANT_NS
        self._clock = clock
        self._current_frames = current_frames
        self._rings = {}  # native tid -> StackRing
        self._lock = threading.Lock()  # the rings: the sampler writes, the annotator reads
        self._processors = weakref.WeakSet()  # their `_open` dicts say whether spans are open
        self._wake = threading.Event()
        self._idle = False
        self._poked = False
        self._thread = None
        self.samples = 0
        self.interval_now_ns = int(self.interval_s * 1e9)  # after the back-off
        self.forgotten_at = 0
        self.unregister_error = 0

    # --- what processors and the annotator call ----------------------------------------

    def watch(self, processor) -> None:
        """Samples while `processor._open` holds spans."""
        self._processors.add(processor)

    def span_starting(self) -> None:
        """A span is about to begin (called before the kernel is told, so that a wake-up is
        no span's): wakes the sampler if it sleeps."""
        self._poked = True
        if self._idle:
            self._wake.set()

    def python_stack(self, tid: int, start_ns: int, end_ns: int) -> Optional[Tuple[str, ...]]:
        """`function (file:line)` frames of thread `tid` sampled inside [start_ns, end_ns]."""
        with self._lock:
            ring = self._rings.get(tid)
            frames = ring.find(start_ns, end_ns) if ring is not None else None
        if not frames:
            return None
        return tuple(frame_name(code, line) for code, line in frames)

    # --- sampling ------------------------------------------------------------------------

    def sample(self, now_ns: Optional[int] = None, frames=None, threads=None) -> None:
        """One sample of every thread but the hook's own (`frames`, `threads`: stand-ins
        for sys._current_frames() and threading's ident -> Thread table, for tests)."""
        if frames is None:
            # The clock after the frames: a thread's frames cannot change while this thread
            # holds the GIL, so they are still the thread's at that time.
            frames = self._current_frames()
            now_ns = self._clock()
        if threads is None:
            threads = getattr(threading, "_active", None)
            if threads is None:
                threads = {t.ident: t for t in threading.enumerate()}
        # Everything read from the frames is read here, before the lock (which may block and
        # hand the GIL over while this thread holds other threads' frames): the key of each
        # thread's innermost frame, and its walk when the key moved since the last sample.
        # The rings' keys hold no frame: (id, code, instruction) of the innermost frame.
        # Only this thread changes the rings, so it may read them without the lock here.
        seen = []
        rings = self._rings
        for ident, top in frames.items():
            t = threads.get(ident)
            tid = getattr(t, "native_id", None) if t is not None else None
            if tid is None or tid in HOOK_THREADS:
                continue
            key = (id(top), top.f_code, top.f_lasti)
            ring = rings.get(tid)
            same = ring is not None and ring.runs and ring.runs[-1][3] == key
            seen.append((tid, key, None if same else walk(top)))
        frames = top = None
        with self._lock:
            for tid, key, walked in seen:
                ring = rings.get(tid)
                if ring is None:
                    ring = rings[tid] = StackRing()
                ring.add(now_ns, key, lambda w=walked: w)
            if now_ns - self.forgotten_at >= 1_000_000_000:
                self.forgotten_at = now_ns
                for tid in [k for k, r in rings.items() if now_ns - r.seen_ns > FORGET_NS]:
                    del rings[tid]
        self.samples += 1

    def _spans_open(self) -> bool:
        return any(p._open for p in list(self._processors))

    def run(self) -> None:
        # This thread's own system calls must never be attributed to anything.
        self.unregister_error = self._lib.unregister_thread() if self._lib is not None else 0
        HOOK_THREADS.add(threading.current_thread().native_id)
        clock, sleep = self._clock, time.sleep
        base_ns = max(1, int(self.interval_s * 1e9))
        cur_ns = base_ns
        wake_at = None  # when the last sampling sleep should have ended
        # Starts between spans: nothing is sampled before a span is seen open.
        active_at = clock() - self.linger_ns - 1
        while True:
            now = clock()
            if self._poked or self._spans_open():
                self._poked = False
                active_at = now
            elif now - active_at > self.dormant_ns:
                # Dormant: published before looking at _poked again (span_starting sets
                # _poked before it looks at _idle: one of the two sees the other). The first
                # span after this wakes the sampler while it starts, and the sampler's return
                # to Python may then make that span's thread hand the GIL over (a futex in
                # its span): only after DORMANT_NS without spans.
                self._idle = True
                if not self._poked and not self._spans_open():
                    self._wake.wait()
                self._wake.clear()
                self._idle = False
                self._poked = False
                active_at = clock()
                wake_at = None
                continue
            elif now - active_at > self.linger_ns:
                # Between spans: look again a little later, without sampling (woken by a
                # span's start, it would compete for the GIL with that span's first steps).
                sleep(self.idle_poll_s)
                wake_at = None
                continue
            # How late it woke (waiting for a CPU and then for the GIL) plus what the sample
            # takes: the back-off's measure of how busy the interpreter is.
            t0 = clock()
            late = t0 - wake_at if wake_at is not None else 0
            try:
                self.sample()
            except Exception:  # a sample is never worth the sampler
                pass
            cur_ns = next_interval_ns(cur_ns, base_ns, max(0, late) + clock() - t0)
            self.interval_now_ns = cur_ns
            wake_at = clock() + cur_ns
            sleep(cur_ns / 1e9)

    def start(self) -> bool:
        try:
            t = threading.Thread(target=self.run, name="spantrack-pystacks", daemon=True)
            t.start()
        except Exception:
            return False
        self._thread = t
        return True


_SAMPLER: Optional[Sampler] = None


def start(lib, processor) -> Optional[Sampler]:
    """The process's sampler (started on first use), watching `processor`; None when
    SPANTRACK_PY_STACK_INTERVAL_MS is 0 or no thread can be started."""
    global _SAMPLER
    if _SAMPLER is None:
        interval = interval_ms_from_env()
        if interval <= 0:
            return None
        s = Sampler(lib, interval)
        if not s.start():
            return None
        _SAMPLER = s
    _SAMPLER.watch(processor)
    return _SAMPLER


def python_stack(tid: int, start_ns: int, end_ns: int):
    s = _SAMPLER
    return s.python_stack(tid, start_ns, end_ns) if s is not None else None


def _after_fork_in_child() -> None:
    global _SAMPLER
    _SAMPLER = None  # the child's processors are inactive (the library does not register it)
    HOOK_THREADS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
