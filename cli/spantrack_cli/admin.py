"""`spantrack status`, `spantrack set`, `spantrack records`, `spantrack top`: the module and
the traced processes, for the person at the terminal. Python 3 standard library only.

Exit codes: 0 done; 1 the operation failed (module not loaded, not root, a value the module
refused, no such process); 2 usage (unknown tunable, malformed value; argparse's own).
`--json` prints one JSON document on standard output instead of text.

SPANTRACK_FS_ROOT=<dir> reads and writes <dir>/proc/... and <dir>/sys/... instead of the
real ones (the host tests' fake module).
"""

import argparse
import errno
import fcntl
import json
import os
import re
import struct
import sys
import time

PROC_DIR = "/proc/spantrack"
SYSFS_DIR = "/sys/kernel/spantrack"
RELAY_DIR = "/sys/kernel/debug/spantrack"
# Where libspanhook's Python and Rust processors publish per-operation statistics, one
# file per process (see `top`).
OPS_DIR_ENV = "SPANTRACK_OPS_DIR"
OPS_DIR_DEFAULT = "/tmp/spantrack-ops"

ABI_VERSION = 5
# ioctl INFO: _IOR(0xB9, 0x94, struct Info (40 bytes)); ABI 1-2 numbered it with 0xF6.
_INFO = struct.Struct("<6I2Q")
IOCTL_INFO = (2 << 30) | (_INFO.size << 16) | (0xB9 << 8) | 0x94
IOCTL_INFO_ABI2 = (2 << 30) | (_INFO.size << 16) | (0xF6 << 8) | 0x94

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

# Tunables `set` knows, with the kind of value each takes: "duration" (ns, or with a unit),
# "count", "text". Unknown names are refused (exit 2) rather than written blindly.
TUNABLES = {
    "threshold_ns": "duration",
    "timeout_ns": "duration",
    "max_calls": "count",
    "filter": "text",
    "max_procs_per_uid": "count",
}
ALIASES = {"threshold": "threshold_ns", "timeout": "timeout_ns"}

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


class Failure(Exception):
    """An operational failure: printed, exit 1 (or `code`)."""

    def __init__(self, msg, code=EXIT_FAIL):
        super().__init__(msg)
        self.code = code


def _root():
    return os.environ.get("SPANTRACK_FS_ROOT", "")


def path(p):
    return _root() + p


def parse_duration(text):
    """'5ms', '250us', '1.5s', '5000000' (ns) -> ns; ValueError when malformed."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s)?\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 5ms, 250us, 1.5s, 5000000)")
    num, unit = m.group(1), m.group(2) or "ns"
    if "." in num:
        whole, frac = num.split(".")
        scale = _UNITS[unit]
        ns = int(whole) * scale + int(frac.ljust(9, "0")[:9]) * scale // 10**9
    else:
        ns = int(num) * _UNITS[unit]
    return ns


def fmt_ns(ns):
    if ns is None:
        return "-"
    ns = int(ns)
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= scale:
            return f"{ns / scale:.3g}{unit}"
    return f"{ns}ns"


def module_loaded():
    return os.path.isdir(path(PROC_DIR))


def read_text(p):
    with open(path(p)) as f:
        return f.read()


def read_stats():
    out = {}
    for line in read_text(f"{PROC_DIR}/stats").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                out[parts[0]] = parts[1]
    return out


def read_tunables():
    out = {}
    d = path(SYSFS_DIR)
    for name in sorted(os.listdir(d)):
        try:
            with open(os.path.join(d, name)) as f:
                v = f.read().strip()
        except OSError as e:
            v = f"<{errno.errorcode.get(e.errno, e.errno)}>"
        out[name] = int(v) if v.isdigit() else v
    return out


def read_info():
    """(ABI version, INFO fields or None, error text or None)."""
    try:
        fd = os.open(path(f"{PROC_DIR}/control"), os.O_RDONLY)
    except OSError as e:
        return None, None, f"{PROC_DIR}/control: {os.strerror(e.errno)}"
    try:
        buf = bytearray(_INFO.size)
        try:
            fcntl.ioctl(fd, IOCTL_INFO, buf, True)
        except OSError as e:
            if e.errno == errno.ENOTTY:
                try:
                    fcntl.ioctl(fd, IOCTL_INFO_ABI2, buf, True)
                    return _INFO.unpack(bytes(buf))[0], None, None
                except OSError:
                    pass
            return None, None, f"ioctl INFO: {os.strerror(e.errno)}"
        f = _INFO.unpack(bytes(buf))
        keys = ("abi_version", "registered", "relay_files", "subbuf_size", "n_subbufs",
                "max_calls_limit", "records_written", "records_dropped")
        return f[0], dict(zip(keys, f)), None
    finally:
        os.close(fd)


def _proc_field(pid, name):
    try:
        for line in read_text(f"/proc/{pid}/status").splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def registered_processes():
    """[(pid, comm, threads)] from the relay directories (root only), else None."""
    d = path(RELAY_DIR)
    try:
        names = os.listdir(d)
    except OSError:
        return None
    out = []
    for n in sorted(names, key=lambda x: int(x) if x.isdigit() else 0):
        if not n.isdigit():
            continue
        try:
            comm = read_text(f"/proc/{n}/comm").strip()
        except OSError:
            comm = None  # exited; its channel is still open until it is read or reaped
        threads = _proc_field(n, "Threads")
        out.append({"pid": int(n), "command": comm,
                    "threads": int(threads) if threads and threads.isdigit() else None})
    return out


def published_ops(pid=None):
    """The per-operation statistics the integrations publish: {pid: document}."""
    d = os.environ.get(OPS_DIR_ENV, OPS_DIR_DEFAULT)
    out = {}
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for n in names:
        m = re.fullmatch(r"(\d+)\.json", n)
        if not m or (pid is not None and int(m.group(1)) != pid):
            continue
        if not os.path.exists(f"/proc/{m.group(1)}") and not _root():
            continue  # a process that exited without removing its file
        try:
            with open(os.path.join(d, n)) as f:
                out[int(m.group(1))] = json.load(f)
        except (OSError, ValueError):
            continue
    return out


# --- status -------------------------------------------------------------------------------

def cmd_status(args):
    if not module_loaded():
        doc = {"loaded": False}
        if args.json:
            print(json.dumps(doc))
        else:
            print("spantrack.ko: not loaded (no /proc/spantrack)")
        return EXIT_FAIL
    abi, info, info_err = read_info()
    doc = {"loaded": True, "abi_version": abi, "abi_expected": ABI_VERSION,
           "tunables": read_tunables(), "stats": read_stats()}
    if info_err:
        doc["info_error"] = info_err
    procs = registered_processes()
    doc["processes"] = procs
    ops = published_ops()
    if procs is not None:
        for p in procs:
            o = ops.get(p["pid"])
            if o:
                p["spans"] = sum(x.get("spans", 0) for x in o.get("operations", []))
                p["annotated"] = sum(x.get("annotated", 0) for x in o.get("operations", []))
                p["missing"] = o.get("missing")
    if args.json:
        print(json.dumps(doc, indent=1))
        return EXIT_OK
    print("spantrack.ko: loaded")
    if abi is None:
        print(f"  ABI: unknown ({info_err})")
    elif abi != ABI_VERSION:
        print(f"  ABI: {abi} (this command speaks {ABI_VERSION}: load matching releases)")
    else:
        print(f"  ABI: {abi}")
    print("tunables (/sys/kernel/spantrack):")
    for k, v in doc["tunables"].items():
        extra = f"  ({fmt_ns(v)})" if k.endswith("_ns") and isinstance(v, int) else ""
        print(f"  {k:<20} {v}{extra}")
    print("counters (/proc/spantrack/stats):")
    stats = doc["stats"]
    width = max((len(k) for k in stats), default=0)
    for k, v in stats.items():
        print(f"  {k:<{width}} {v}")
    print("registered processes:")
    if procs is None:
        print("  (the list needs root: /sys/kernel/debug/spantrack)")
    elif not procs:
        print("  none")
    else:
        print(f"  {'PID':>7} {'COMMAND':<16} {'THREADS':>7} {'SPANS':>8} {'ANNOTATED':>9}")
        for p in procs:
            print(f"  {p['pid']:>7} {(p['command'] or '(exited)'):<16} "
                  f"{p['threads'] if p['threads'] is not None else '-':>7} "
                  f"{p.get('spans', '-'):>8} {p.get('annotated', '-'):>9}")
    return EXIT_OK


# --- set ----------------------------------------------------------------------------------

def cmd_set(args):
    name = ALIASES.get(args.tunable, args.tunable)
    if name not in TUNABLES:
        raise Failure(f"unknown tunable {args.tunable!r}; known: "
                      f"{', '.join(sorted(set(TUNABLES) | set(ALIASES)))}", EXIT_USAGE)
    raw = " ".join(args.value)
    kind = TUNABLES[name]
    if kind == "duration":
        try:
            value = str(parse_duration(raw))
        except ValueError as e:
            raise Failure(str(e), EXIT_USAGE)
    elif kind == "count":
        if not raw.strip().isdigit():
            raise Failure(f"{name} takes a whole number, not {raw!r}", EXIT_USAGE)
        value = raw.strip()
    else:
        value = raw
    if not module_loaded():
        raise Failure("spantrack.ko is not loaded (no /proc/spantrack)")
    p = f"{SYSFS_DIR}/{name}"
    if not os.path.exists(path(p)):
        raise Failure(f"{p}: this module has no such tunable")
    try:
        old = read_text(p).strip()
    except OSError:
        old = None
    try:
        with open(path(p), "w") as f:
            f.write(value + "\n")
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise Failure(f"not root: writing {p} needs root (run: sudo spantrack set {args.tunable} {raw})")
        if e.errno == errno.EINVAL:
            raise Failure(f"{p}: the module refused {value!r} (malformed, EINVAL); unchanged")
        if e.errno == errno.ERANGE:
            raise Failure(f"{p}: {value!r} is out of range (ERANGE); unchanged")
        raise Failure(f"{p}: {os.strerror(e.errno)}; unchanged")
    new = read_text(p).strip()
    if args.json:
        print(json.dumps({"tunable": name, "old": old, "new": new}))
    else:
        shown = f" ({fmt_ns(int(new))})" if kind == "duration" and new.isdigit() else ""
        print(f"{name}: {old} -> {new}{shown}")
    return EXIT_OK


# --- records ------------------------------------------------------------------------------

_HDR = struct.Struct("<IHHII16s8sIIQQQQHHIQQQQQ")
_ENT = struct.Struct("<IIqQQ")


def decode_stream(buf):
    """Whole records at the start of buf: ([record dicts], bytes used)."""
    out, off = [], 0
    while len(buf) - off >= _HDR.size:
        h = _HDR.unpack_from(buf, off)
        magic, version, hsize, total, n = h[:5]
        if magic != 0x52545053:  # "SPTR"
            raise ValueError(f"bad magic at byte {off}")
        if len(buf) - off < total:
            break
        rec = dict(zip(("magic", "version", "header_size", "total_size", "n_entries", "trace_id",
                        "span_id", "tid", "tgid", "begin_mono_ns", "end_mono_ns", "begin_real_ns",
                        "end_real_ns", "depth", "n_threads", "flags", "total_calls",
                        "total_call_ns", "unitemised_calls", "unitemised_ns",
                        "records_dropped_before"), h))
        rec["trace_id"] = rec["trace_id"].hex()
        rec["span_id"] = rec["span_id"].hex()
        rec["duration_ns"] = rec["end_mono_ns"] - rec["begin_mono_ns"]
        rec["calls"] = [dict(zip(("nr", "tid", "ret", "start_mono_ns", "end_mono_ns"),
                                 _ENT.unpack_from(buf, off + hsize + i * _ENT.size)))
                        for i in range(n)]
        out.append(rec)
        off += total
    return out, off


def _syscall_names():
    names = {}
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    try:
        sys.path.insert(0, os.path.join(here, "preload", "python"))
        from spantrack_hook.syscalls import NAMES
        names = dict(NAMES)
    except Exception:
        pass
    return names


def cmd_records(args):
    if not module_loaded():
        raise Failure("spantrack.ko is not loaded (no /proc/spantrack)")
    d = path(f"{RELAY_DIR}/{args.pid}")
    if not os.path.isdir(path(RELAY_DIR)):
        raise Failure(f"{RELAY_DIR}: not readable (debugfs needs root; a service reads its own "
                      "records with IOCTL_RELAY_FDS)")
    if not os.path.isdir(d):
        raise Failure(f"process {args.pid} is not registered with spantrack")
    try:
        st = os.stat(f"/proc/{args.pid}")
        if os.geteuid() != 0 and st.st_uid != os.geteuid():
            raise Failure(f"process {args.pid} is not yours")
    except FileNotFoundError:
        pass
    names = _syscall_names()
    deadline = time.monotonic() + args.follow if args.follow else None
    got = []
    pending = {}
    while True:
        for f in sorted(os.listdir(d)):
            try:
                with open(os.path.join(d, f), "rb") as fh:
                    data = pending.get(f, b"") + fh.read()
            except OSError as e:
                if e.errno == errno.EACCES:
                    raise Failure(f"{d}/{f}: permission denied (root only)")
                continue
            recs, used = decode_stream(data)
            pending[f] = data[used:]
            for r in recs:
                got.append(r)
                if not args.json:
                    print(f"span {r['trace_id']}/{r['span_id']} tid {r['tid']} "
                          f"{fmt_ns(r['duration_ns'])} calls {r['total_calls']} "
                          f"({fmt_ns(r['total_call_ns'])}) itemised {r['n_entries']} flags {r['flags']:#x}")
                    for c in r["calls"][: args.max_calls]:
                        nm = names.get(c["nr"], str(c["nr"]))
                        print(f"  {nm:<16} {fmt_ns(c['end_mono_ns'] - c['start_mono_ns']):>8} "
                              f"ret {c['ret']} tid {c['tid']}")
        if deadline is None or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if args.json:
        print(json.dumps({"pid": args.pid, "records": got}, indent=1))
    elif not got:
        print(f"no records of {args.pid} (records are read once: the service's own reader "
              "may have taken them)", file=sys.stderr)
    return EXIT_OK


# --- top ----------------------------------------------------------------------------------

def _top_rows(prev, cur):
    """One row per process and operation; the rate from the spans counted between two
    documents the process published (by their own times)."""
    rows = []
    for pid, doc in sorted(cur.items()):
        p = prev.get(pid, {})
        before = {(o["service"], o["name"], o["kind"]): o for o in p.get("operations", [])}
        dt = doc.get("time", 0) - p.get("time", 0)
        for o in doc.get("operations", []):
            b = before.get((o["service"], o["name"], o["kind"]))
            rate = (o.get("spans", 0) - b.get("spans", 0)) / dt if (b is not None and dt > 0) else None
            rows.append(dict(o, pid=pid, rate=rate))
    return rows


def cmd_top(args):
    prev = published_ops(args.pid)
    n = 0
    while True:
        deadline = time.monotonic() + max(args.interval, 0.01) * (2.5 if n == 0 else 1)
        while True:
            time.sleep(min(args.interval, 0.1) if n == 0 else args.interval)
            cur = published_ops(args.pid)
            fresh = all(cur[p].get("time") != prev.get(p, {}).get("time") for p in cur)
            if n > 0 or fresh or time.monotonic() >= deadline:
                break
        rows = _top_rows(prev, cur)
        if args.json:
            print(json.dumps({"time": time.time(), "operations": rows}))
        else:
            if not args.once and sys.stdout.isatty():
                print("\033[H\033[J", end="")
            print(f"{'PID':>7} {'OPERATION':<32} {'RATE/s':>7} {'P50':>8} {'P95':>8} {'P99':>8} "
                  f"{'CV':>5} {'THRESH':>8} {'SOURCE':<8} {'ANNOT':>6} {'CAPPED':>6}")
            for r in rows:
                op = f"{r['service']}:{r['name']} ({r['kind']})"[:32]
                rate = f"{r['rate']:.1f}" if r["rate"] is not None else "-"
                print(f"{r['pid']:>7} {op:<32} {rate:>7} {fmt_ns(r.get('p50_ns')):>8} "
                      f"{fmt_ns(r.get('p95_ns')):>8} {fmt_ns(r.get('p99_ns')):>8} "
                      f"{r.get('cv', 0):>5.2f} {fmt_ns(r.get('threshold_ns')):>8} "
                      f"{r.get('source', '-'):<8} {r.get('annotated', 0):>6} {r.get('capped', 0):>6}")
            if not rows:
                print(f"(no process publishes operations in "
                      f"{os.environ.get(OPS_DIR_ENV, OPS_DIR_DEFAULT)})")
        sys.stdout.flush()
        n += 1
        if args.once or (args.count and n >= args.count):
            return EXIT_OK
        prev = cur


# --- wiring -------------------------------------------------------------------------------

def _run(func):
    def run(args):
        try:
            return func(args)
        except Failure as e:
            if getattr(args, "json", False):
                print(json.dumps({"error": str(e)}))
            print(f"spantrack {args.command}: {e}", file=sys.stderr)
            return e.code
        except FileNotFoundError as e:
            print(f"spantrack {args.command}: {e.filename}: not found "
                  "(is spantrack.ko loaded?)", file=sys.stderr)
            return EXIT_FAIL
    return run


def register(subparsers):
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "status", help="is the module loaded, its ABI, tunables, counters, processes",
        formatter_class=fmt,
        description="The module: loaded or not, its ABI version, its tunables "
                    "(/sys/kernel/spantrack), its counters (/proc/spantrack/stats) and the "
                    "registered processes (root: from /sys/kernel/debug/spantrack), with the "
                    "span counts their processors publish. Exit 1 when the module is not "
                    "loaded.")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=_run(cmd_status))

    p = subparsers.add_parser(
        "set", help="write a tunable: set threshold 5ms, set filter deny futex",
        formatter_class=fmt,
        description="Writes one tunable of /sys/kernel/spantrack (root only). Durations "
                    "take a unit (ns, us, ms, s; none: ns).\n\n"
                    "  spantrack set threshold 5ms\n  spantrack set timeout 30s\n"
                    "  spantrack set max_calls 256\n  spantrack set filter deny futex\n"
                    "  spantrack set filter all\n\n"
                    f"Tunables: {', '.join(sorted(TUNABLES))} (threshold = threshold_ns, "
                    "timeout = timeout_ns). Exit 1: not root, module not loaded or the "
                    "value refused (the old one is kept); 2: unknown tunable or malformed "
                    "value.")
    p.add_argument("tunable")
    p.add_argument("value", nargs="+")
    p.add_argument("--json", action="store_true", help="print {tunable, old, new}")
    p.set_defaults(func=_run(cmd_set))

    p = subparsers.add_parser(
        "records", help="decode the slow-span records of a process (root, debugging)",
        formatter_class=fmt,
        description="Reads and decodes the records waiting in a registered process's relay "
                    "buffers (/sys/kernel/debug/spantrack/PID, root only), for debugging "
                    "without OpenTelemetry. Records are read once: those read here never "
                    "reach the service's own reader.")
    p.add_argument("pid", type=int)
    p.add_argument("--follow", type=float, default=0, metavar="SECONDS",
                   help="keep reading for this long")
    p.add_argument("--max-calls", type=int, default=20, help="calls printed per record")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run(cmd_records))

    p = subparsers.add_parser(
        "top", help="live per-operation rates, percentiles, thresholds, annotations",
        formatter_class=fmt,
        description="Per process and operation: rate, p50/p95/p99, CV, the threshold in force "
                    "and where it came from, spans annotated and capped. The processors "
                    "publish these once a second to $SPANTRACK_OPS_DIR/<pid>.json (default "
                    f"{OPS_DIR_DEFAULT}).")
    p.add_argument("--pid", type=int)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--once", action="store_true", help="one screen, then exit")
    p.add_argument("-n", "--count", type=int, default=0, help="screens, then exit")
    p.add_argument("--json", action="store_true", help="one JSON line per screen")
    p.set_defaults(func=_run(cmd_top))
