#!/bin/bash
# Issue 14: the `spantrack` command (status, set, records, top) in the VM against the real
# module and a running service, with its error paths: module not loaded, not root, unknown
# tunable, malformed and out-of-range values, a process that is not registered.
. "$(dirname "$0")/lib.sh"
ko=$1
st_setup
st=scripts/spantrack
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$t"; }
trap cleanup EXIT
export SPANTRACK_OPS_DIR=$t/ops
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all -- "$@"; }
j() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"d": d}))' "$@"; }
lsmod | grep -q '^spantrack' && rmmod spantrack

# --- Module not loaded ---------------------------------------------------------------------
$st status > "$t/out" 2>&1; rc=$?
if [ "$rc" = 1 ] && grep -q "not loaded" "$t/out"; then ok "status without the module: exit 1, says not loaded"; else nok "status without the module: exit 1, says not loaded"; fi
$st status --json > "$t/s.json" 2>/dev/null
check "status --json without the module: {\"loaded\": false}" [ "$(j "$t/s.json" 'd["loaded"]')" = False ]
$st set threshold 5ms > "$t/out" 2>&1; rc=$?
if [ "$rc" = 1 ] && grep -q "not loaded" "$t/out"; then ok "set without the module: exit 1, says not loaded"; else nok "set without the module: exit 1, says not loaded"; fi
$st --help > "$t/out" 2>&1
check "--help lists status, set, records, top" grep -q "status" "$t/out"
$st status --help > /dev/null 2>&1
check "status --help: exit 0" [ $? = 0 ]

insmod "$ko" || { nok "insmod"; finish; exit; }

# --- status --------------------------------------------------------------------------------
$st status > "$t/out" 2>&1; rc=$?
check "status: exit 0 with the module loaded" [ "$rc" = 0 ]
check "status: names the ABI (5)" grep -q "ABI: 5" "$t/out"
if grep -q "threshold_ns" "$t/out" && grep -q "spans_begun" "$t/out"; then ok "status: lists the tunables and counters"; else nok "status: lists the tunables and counters"; fi
$st status --json > "$t/s.json"
check "status --json: abi_version 5, tunables, stats" 
  [ "$(j "$t/s.json" 'd["abi_version"] == 5 and d["tunables"]["threshold_ns"] == 1000000 and "spans_begun" in d["stats"]')" = True ]

# A running service: a Python OpenTelemetry program under the preload.
cat > "$t/svc.py" <<'PY'
import sys, time
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
p = TracerProvider(resource=Resource.create({"service.name": "cli-svc"}))
p.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
tr = p.get_tracer("t")
end = time.monotonic() + float(sys.argv[1])
open(sys.argv[2], "w").close()
while time.monotonic() < end:
    with tr.start_as_current_span("GET /item"):
        time.sleep(0.002)
p.shutdown()
PY
env LD_PRELOAD="$lib" PYTHONPATH="$root/preload/python" "$py" "$t/svc.py" 60 "$t/started" 2>"$t/svc.err" &
svc=$!; pids+=("$svc")
for _ in $(seq 100); do [ -e "$t/started" ] && [ -e "$t/ops/$svc.json" ] && break; sleep 0.2; done
$st status --json > "$t/s.json"
check "status: the running service is listed (pid, command, threads)" 
  [ "$(j "$t/s.json" "any(p['pid'] == $svc and p['command'] and p['threads'] >= 1 for p in d['processes'])")" = True ]
check "status: with the span count its processor publishes" 
  [ "$(j "$t/s.json" "[p.get('spans', 0) > 0 for p in d['processes'] if p['pid'] == $svc] == [True]")" = True ]
$st status > "$t/out"; echo "# $(grep -A3 'registered processes' "$t/out" | tr '\n' '|')"

# --- top -----------------------------------------------------------------------------------
$st top --once --json --pid "$svc" > "$t/top.json" 2>"$t/top.err"; rc=$?
check "top --once --json: exit 0" [ "$rc" = 0 ]
check "top: the service's operation with its rate, percentiles, threshold, source" 
  [ "$(j "$t/top.json" "[(o['service'], o['name'], o['kind'], o['rate'] is not None and o['rate'] > 0, o['p95_ns'] is not None, o['source'] in ('warmup', 'adaptive')) for o in d['operations']] == [('cli-svc', 'GET /item', 'internal', True, True, True)]")" = True ]
$st top --once --pid "$svc" > "$t/out"; echo "# $(tr '\n' '|' < "$t/out")"

# --- set -----------------------------------------------------------------------------------
$st set threshold 5ms > "$t/out" 2>&1; rc=$?
if [ "$rc" = 0 ] && [ "$(cat /sys/kernel/spantrack/threshold_ns)" = 5000000 ]; then ok "set threshold 5ms: exit 0, threshold_ns 5000000"; else nok "set threshold 5ms: exit 0, threshold_ns 5000000"; fi
$st set --json threshold 250us > "$t/set.json" 2>&1
check "set --json threshold 250us: old and new" [ "$(j "$t/set.json" 'd["old"] == "5000000" and d["new"] == "250000"')" = True ]
$st set filter deny futex > /dev/null 2>&1
check "set filter deny futex" grep -q "deny" /sys/kernel/spantrack/filter
$st set filter all > /dev/null 2>&1
check "set filter all" [ "$(cat /sys/kernel/spantrack/filter)" = all ]
$st set threshold 2h > "$t/out" 2>&1; rc=$?
check "set threshold 2h: malformed unit, exit 2" [ "$rc" = 2 ]
$st set threshold 7200s > "$t/out" 2>&1; rc=$?
if [ "$rc" = 1 ] && grep -q "out of range" "$t/out" && [ "$(cat /sys/kernel/spantrack/threshold_ns)" = 250000 ]; then ok "set threshold 7200s (above 1 hour): exit 1, out of range, unchanged"; else nok "set threshold 7200s (above 1 hour): exit 1, out of range, unchanged"; fi
$st set max_calls lots > "$t/out" 2>&1; rc=$?
check "set max_calls lots: exit 2" [ "$rc" = 2 ]
$st set filter allow nosuchcall > "$t/out" 2>&1; rc=$?
if [ "$rc" = 1 ] && grep -q "refused" "$t/out" && [ "$(cat /sys/kernel/spantrack/filter)" = all ]; then ok "set filter allow nosuchcall: refused by the module, exit 1, unchanged"; else nok "set filter allow nosuchcall: refused by the module, exit 1, unchanged"; fi
$st set bogus 1 > "$t/out" 2>&1; rc=$?
if [ "$rc" = 2 ] && grep -q "unknown tunable" "$t/out"; then ok "set bogus: unknown tunable, exit 2"; else nok "set bogus: unknown tunable, exit 2"; fi
as_nobody $st set threshold 1ms > "$t/out" 2>&1; rc=$?
if [ "$rc" = 1 ] && grep -q "not root" "$t/out" && [ "$(cat /sys/kernel/spantrack/threshold_ns)" = 250000 ]; then ok "set as another user: exit 1, says not root, unchanged"; else nok "set as another user: exit 1, says not root, unchanged"; fi
as_nobody $st status > "$t/out" 2>&1; rc=$?
if [ "$rc" = 0 ] && grep -q "needs root" "$t/out"; then ok "status as another user: exit 0, the process list needs root (said)"; else nok "status as another user: exit 0, the process list needs root (said)"; fi
echo 1000000 > /sys/kernel/spantrack/threshold_ns

# --- records -------------------------------------------------------------------------------
# A process that registers and leaves its records unread: one slow span (own threshold 1 us).
cat > "$t/raw.py" <<'PY'
import fcntl, os, sys, time
c = os.open("/proc/spantrack/control", os.O_RDONLY); fcntl.ioctl(c, (0xB9 << 8) | 0x91)
b = os.open("/proc/spantrack/begin", os.O_WRONLY); e = os.open("/proc/spantrack/end", os.O_WRONLY)
ids = "2af7651916cd43dd8448eb211c80319c b7ad6b7169203301"
os.write(b, (ids + " 1000\n").encode()); os.getpid(); time.sleep(0.003); os.write(e, (ids + "\n").encode())
open(sys.argv[1], "w").close()
time.sleep(60)
PY
"$py" "$t/raw.py" "$t/raw.started" & raw=$!; pids+=("$raw")
for _ in $(seq 100); do [ -e "$t/raw.started" ] && break; sleep 0.1; done
sleep 0.1
$st records "$raw" --json > "$t/rec.json" 2>"$t/rec.err"; rc=$?
if [ "$rc" = 0 ] && [ "$(j "$t/rec.json" "len(d['records']) == 1 and d['records'][0]['span_id'] == 'b7ad6b7169203301' and d['records'][0]['total_calls'] >= 1")" = True ]; then ok "records PID --json: exit 0, the slow span with its calls"; else nok "records PID --json: exit 0, the slow span with its calls"; fi
$st records 1 > "$t/out" 2>&1; rc=$?
if [ "$rc" = 1 ] && grep -q "not registered" "$t/out"; then ok "records of a process that is not registered: exit 1"; else nok "records of a process that is not registered: exit 1"; fi
as_nobody $st records "$raw" > "$t/out" 2>&1; rc=$?
check "records as another user: exit 1" [ "$rc" = 1 ]

kill "$svc" "$raw" 2>/dev/null; wait "$svc" "$raw" 2>/dev/null
rmmod spantrack && ok "rmmod"
$st status > /dev/null 2>&1
check "status after rmmod: exit 1" [ $? = 1 ]
finish
