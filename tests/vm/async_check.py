"""Checks the spans an async test service exported against the ground truth of its requests
(preload/python/tests/vm_async.py and tests/async_rust/: the same kinds, the same dump
format). Prints TAP-style "ok - ..." / "not ok - ..." lines; exit status 1 on a failure.

Usage: async_check.py SPANS.json LABEL [--stat-call NAME] [--allow NAME,...]
                      [--kinds disk,stat,...]

Each request span carries `req.kind`. Its system-call children (spans with
`spantrack.syscall.nr`) must hold exactly the request's own marker calls, no marker call of
any other request, and nothing else but the runtime's incidental calls (memory, locks).
Calls no request made (the event loop's epoll, accept/recv of other connections,
spantrack's own calls, marked by the application processor's getpgid) must appear under
no span at all.
"""

import argparse
import collections
import json
import sys

EXPECT = {
    "disk": {"pwrite64": 1, "fsync": 2},
    "stat": {"newfstatat": 20},
    "sleep": {"clock_nanosleep": 1},
    "thread": {"uname": 5},
    "nested": {},
    "sync": {"getppid": 7, "clock_nanosleep": 1},
}
# Child spans of a request, by name: their own markers.
CHILD_EXPECT = {"nested-child": {"getppid": 7}}
# Markers made on another thread than the one the request began on.
OFF_THREAD = {"thread": "uname", "sync": "getppid"}
# Calls a runtime may make in any request's code (allocator, locks, thread pools).
INCIDENTAL = {"futex", "mmap", "munmap", "brk", "madvise", "mprotect", "mremap", "getrandom",
              "rt_sigprocmask", "rt_sigaction", "clone3", "clone", "set_robust_list", "rseq",
              "sched_yield", "sched_getaffinity", "gettid", "prctl", "sigaltstack",
              # CPython 3.11's asyncio.get_running_loop() compares the loop's pid with
              # getpid() (fork safety) on every call: the task's own code makes it.
              "getpid"}
# Calls no request made.
NEVER = {"getpgid", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "accept",
         "accept4", "recvfrom", "recvmsg", "read"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spans")
    ap.add_argument("label")
    ap.add_argument("--stat-call", default="newfstatat")
    ap.add_argument("--allow", default="")
    ap.add_argument("--kinds", default="")
    ap.add_argument("--min-requests", type=int, default=20)
    ap.add_argument("--expect-migration", action="store_true",
                    help="some request ran on more than one thread without a pool hand-off")
    a = ap.parse_args()
    expect = {k: dict(v) for k, v in EXPECT.items()}
    expect["stat"] = {a.stat_call: 20}
    allowed = INCIDENTAL | {x for x in a.allow.split(",") if x}
    markers = set().union(*expect.values(), *CHILD_EXPECT.values())
    kinds = set(a.kinds.split(",")) if a.kinds else set(expect)

    dumped = json.load(open(a.spans))
    spans = dumped["spans"]
    by_id = {s["span_id"]: s for s in spans}
    calls = collections.defaultdict(list)
    for s in spans:
        if "spantrack.syscall.nr" in s["attributes"] and s["parent"]:
            calls[s["parent"]].append(s)
    requests = [s for s in spans if s["attributes"].get("req.kind") in kinds]
    failures = []
    lines = []

    def say(good, msg):
        lines.append(("ok - " if good else "not ok - ") + f"{a.label}: {msg}")
        if not good:
            failures.append(msg)

    seen_kinds = collections.Counter(s["attributes"]["req.kind"] for s in requests)
    say(len(requests) >= a.min_requests and set(seen_kinds) == kinds,
        f"{len(requests)} requests of every kind exported ({dict(seen_kinds)})")

    # (Warm-up requests load modules lazily: their reads are their own, not ground truth.)
    warm = {s["span_id"] for s in spans if s["attributes"].get("req.kind") == "warmup"}
    never = [(c["name"], by_id.get(c["parent"], {}).get("name"))
             for p, cs in calls.items() if p not in warm for c in cs if c["name"] in NEVER]
    say(not never, "no call that no request made (event loop, other connections, "
        f"spantrack's own) under any span{': ' + str(never[:8]) if never else ''}")

    wrong, unannotated, strays, threads_bad = [], [], [], []
    for r in requests:
        kind = r["attributes"]["req.kind"]
        if "spantrack.syscalls.count" not in r["attributes"]:
            # What the processor left on it, and how long it lasted (for a diagnosis).
            st = {k: v for k, v in r["attributes"].items() if k.startswith("spantrack.")}
            dur = r["dur_ns"] / 1e6 if "dur_ns" in r else None
            unannotated.append(f"{r['name']} ({r['span_id']}, {dur} ms, {st})")
            continue
        if "spantrack.annotation.missing" in r["attributes"]:
            unannotated.append(f"{r['name']} ({r['span_id']}): without its calls, "
                               f"{r['attributes']['spantrack.annotation.missing']}")
            continue
        mine = calls.get(r["span_id"], [])
        got = collections.Counter(c["name"] for c in mine if c["name"] in markers)
        want = collections.Counter(expect[kind])
        if got != want:
            wrong.append(f"{r['name']}: markers {dict(got)}, want {dict(want)}")
        others = sorted({c["name"] for c in mine} - markers - allowed)
        if others:
            # Which threads made them, and when (for a diagnosis: the loop's, a pool's?).
            where = sorted({(c["name"], c["attributes"].get("thread.id"), c["attributes"].get("spantrack.syscall.ret"))
                            for c in mine if c["name"] in others}, key=str)
            strays.append(f"{r['name']}: {others} (name, thread, ret: {where[:4]}; "
                          f"request began on thread {r['attributes'].get('thread.id')})")
        for child in spans:
            if child["parent"] == r["span_id"] and child["name"] in CHILD_EXPECT:
                cg = collections.Counter(c["name"] for c in calls.get(child["span_id"], [])
                                         if c["name"] in markers)
                if cg != collections.Counter(CHILD_EXPECT[child["name"]]):
                    wrong.append(f"{r['name']} > {child['name']}: markers {dict(cg)}")
        if kind in OFF_THREAD:
            tids = {c["attributes"].get("thread.id") for c in mine if c["name"] == OFF_THREAD[kind]}
            began = r["attributes"].get("thread.id")
            if not tids or began in tids or r["attributes"].get("spantrack.threads", 1) < 2:
                threads_bad.append(f"{r['name']}: began on {began}, {OFF_THREAD[kind]} on {tids}, "
                                   f"spantrack.threads {r['attributes'].get('spantrack.threads')}")
    say(not unannotated, f"every request span annotated{': missing ' + str(unannotated[:6]) if unannotated else ''}")
    say(not wrong, "every request holds exactly its own marker calls and no other request's"
        + (": " + "; ".join(wrong[:8]) if wrong else ""))
    say(not strays, "no other calls than the runtime's incidental ones"
        + (": " + "; ".join(strays[:8]) if strays else ""))
    if a.expect_migration:
        moved = [r for r in requests if r["attributes"]["req.kind"] not in OFF_THREAD
                 and r["attributes"].get("spantrack.threads", 1) >= 2]
        say(bool(moved), f"{len(moved)} requests moved between workers and kept all their calls")
    say(not threads_bad, "work moved to a pool thread is charged to its request, with that "
        "thread's id" + (": " + "; ".join(threads_bad[:6]) if threads_bad else ""))
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
