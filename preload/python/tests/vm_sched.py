#!/usr/bin/env python3
"""In-VM workload of tests/vm/t_sched.sh (issue 12): an ordinary OpenTelemetry-instrumented
Python program, run under LD_PRELOAD=libspanhook.so with SPANTRACK_THRESHOLD=fixed, whose
spans have known answers to "where did the time go, who woke it":

  a 100 ms CPU spin                      on CPU
  a 50 ms sleep                          blocked (timer), woken by a timer
  a lock another thread holds 80 ms      blocked (lock), woken by that thread, which runs
                                         its own span: the waiting span links to it
  a pipe another process writes ~30 ms   woken by that process, in write
  a loopback request, server works 40 ms blocked (net), the server's span linked
  an fsync of 4 MiB of dirty data         blocked (io) on an ext2 disk ($SCHED_DISK, 4 MB/s)
  a spin sharing one CPU with a hog      about half waiting for the CPU (preempted)

With sysfs sched_stacks at 1, the longest waits also carry where they blocked: the kernel
stack (names from /proc/kallsyms), the user stack, and for Python the Python frames.

Each check states its tolerance. Prints TAP-like "ok - ..." / "not ok - ..." lines.
"""

import ctypes
import os
import socket
import subprocess
import sys
import threading
import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vmcheck import check, results

MS = 1_000_000


def set_comm(name):
    """The calling thread's kernel name (what the waker's command shows)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, ctypes.c_char_p(name.encode()), 0, 0, 0)  # PR_SET_NAME


exporter = InMemorySpanExporter()
provider = TracerProvider(resource=Resource.create({"service.name": "vm-sched"}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("vm-sched")


def run(name, body, *, before=None, after=None):
    """Runs body inside span `name`; returns (span, all spans exported meanwhile)."""
    exporter.clear()
    if before:
        before()
    with tracer.start_as_current_span(name):
        body()
    if after:
        after()
    provider.force_flush(10_000)
    spans = exporter.get_finished_spans()
    found = [s for s in spans if s.name == name]
    return (found[0] if found else None), spans


def parts(span):
    a = dict(span.attributes) if span is not None else {}
    dur = (span.end_time - span.start_time) if span is not None else 0
    return a, dur


def waits(span):
    return [dict(e.attributes) for e in (span.events if span is not None else [])
            if e.name == "spantrack.wait"]


def summary(span):
    a, dur = parts(span)
    keys = ["spantrack.sched.on_cpu_ns", "spantrack.sched.runqueue_ns",
            "spantrack.sched.runqueue.preempted_ns", "spantrack.sched.blocked.io_ns",
            "spantrack.sched.blocked.lock_ns", "spantrack.sched.blocked.net_ns",
            "spantrack.sched.blocked.timer_ns", "spantrack.sched.blocked.other_ns",
            "spantrack.sched.inactive_ns", "spantrack.sched.dominant"]
    return {"duration_ns": dur, **{k.rsplit("sched.", 1)[1]: a.get(k) for k in keys},
            "waits": [w.get("spantrack.wait.summary") for w in waits(span)]}


def sched_parts(a):
    """{part: ns} of the scheduler parts in the span's attributes (spantrack.sched.<part>_ns
    for each of annotate.SCHED_PARTS, in that order), 0 for a part not there."""
    from spantrack_hook.annotate import SCHED_PARTS
    return {p: a.get(f"spantrack.sched.{p}_ns", 0) for p in SCHED_PARTS}


def parts_sum_to_duration(name, span):
    """The parts and the inactive rest add up to the span. Stated tolerance: the parts may
    exceed the duration by two scheduler ticks (4 ms each: an activated span's on-CPU time
    comes in tick-sized runtime updates, and one may straddle each end of the span), and
    inactive_ns of a span that ran alone on its thread is at most 20% of it plus one tick
    (the SDK's own work around the body: on the debug kernel, with KASAN, about 15%). The
    kernel's span (begin to end write) is a little shorter than the SDK's, which times its
    own work around those writes too: inactive_ns is taken from the kernel's."""
    a, dur = parts(span)
    total = sum(ns for p, ns in sched_parts(a).items() if p != "inactive")
    inactive = a.get("spantrack.sched.inactive_ns", -1)
    tick = 4 * MS
    check(f"{name}: the parts sum to the duration within a tick "
          f"(parts {ms(total)}, inactive {ms(inactive)}, span {ms(dur)})",
          span is not None and total <= dur + 2 * tick and 0 <= inactive <= dur // 5 + tick
          and total + inactive <= dur + 2 * tick, summary(span))


def frames(wait, key):
    return list(wait.get(key) or ()) if wait else []


def has_frame(wait, key, *names):
    """Whether stack attribute `key` of `wait` has a frame naming one of `names`."""
    return any(n in f for f in frames(wait, key) for n in names)


def ms(ns):
    return f"{ns / MS:.1f} ms"


def kernel_symbols_loaded(timeout=120.0):
    """The hook names kernel frames once its loader thread has read /proc/kallsyms (seconds
    on the debug kernel; the spans before that get 0x<hex> frames, by design): the checks of
    named stacks start after it."""
    try:
        from spantrack_hook import stacks
    except ImportError:
        return
    with tracer.start_as_current_span("warm-up"):  # the processor is in place
        pass
    t0 = time.monotonic()
    stacks.host().ask_kernel()
    while not stacks.host().ready() and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    print(f"# kernel symbols loaded after {time.monotonic() - t0:.1f} s", flush=True)


def main():
    kernel_symbols_loaded()
    if not any(type(p).__name__ == "SpantrackSpanProcessor"
               for p in [provider._active_span_processor]):
        check("the preload's hook sits at the head of the TracerProvider", False)
        return 1

    # 1. CPU spin: 100 ms of the thread's own CPU time (CLOCK_THREAD_CPUTIME_ID), so that a
    # busy guest (another task on this vCPU, a kmemleak scan) lengthens the span without
    # changing what is checked. The kernel's on-CPU part must agree with the thread's CPU
    # clock: at least the body's CPU time less a tick (runtime arrives in tick-sized
    # updates), at most the CPU time of the whole span plus two ticks; and the spin blocked
    # for no more than 10 ms (a GIL hand-over is a short futex wait).
    def spin(d=0.1):
        end = time.thread_time() + d
        while time.thread_time() < end:
            pass
    cpu = {}

    def spin_timed():
        t0 = time.thread_time()
        spin()
        cpu["body"] = time.thread_time() - t0

    # A loaded host can stop the vCPU of whichever thread holds the GIL while the spinner
    # waits for it (a 5 ms timed GIL wait was seen delivered 25 ms late): up to 3 attempts,
    # the last one checked; a hook that holds the GIL would fail all three.
    tick = 4 * MS
    for attempt in (1, 2, 3):
        t_span0 = time.thread_time()
        span, _ = run("spin", spin_timed)
        cpu["span"] = time.thread_time() - t_span0  # an upper bound: force_flush included
        a, dur = parts(span)
        blocked = sum(ns for p, ns in sched_parts(a).items() if p.startswith("blocked.")) if a else 0
        if blocked < 10 * MS or attempt == 3:
            break
        print(f"# spin (attempt {attempt}): blocked {ms(blocked)} (a noisy VM?), again: {summary(span)}",
              flush=True)
    check("spin 100 ms: annotated with the scheduler part (spantrack.sched.*)",
          "spantrack.sched.on_cpu_ns" in a, dict(a))
    named = sched_parts(a)
    on_cpu = named["on_cpu"]
    blocked = sum(ns for p, ns in named.items() if p.startswith("blocked."))
    check(f"spin 100 ms CPU: on_cpu_ns agrees with the thread's CPU clock (on CPU "
          f"{ms(on_cpu)}, body {ms(cpu['body'] * 1e9)}, whole span at most "
          f"{ms(cpu['span'] * 1e9)}), blocked {ms(blocked)} < 10 ms",
          cpu["body"] * 1e9 - tick <= on_cpu <= cpu["span"] * 1e9 + 2 * tick
          and blocked < 10 * MS, summary(span))
    check("spin: dominant names the largest part (on_cpu on a quiet vCPU, runqueue when "
          "another task held it)",
          a.get("spantrack.sched.dominant") == max(named, key=named.get), summary(span))
    parts_sum_to_duration("spin", span)

    # 2. Sleep 50 ms: timer >= 40 ms, the longest wait woken by a timer.
    span, _ = run("sleep", lambda: time.sleep(0.05))
    a, dur = parts(span)
    w = waits(span)
    check("sleep 50 ms: blocked.timer dominant, >= 40 ms",
          a.get("spantrack.sched.dominant") == "blocked.timer"
          and a.get("spantrack.sched.blocked.timer_ns", 0) >= 40 * MS, summary(span))
    check("sleep 50 ms: its longest wait is a timer wait in clock_nanosleep, woken by a timer",
          w and w[0].get("spantrack.wait.cause") == "timer"
          and w[0].get("spantrack.wait.syscall") == "clock_nanosleep"
          and w[0].get("spantrack.waker.context") == "timer"
          and w[0].get("spantrack.wait.blocked_ns", 0) >= 40 * MS, w)
    check("sleep: the wait's kernel stack is the nanosleep path (hrtimer_nanosleep/do_nanosleep), "
          "without the scheduler's own frames, and it has a user stack",
          w and has_frame(w[0], "spantrack.wait.kernel_stack", "hrtimer_nanosleep", "do_nanosleep")
          and not has_frame(w[0], "spantrack.wait.kernel_stack", "__schedule", "st_probe")
          and frames(w[0], "spantrack.wait.user_stack"),
          w[:1])
    parts_sum_to_duration("sleep", span)

    # 3. A lock held 80 ms by another thread, which runs span "refresh" meanwhile.
    lock = threading.Lock()
    held = threading.Event()
    holder = {}

    def hold():
        set_comm("refresh")
        holder["tid"] = threading.get_native_id()
        with tracer.start_as_current_span("refresh") as s:
            holder["span"] = s.get_span_context()
            with lock:
                held.set()
                time.sleep(0.08)
    th = threading.Thread(target=hold)

    def start_holder():
        th.start()
        held.wait()
    def take_lock():
        with lock:
            pass
    span, spans = run("lock", take_lock, before=start_holder, after=th.join)
    a, dur = parts(span)
    w = waits(span)
    lw = [x for x in w if x.get("spantrack.wait.cause") == "lock"]
    check("lock held 80 ms by another thread: blocked.lock dominant, >= 60 ms",
          a.get("spantrack.sched.dominant") == "blocked.lock"
          and a.get("spantrack.sched.blocked.lock_ns", 0) >= 60 * MS, summary(span))
    check("lock: the longest lock wait (in futex) was woken by the holder thread 'refresh', "
          "same process, with its time on the CPU",
          lw and lw[0].get("spantrack.wait.syscall") == "futex"
          and lw[0].get("spantrack.waker.thread.id") == holder.get("tid")
          and lw[0].get("spantrack.waker.process.pid") == os.getpid()
          and lw[0].get("spantrack.waker.command") == "refresh"
          and lw[0].get("spantrack.waker.context") == "task"
          and "spantrack.waker.on_cpu_ns" in lw[0], (holder.get("tid"), w))
    check("lock: where it blocked: the futex path in the kernel, and the Python function that "
          "took the lock (take_lock) in its Python stack",
          lw and has_frame(lw[0], "spantrack.wait.kernel_stack", "futex_wait")
          and has_frame(lw[0], "spantrack.wait.python_stack", "take_lock"),
          [{k: v for k, v in x.items() if "stack" in k} for x in lw[:1]])
    sc = holder.get("span")
    links = [(l.context.trace_id, l.context.span_id, dict(l.attributes or {}))
             for l in (span.links if span is not None else [])]
    check("lock: the waiting span links to the holder's span 'refresh' (kind waker)",
          sc is not None and lw
          and lw[0].get("spantrack.waker.span_id") == f"{sc.span_id:016x}"
          and any(t == sc.trace_id and s == sc.span_id and l.get("spantrack.link.kind") == "waker"
                  for t, s, l in links), (links, lw[:1]))
    parts_sum_to_duration("lock", span)

    # 4. A pipe written by another process after 30 ms.
    proc = {}

    def spawn():
        r, wfd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        # The pipe is the child's stdout: a `>&N` redirection would fail in dash for N > 9,
        # and with 4 vCPUs the hook's relay descriptors push the pipe's number past 9 (the
        # child then exits without writing, and the read is woken by its exit).
        proc["p"] = subprocess.Popen(["/bin/sh", "-c", "sleep 0.03; echo x"],
                                     stdout=wfd, env=env)
        os.close(wfd)
        proc["r"] = r
    span, _ = run("pipe", lambda: os.read(proc["r"], 16), before=spawn,
                  after=lambda: (proc["p"].wait(), os.close(proc["r"])))
    a, dur = parts(span)
    w = waits(span)
    check("pipe written by another process: its longest wait, in read, was woken by that "
          "process (its pid, command sh, in write)",
          w and w[0].get("spantrack.wait.syscall") == "read"
          and w[0].get("spantrack.waker.process.pid") == proc["p"].pid
          and w[0].get("spantrack.waker.command") == "sh"
          and w[0].get("spantrack.waker.syscall") == "write"
          and w[0].get("spantrack.wait.blocked_ns", 0) >= 20 * MS, (proc["p"].pid, w))
    check("pipe: blocked.other dominant", a.get("spantrack.sched.dominant") == "blocked.other",
          summary(span))

    # 5. A loopback request to a server (a thread running span "serve") that works 40 ms.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    served = {}

    def serve():
        c, _ = srv.accept()
        with tracer.start_as_current_span("serve") as s:
            served["span"] = s.get_span_context()
            c.recv(16)
            time.sleep(0.04)
            c.sendall(b"pong")
        c.close()
    st = threading.Thread(target=serve)
    st.start()
    cli = socket.create_connection(srv.getsockname())

    def request():
        cli.sendall(b"ping")
        cli.recv(16)
    span, _ = run("request", request, after=st.join)
    cli.close()
    srv.close()
    a, dur = parts(span)
    w = waits(span)
    nw = [x for x in w if x.get("spantrack.wait.cause") == "net"]
    check("loopback request, server works 40 ms: blocked.net dominant, >= 30 ms",
          a.get("spantrack.sched.dominant") == "blocked.net"
          and a.get("spantrack.sched.blocked.net_ns", 0) >= 30 * MS, summary(span))
    sc = served.get("span")
    links = [(l.context.trace_id, l.context.span_id) for l in (span.links if span else [])]
    check("loopback: the net wait (in recvfrom) was woken by NET_RX and links to the "
          "server's span 'serve'",
          nw and nw[0].get("spantrack.wait.syscall") == "recvfrom"
          and nw[0].get("spantrack.waker.softirq") == "NET_RX"
          and sc is not None and (sc.trace_id, sc.span_id) in links, (links, nw[:1]))

    # 6. fsync of dirty data on a real disk (t_sched.sh mounts the guest's ext2 /dev/vda).
    disk = os.environ.get("SCHED_DISK")
    if not disk:
        check("fsync: a block device is mounted for it (SCHED_DISK)", False)
    else:
        path = os.path.join(disk, "dirty")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, b"z" * (4 << 20))
        span, _ = run("fsync", lambda: os.fsync(fd))
        os.close(fd)
        os.unlink(path)
        a, dur = parts(span)
        w = waits(span)
        io = [x for x in w if x.get("spantrack.wait.cause") == "io"]
        check("fsync of 4 MiB dirty data on a 4 MB/s disk: blocked.io dominant",
              a.get("spantrack.sched.dominant") == "blocked.io", summary(span))
        check("fsync: its longest io wait is in fsync, woken by the disk's interrupt or the "
              "BLOCK softirq",
              io and io[0].get("spantrack.wait.syscall") == "fsync"
              and io[0].get("spantrack.waker.context") in ("hardirq", "softirq"), w)
        check("fsync: the io wait's kernel stack shows the filesystem/writeback path",
              io and has_frame(io[0], "spantrack.wait.kernel_stack", "file_write_and_wait",
                               "filemap_fdatawait", "folio_wait", "ext2_fsync", "fsync"),
              [frames(x, "spantrack.wait.kernel_stack") for x in io[:1]])
        parts_sum_to_duration("fsync", span)

    # 7. Two busy tasks on one CPU: about half the span waits for the CPU.
    cpu = sorted(os.sched_getaffinity(0))[0]
    old = os.sched_getaffinity(0)
    hog = {}

    def start_hog():
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        hog["p"] = subprocess.Popen(["taskset", "-c", str(cpu), "/bin/sh", "-c",
                                     "while :; do :; done"], env=env)
        # Until the hog runs its loop (exec'd, and burning CPU): a debug kernel takes a while.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{hog['p'].pid}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()
                if st[0] == "R" and int(st[11]) > 10:  # utime > 10 ticks
                    break
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.02)
        os.sched_setaffinity(0, {cpu})

    def stop_hog():
        os.sched_setaffinity(0, old)
        hog["p"].kill()
        hog["p"].wait()
    span, _ = run("shared-cpu", lambda: spin(0.2), before=start_hog, after=stop_hog)
    a, dur = parts(span)
    rq = a.get("spantrack.sched.runqueue.preempted_ns", 0)
    check("two busy tasks on one CPU: 25-75% of the span waiting for the CPU after "
          "preemption, with preemptions counted",
          0.25 * dur <= rq <= 0.75 * dur and a.get("spantrack.sched.preemptions", 0) >= 1,
          summary(span))
    parts_sum_to_duration("shared-cpu", span)

    provider.shutdown()
    return 0 if all(results) else 1


def main_off():
    """With sysfs sched at 0: slow spans get their calls, and no scheduler part."""
    span, _ = run("sleep-off", lambda: time.sleep(0.03))
    a, _ = parts(span)
    check("sched off: a slow span is annotated (calls) without any spantrack.sched.* "
          "attribute or wait event",
          span is not None and "spantrack.syscalls.count" in a
          and not any(k.startswith("spantrack.sched.") for k in a) and not waits(span), dict(a))
    provider.shutdown()
    return 0 if all(results) else 1


def main_nostacks():
    """With sysfs sched_stacks at 0: waits without any stack."""
    span, _ = run("sleep-nostacks", lambda: time.sleep(0.03))
    w = waits(span)
    check("sched_stacks off: the sleep's wait is there, without kernel, user or Python stack",
          w and not any(k.endswith("_stack") for x in w for k in x), w)
    provider.shutdown()
    return 0 if all(results) else 1


if __name__ == "__main__":
    mode = sys.argv[1:]
    sys.exit(main_off() if mode == ["off"] else main_nostacks() if mode == ["nostacks"] else main())
