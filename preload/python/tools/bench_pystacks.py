"""What one sample of the hook's Python-frame sampler costs (spantrack_hook/pystacks.py, README
"What it costs"): the time the sampler holds the GIL for `sys._current_frames()` and the
rings, with N threads blocked at a given depth (their stacks seen before: a comparison
each) and M threads running Python code (their innermost frame moves: a walk each sample),
and the first sample of N blocked threads (every stack walked). No module is needed.

Usage: bench_pystacks.py            a few configurations, 500 samples each
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spantrack_hook import pystacks  # noqa: E402

SAMPLES = 500


def blocked(depth, ev):
    if depth == 0:
        ev.wait()
    else:
        blocked(depth - 1, ev)


def running(depth, stop):
    if depth:
        return running(depth - 1, stop)
    x = 0
    while not stop.is_set():
        x += 1
    return x


def measure(n_blocked, depth, n_running):
    ev, stop = threading.Event(), threading.Event()
    threads = ([threading.Thread(target=blocked, args=(depth, ev)) for _ in range(n_blocked)]
               + [threading.Thread(target=running, args=(depth, stop)) for _ in range(n_running)])
    for t in threads:
        t.start()
    time.sleep(0.1)
    try:
        first = pystacks.Sampler(None, 5)
        t0 = time.perf_counter()
        first.sample()
        first_us = (time.perf_counter() - t0) * 1e6
        s = pystacks.Sampler(None, 5)
        s.sample()
        t0 = time.perf_counter()
        for _ in range(SAMPLES):
            s.sample()
        steady_us = (time.perf_counter() - t0) / SAMPLES * 1e6
    finally:
        ev.set()
        stop.set()
        for t in threads:
            t.join()
    return steady_us, first_us


def main():
    print(f"Python {sys.version.split()[0]}, {SAMPLES} samples each")
    for n_blocked, depth, n_running in ((1, 20, 0), (10, 20, 0), (50, 30, 0), (10, 20, 2)):
        steady, first = measure(n_blocked, depth, n_running)
        print(f"{n_blocked:3d} blocked threads (depth {depth}), {n_running} running: "
              f"{steady:6.1f} us per sample, first sample {first:6.0f} us")


if __name__ == "__main__":
    main()
