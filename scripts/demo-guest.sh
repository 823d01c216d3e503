#!/bin/bash
# The demo's guest side (scripts/demo.sh runs it inside the VM, as root, from the repository).
# Loads spantrack.ko, starts an OTLP receiver and two traced HTTP services under
# LD_PRELOAD=libspanhook.so (the Python `frontend`, and the `currency` service: the Rust one
# when target/release/spantrack-rust-demo-svc is built, else demo/currency.py), sends them
# about twenty requests of which some are slow for different reasons (their own fsyncs, a
# sleep, a lock held by another thread, a slow downstream call), lets them export, and prints
# the slow traces as trees with the system calls spantrack attached. Unloads the module.
#
# Usage: scripts/demo-guest.sh KO|none [OUT_DIR]
#   KO      the module to insmod ("none": no module, e.g. on the host: nothing annotated)
#   OUT_DIR where spans.jsonl, requests.json, traces.json and the logs go. Default: the VM's
#           output share /run/spout/demo-output (kept on the host with vm-run.sh --keep DIR),
#           else /tmp/spantrack-demo. The services' files (the fsync'ed ones) go to the VM's
#           disk /dev/vda when it has one (mounted on OUT_DIR/data), else to OUT_DIR/data
#           (in the VM /tmp is a tmpfs, where fsync costs nothing).
# Env: DEMO_THRESHOLD_MS (default 10), DEMO_RECEIVER_PORT/FRONTEND_PORT/CURRENCY_PORT
#      (4318/8081/8082), SPANTRACK_VENV (default: the venv of scripts/python-env.sh),
#      SPANHOOK_LIB (default target/release/libspanhook.so).
set -u
cd "$(dirname "$0")/.."
root=$PWD
ko=${1:?usage: scripts/demo-guest.sh KO|none [OUT_DIR]}
out=${2:-${DEMO_OUT:-}}
if [ -z "$out" ]; then
  if [ -d /run/spout ] && [ -w /run/spout ]; then out=/run/spout/demo-output; else out=/tmp/spantrack-demo; fi
fi
threshold_ms=${DEMO_THRESHOLD_MS:-10}
rport=${DEMO_RECEIVER_PORT:-4318}; fport=${DEMO_FRONTEND_PORT:-8081}; cport=${DEMO_CURRENCY_PORT:-8082}; aport=${DEMO_CATALOG_PORT:-8083}

say() { echo "== $*"; }
fail() { echo "demo: $*" >&2; exit 1; }

venv=${SPANTRACK_VENV:-$(scripts/python-env.sh 2>/dev/null)} \
  || fail "no Python venv: run scripts/python-env.sh on the host first"
py=$venv/bin/python
[ -x "$py" ] || fail "no python in $venv (run scripts/python-env.sh on the host first)"

rm -rf "$out"; mkdir -p "$out/data" || fail "cannot write $out"
# The services' files go to a real disk when the VM has one (scripts/vm-run.sh attaches a
# slow ext2 disk as /dev/vda): there an fsync waits for the device, as on a server.
disk=
if [ -b /dev/vda ] && ! grep -q '^/dev/vda ' /proc/mounts && mount -t ext2 /dev/vda "$out/data" 2>/dev/null; then
  disk=/dev/vda
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "$disk" ]; then rm -rf "$out/data"/* 2>/dev/null; umount "$out/data"; fi
  rm -rf "$out/data"
  if [ "$ko" != none ] && lsmod 2>/dev/null | grep -q '^spantrack'; then rmmod spantrack; fi
}
trap cleanup EXIT

say "guest kernel $(uname -r), $(nproc) CPUs"
if [ "$ko" != none ]; then
  say "insmod $ko"
  insmod "$ko" || fail "insmod failed"
  echo $((threshold_ms * 1000000)) > /sys/kernel/spantrack/threshold_ns
  say "threshold: spans of at least $threshold_ms ms get their system calls recorded"
fi

# The preload library, when it is built and exports the C ABI.
lib=${SPANHOOK_LIB:-$root/target/release/libspanhook.so}
preload=()
if [ -f "$lib" ] && "$py" -c "import ctypes, sys; ctypes.CDLL(sys.argv[1]).spanhook_abi_version" "$lib" 2>/dev/null; then
  preload=(LD_PRELOAD="$lib")
  # The library puts preload/python first on a Python process's PYTHONPATH; should this
  # build not do so yet, do it here (the hook code is the same either way).
  if ! env LD_PRELOAD="$lib" SPANHOOK_QUIET=1 "$py" -c 'import sys; sys.exit(0 if "sitecustomize" in sys.modules and "spantrack_hook" in sys.modules else 1)' 2>/dev/null; then
    say "note: this libspanhook.so does not set PYTHONPATH; the demo adds preload/python itself"
    preload+=(PYTHONPATH="$root/preload/python${PYTHONPATH:+:$PYTHONPATH}")
  fi
  say "services run with LD_PRELOAD=$lib"
else
  say "NOTE: $lib is missing or does not export the spanhook C ABI yet:"
  say "      the services run without it, so no span gets system-call children"
fi

say "OTLP receiver on 127.0.0.1:$rport -> $out/spans.jsonl"
"$py" demo/receiver.py "$rport" "$out/spans.jsonl" > "$out/receiver.log" 2>&1 &
pids+=($!)
"$py" demo/wait.py port "$rport" 60 || fail "receiver did not start: $(cat "$out/receiver.log")"

# PYTHONFAULTHANDLER: a Python service that crashes says where, in its log (seen once in
# make test: the frontend died of a segmentation fault between two requests, silently).
common=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$rport" OTEL_BSP_SCHEDULE_DELAY=500
        SPANTRACK_DEMO_DIR="$out/data" PYTHONFAULTHANDLER=1)
rust_svc=$root/target/release/spantrack-rust-demo-svc
if [ -x "$rust_svc" ]; then
  say "currency service: Rust ($rust_svc) on 127.0.0.1:$cport"
  env "${common[@]}" "${preload[@]}" OTEL_SERVICE_NAME=currency \
    "$rust_svc" --listen "127.0.0.1:$cport" > "$out/currency.log" 2>&1 &
else
  say "currency service: Python (demo/currency.py; the Rust one is not built) on 127.0.0.1:$cport"
  env "${common[@]}" "${preload[@]}" OTEL_SERVICE_NAME=currency \
    "$py" demo/currency.py "$cport" > "$out/currency.log" 2>&1 &
fi
cpid=$!; pids+=($cpid)
say "catalog service: Python async (demo/catalog.py: FastAPI on one asyncio event loop) on 127.0.0.1:$aport"
env "${common[@]}" "${preload[@]}" OTEL_SERVICE_NAME=catalog \
  "$py" demo/catalog.py "$aport" > "$out/catalog.log" 2>&1 &
apid=$!; pids+=($apid)
say "frontend service: Python (demo/frontend.py) on 127.0.0.1:$fport"
env "${common[@]}" "${preload[@]}" OTEL_SERVICE_NAME=frontend CURRENCY_URL="http://127.0.0.1:$cport" \
  CATALOG_URL="http://127.0.0.1:$aport" "$py" demo/frontend.py "$fport" > "$out/frontend.log" 2>&1 &
fpid=$!; pids+=($fpid)
"$py" demo/wait.py port "$cport" 120 || fail "currency did not start: $(cat "$out/currency.log")"
"$py" demo/wait.py port "$aport" 120 || fail "catalog did not start: $(cat "$out/catalog.log")"
# Readiness probes, as a load balancer would send, one per kind of search: a first request
# imports what is loaded lazily on its path (the openat, newfstatat, read and mmap calls of
# those imports belong to that request, and would blur the driven requests' check).
for q in "q=ready&fsync=1" "q=ready&stat=1"; do
  "$py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=120).read()' \
    "http://127.0.0.1:$aport/search?$q" || fail "catalog did not answer its readiness probe"
done
"$py" demo/wait.py port "$fport" 120 || fail "frontend did not start: $(cat "$out/frontend.log")"

if [ -n "$disk" ]; then
  say "the services' files go to $out/data: an ext2 file system on $disk, a slow virtual disk (4 MB/s, 500 I/O per second)"
else
  case "$out" in /run/spout*) say "the services' files go to $out/data, on the VM's 9p share: write and fsync there travel to the host's disk";; esac
fi
say "requests (client-side latency as the caller saw it):"
"$py" demo/drive.py "http://127.0.0.1:$fport" "$out/requests.json" || fail "the driver failed"

say "stopping the services (they flush their spans on the way out)"
kill -TERM "$fpid" "$cpid" "$apid"
for p in "$fpid" "$cpid" "$apid"; do
  for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
done
n=$("$py" demo/wait.py quiet "$rport" 2 60) || fail "the receiver never went quiet"
say "the receiver got $n spans"
for svc in frontend currency catalog; do
  grep -v '^\s*$' "$out/$svc.log" | sed "s/^/   [$svc] /" | grep -E 'spanhook|spantrack|Error|Traceback|Fatal Python|^   \[[a-z]*\]   File ' | head -n 40
done

echo
say "slow traces, as a trace backend would show them with spantrack's system-call spans:"
echo
"$py" demo/show_traces.py "$out/spans.jsonl" --requests "$out/requests.json" \
  --json-out "$out/traces.json" --min-ms "$((threshold_ms * 3))" || fail "show_traces failed"
echo
if [ "$ko" != none ]; then
  say "/proc/spantrack/stats:"; sed 's/^/   /' /proc/spantrack/stats
fi
say "everything received: $out/traces.json (all traces), $out/spans.jsonl (raw spans)"
