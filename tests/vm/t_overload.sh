#!/bin/bash
# Issue 19: under sustained load no span is lost and no slow span is silent, in both
# integrations. The load of the issue, scaled down: THREADS threads x SPANS spans, each
# three writes to /dev/null and a 1.5 ms sleep (every span slow at the 1 ms default), into
# a slow synchronous exporter, so that a backlog forms. Paths: shutdown, force_flush, exit
# without shutdown (atexit), fork (parent and child), an annotator that fails now and then,
# and the module unloaded under load; Rust: shutdown, force_flush, unload, and a shutdown
# whose barrier times out (nothing reaches the inner processor after its shutdown).
. "$(dirname "$0")/lib.sh"
ko=$1
cd "$(dirname "$0")/../.."
lib=${SPANHOOK_LIB:-$PWD/target/release/libspanhook.so}
rsvc=$PWD/target/release/spantrack-overload
venv=${SPANTRACK_VENV:-$(scripts/python-env.sh 2>/dev/null)}
py=$venv/bin/python
w=preload/python/tests/vm_overload.py
threads=${OVERLOAD_THREADS:-8}; spans=${OVERLOAD_SPANS:-60}
t=$(mktemp -d /tmp/t_overload.XXXXXX)
trap 'rm -rf "$t"' EXIT
if [ ! -x "$py" ] || [ ! -f "$lib" ] || [ ! -x "$rsvc" ]; then
  nok "venv, libspanhook.so and spantrack-overload present (cargo build --release)"; finish; exit
fi
absorb() { echo "$1"; ST_PASS=$((ST_PASS + $(grep -c '^ok - ' <<<"$1"))); ST_FAIL=$((ST_FAIL + $(grep -c '^not ok - ' <<<"$1"))); }
lsmod | grep -q '^spantrack' && rmmod spantrack
load() { lsmod | grep -q '^spantrack' || insmod "$ko" || nok "insmod"; echo 1000000 > /sys/kernel/spantrack/threshold_ns; }
run() { env LD_PRELOAD="$lib" SPANHOOK_QUIET=1 PYTHONPATH="$PWD/preload/python" "$@"; }

# --- Python ------------------------------------------------------------------------------
for path in shutdown flush atexit fork error; do
  load
  start=$SECONDS
  out=$(run timeout 300 "$py" $w run "$t/$path" $path "$threads" "$spans" 2>&1); rc=$?
  echo "$out" | grep '^#'
  check "python $path: the service exits 0 (rc $rc, $((SECONDS - start)) s)" [ "$rc" = 0 ]
  absorb "$("$py" $w check "$t/$path" $path 2>&1)"
done
# The module unloaded under load: the service goes on, its spans go on.
load
run timeout 300 "$py" $w run "$t/unload" unload "$threads" > "$t/unload.log" 2>&1 &
pid=$!
# Under load first: until 100 spans have been made.
for _ in $(seq 600); do n=$(grep -c ' made ' "$t/unload" 2>/dev/null); [ "${n:-0}" -ge 100 ] && break; sleep 0.1; done
rmmod spantrack; rc=$?
check "python unload: rmmod under load succeeds (rc $rc)" [ "$rc" = 0 ]
wait $pid; rc=$?
grep '^#' "$t/unload.log"
check "python unload: the service goes on and exits 0 (rc $rc)" [ "$rc" = 0 ]
absorb "$("$py" $w check "$t/unload" unload 2>&1)"

# --- Rust --------------------------------------------------------------------------------
rspans=${OVERLOAD_RUST_SPANS:-400}
for path in shutdown flush tight; do
  load
  out=$(env LD_PRELOAD="$lib" SPANHOOK_QUIET=1 timeout 300 "$rsvc" $path "$threads" "$rspans" 300 2>&1); rc=$?
  absorb "$out"
  check "rust $path: exits 0 (rc $rc)" [ "$rc" = 0 ]
done
load
env LD_PRELOAD="$lib" SPANHOOK_QUIET=1 timeout 300 "$rsvc" unload "$threads" 0 300 > "$t/runload.log" 2>&1 &
pid=$!
sleep 3
rmmod spantrack; rc=$?
check "rust unload: rmmod under load succeeds (rc $rc)" [ "$rc" = 0 ]
wait $pid; rc=$?
absorb "$(cat "$t/runload.log")"
check "rust unload: the service goes on and exits 0 (rc $rc)" [ "$rc" = 0 ]
lsmod | grep -q '^spantrack' && rmmod spantrack
finish
