#!/bin/bash
# libspanhook.so + spantrack-otel in a Rust service (target/release/spantrack-rust-demo-svc):
#  - without the module: the preloaded service runs and exports as without the library, and
#    the library says so in one stderr line (none with SPANHOOK_QUIET=1);
#  - module loaded, service not preloaded: nothing changes, nothing registers;
#  - module loaded and preloaded: the self-test's slow spans carry exactly their system calls
#    as child spans (see otel/demo_svc/src/selftest.rs), also with a clocksource
#    without vDSO;
#  - a forked child of a preloaded process is quietly inactive, the parent stays active;
#  - in Python processes (only) the library puts preload/python first on PYTHONPATH;
#  - the HTTP service, called with a traceparent, exports annotated server spans (as JSON
#    lines, and as OTLP/HTTP protobuf to a local sink).
# The self-test's own "ok -" lines are counted here too.
. "$(dirname "$0")/lib.sh"
ko=$1
hook=$PWD/target/release/libspanhook.so
svc=$PWD/target/release/spantrack-rust-demo-svc
tmp=$(mktemp -d /tmp/t_preload_rust.XXXXXX)
if [ ! -x "$svc" ] || [ ! -f "$hook" ]; then
  nok "binaries built ($svc, $hook: cargo build --release)"; finish; exit
fi

# Runs a command, shows its output, counts its ok/not ok lines; returns its status.
counted() {
  local out rc p f
  out=$("$@" 2>"$tmp/stderr"); rc=$?
  echo "$out"
  p=$(grep -c '^ok - ' <<<"$out"); f=$(grep -c '^not ok - ' <<<"$out")
  ST_PASS=$((ST_PASS + p)); ST_FAIL=$((ST_FAIL + f))
  return $rc
}
stderr_lines() { grep -c "$1" "$tmp/stderr"; }
show_stderr() { sed 's/^/# stderr: /' "$tmp/stderr" | head -20; }

# --- 1. No module ------------------------------------------------------------------------
if [ -e /proc/spantrack ]; then nok "module not loaded at start"; fi
counted env LD_PRELOAD="$hook" "$svc" --selftest inactive
check "no module: preloaded self-test exits 0" [ $? = 0 ]
n=$(stderr_lines '^spanhook: inactive (')
if [ "$n" = 1 ] && [ "$(wc -l < "$tmp/stderr")" = 1 ]; then ok "no module: exactly one 'spanhook: inactive' line"
else nok "no module: exactly one 'spanhook: inactive' line (got $n)"; show_stderr; fi
SPANHOOK_QUIET=1 LD_PRELOAD="$hook" "$svc" --selftest inactive >/dev/null 2>"$tmp/stderr"
rc=$?
if [ $rc = 0 ] && [ ! -s "$tmp/stderr" ]; then ok "no module: SPANHOOK_QUIET=1 silences it"
else nok "no module: SPANHOOK_QUIET=1 silences it (rc $rc)"; show_stderr; fi
out=$(LD_PRELOAD="$hook" SPANHOOK_QUIET=1 sh -c 'echo hi; exit 3'); rc=$?
check "no module: an unrelated preloaded program runs unchanged" [ "$out/$rc" = "hi/3" ]
pp=$(SPANHOOK_QUIET=1 LD_PRELOAD="$hook" python3 -c 'import os; print(os.environ.get("PYTHONPATH", ""))')
check "no module: PYTHONPATH left alone ('$pp')" [ -z "$pp" ]

# --- 2. Module loaded ----------------------------------------------------------------------
insmod "$ko" || { nok "insmod"; finish; exit; }
mark=$(dmesg_mark)
thr=/sys/kernel/spantrack/threshold_ns
old_thr=$(cat $thr)
echo 2000000 > $thr

counted "$svc" --selftest inactive
check "module, no preload: self-test exits 0" [ $? = 0 ]
check "module, no preload: nothing on stderr" [ ! -s "$tmp/stderr" ]

counted env LD_PRELOAD="$hook" "$svc" --selftest active
rc=$?
check "module + preload: self-test exits 0" [ $rc = 0 ]
if [ "$(stderr_lines '^spanhook')" = 0 ]; then ok "module + preload: library silent"
else nok "module + preload: library silent"; show_stderr; fi

# Again where the clock is read by a system call (no vDSO with hpet): the SDK's clock reads
# inside spans then show up as clock_gettime children, and the self-test expects them.
cs=/sys/devices/system/clocksource/clocksource0
if grep -qw hpet $cs/available_clocksource 2>/dev/null; then
  old_cs=$(cat $cs/current_clocksource)
  if echo hpet > $cs/current_clocksource; then
    counted env LD_PRELOAD="$hook" "$svc" --selftest active
    check "module + preload, clocksource hpet: self-test exits 0" [ $? = 0 ]
    echo "$old_cs" > $cs/current_clocksource
  fi
fi

# Fork: the child is not registered and must be quietly inactive; the parent stays active.
cat > "$tmp/fork.py" <<'PY'
import ctypes, os, sys
l = ctypes.CDLL(None)
t = (ctypes.c_uint8 * 16)(*range(1, 17)); s = (ctypes.c_uint8 * 8)(*range(1, 9))
parent = (l.spanhook_active(), l.spanhook_span_begin(t, s), l.spanhook_span_end(t, s))
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, repr((l.spanhook_active(), l.spanhook_span_begin(t, s), l.spanhook_span_end(t, s))).encode())
    os._exit(0)
os.close(w)
child = os.read(r, 100).decode()
os.waitpid(pid, 0)
after = (l.spanhook_active(), l.spanhook_span_begin(t, s), l.spanhook_span_end(t, s))
print("parent", parent, "child", child, "parent after fork", after)
ok = parent == (1, 0, 0) and child == "(0, -19, -19)" and after == (1, 0, 0)
sys.exit(0 if ok else 1)
PY
out=$(LD_PRELOAD="$hook" python3 "$tmp/fork.py" 2>&1); rc=$?
echo "# $out"
check "fork: child inactive (-ENODEV), parent still active" [ $rc = 0 ]

# Python: the library puts the Python hook first on PYTHONPATH (only in Python processes).
pp=$(LD_PRELOAD="$hook" PYTHONPATH=/nonexistent python3 -c 'import os; print(os.environ["PYTHONPATH"])' 2>/dev/null)
check "python: preload/python first on PYTHONPATH ('$pp')" [ "$pp" = "$(readlink -f preload/python):/nonexistent" ]
pp=$(LD_PRELOAD="$hook" sh -c 'echo "${PYTHONPATH:-unset}"')
check "python: other programs' PYTHONPATH left alone" [ "$pp" = unset ]

# The HTTP service, exporting JSON lines, called with a W3C traceparent.
rm -f "$tmp/port"
LD_PRELOAD="$hook" "$svc" --listen 127.0.0.1:0 --port-file "$tmp/port" --export stdout \
  >"$tmp/spans.jsonl" 2>"$tmp/svc.err" &
svc_pid=$!
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
if [ -s "$tmp/port" ]; then
  port=$(cat "$tmp/port")
  trace=4bf92f3577b34da6a3ce929d0e0e4736
  get() { curl -sf -m 20 -H "traceparent: 00-$trace-$1-01" "http://127.0.0.1:$port$2" >/dev/null; }
  fails=0
  get 00f067aa0ba902b7 "/convert?sleep_ms=20" || fails=$((fails+1))
  get 00f067aa0ba902b8 "/convert?fsync=2&sleep_ms=5" || fails=$((fails+1))
  get 00f067aa0ba902b9 "/convert?lock=1" || fails=$((fails+1))
  get 00f067aa0ba902ba "/convert?lock=1" || fails=$((fails+1))
  get 00f067aa0ba902bb "/convert?lock=1" || fails=$((fails+1))
  get 00f067aa0ba902bc "/fast" || fails=$((fails+1))
  check "http: 6 requests answered" [ $fails = 0 ]
  kill -TERM $svc_pid
  wait $svc_pid
  check "http: service stops cleanly on SIGTERM" [ $? = 0 ]
  out=$(python3 - "$tmp/spans.jsonl" "$trace" <<'PY'
import json, sys
spans = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
trace = sys.argv[2]
server = {s["parent_span_id"]: s for s in spans if s["kind"] == "Server"}
kids = lambda p: [s for s in spans if s["parent_span_id"] == p["span_id"]]
res = []
def check(name, cond, why=""):
    res.append(("ok - " if cond else "not ok - ") + "http: " + name + ("" if cond else ": " + why))
check("one server span per traced request", sorted(server) == ["00f067aa0ba902b%s" % c for c in "789abc"], str(sorted(server)))
check("server spans continue the caller's trace", all(s["trace_id"] == trace for s in server.values()))
def names(p): return [k["name"] for k in kids(p)]
s = server.get("00f067aa0ba902b7")
if s:
    ns = [k for k in kids(s) if k["name"] == "clock_nanosleep"]
    check("sleep_ms=20: a clock_nanosleep child of >= 19 ms",
          len(ns) == 1 and ns[0]["end_ns"] - ns[0]["start_ns"] >= 19_000_000, str(names(s)))
    check("sleep_ms=20: annotated", "spantrack.syscalls.top" in s["attributes"] and
          s["attributes"].get("thread.id", 0) > 0, str(s["attributes"]))
    check("children inside the server span", all(s["start_ns"] <= k["start_ns"] <= k["end_ns"] <= s["end_ns"] for k in kids(s)))
s = server.get("00f067aa0ba902b8")
if s:
    n = names(s)
    check("fsync=2: two fsync and write children", n.count("fsync") == 2 and n.count("write") >= 2, str(n))
lock = [server.get("00f067aa0ba902b%s" % c) for c in "9ab"]
long_futex = lambda s: any(k["name"] == "futex" and k["end_ns"] - k["start_ns"] >= 15_000_000 for k in kids(s))
check("lock=1: contention shows as a futex child of ~20 ms", all(s and long_futex(s) for s in lock),
      str([names(s) for s in lock if s]))
s = server.get("00f067aa0ba902bc")
if s:
    d = s["end_ns"] - s["start_ns"]
    check("/fast: no children (%d us)" % (d // 1000), not kids(s) or d >= 2_000_000, str(names(s)))
kinds = {k["kind"] for s in server.values() for k in kids(s)}
check("children are INTERNAL", kinds <= {"Internal"}, str(kinds))
print("\n".join(res))
PY
)
  echo "$out"
  ST_PASS=$((ST_PASS + $(grep -c '^ok - ' <<<"$out"))); ST_FAIL=$((ST_FAIL + $(grep -c '^not ok - ' <<<"$out")))
  grep -q '^ok - http' <<<"$out" || { nok "http: spans checked"; head -c 2000 "$tmp/spans.jsonl"; }
else
  nok "http: service started (no port file)"; cat "$tmp/svc.err"
  kill -TERM $svc_pid 2>/dev/null; wait $svc_pid 2>/dev/null
fi
[ -s "$tmp/svc.err" ] && sed 's/^/# svc: /' "$tmp/svc.err" | head -5

# The same service exporting OTLP/HTTP protobuf (opentelemetry-otlp) to a local sink.
cat > "$tmp/sink.py" <<'PY'
import http.server, sys
out = open(sys.argv[2], "ab")
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        out.write(("POST %s %s %d\n" % (self.path, self.headers.get("content-type"), len(body))).encode())
        out.write(body + b"\n"); out.flush()
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.serve_forever()
PY
python3 "$tmp/sink.py" "$tmp/sink.port" "$tmp/otlp.bin" & sink_pid=$!
for _ in $(seq 100); do [ -s "$tmp/sink.port" ] && break; sleep 0.1; done
rm -f "$tmp/port"
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$(cat "$tmp/sink.port" 2>/dev/null)" LD_PRELOAD="$hook" \
  "$svc" --listen 127.0.0.1:0 --port-file "$tmp/port" 2>"$tmp/svc.err" & svc_pid=$!
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
if [ -s "$tmp/port" ]; then
  curl -sf -m 20 "http://127.0.0.1:$(cat "$tmp/port")/convert?sleep_ms=10" >/dev/null
  kill -TERM $svc_pid; wait $svc_pid
  check "otlp: service exported and stopped" [ $? = 0 ]
  if grep -aq '^POST /v1/traces application/x-protobuf' "$tmp/otlp.bin" && grep -aq 'clock_nanosleep' "$tmp/otlp.bin" \
     && grep -aq 'spantrack.syscalls.top' "$tmp/otlp.bin" && grep -aq 'GET /convert' "$tmp/otlp.bin"; then
    ok "otlp: protobuf export to /v1/traces carries the annotated span and its children"
  else
    nok "otlp: protobuf export to /v1/traces carries the annotated span and its children"
    head -c 600 "$tmp/otlp.bin" | strings | head; cat "$tmp/svc.err"
  fi
else
  nok "otlp: service started"; cat "$tmp/svc.err"; kill -TERM $svc_pid 2>/dev/null; wait $svc_pid 2>/dev/null
fi
kill $sink_pid 2>/dev/null; wait $sink_pid 2>/dev/null

echo "$old_thr" > $thr
sleep 0.3
grep -E '^(processes|threads|open_spans|spans_slow|records_written|records_dropped) ' /proc/spantrack/stats | tr '\n' ' ' | sed 's/^/# stats: /'; echo
check "module: no process left registered" grep -qx 'processes 0' /proc/spantrack/stats
rmmod spantrack || nok "rmmod"
if dmesg_since "$mark" | grep -Eq 'WARNING|BUG|Oops'; then nok "kernel log clean"; dmesg_since "$mark" | tail -20; else ok "kernel log clean"; fi
rm -rf "$tmp"
finish
