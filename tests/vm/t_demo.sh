#!/bin/bash
# The demo end to end (scripts/demo-guest.sh): every slow request's trace carries the system
# calls of its reason (fsync for the fsync requests, a sleep call for the sleep requests,
# futex for the lock requests, the downstream service's span with its own calls), and the
# printed trees say so.
. "$(dirname "$0")/lib.sh"
ko=$1
cd "$(dirname "$0")/../.."
venv=${SPANTRACK_VENV:-$(scripts/python-env.sh 2>/dev/null)}
# The output share is a 9p mount to the host's disk: fsync there costs what it should (on
# the guest's tmpfs it costs nothing and the fsync requests would not be slow).
if [ -d /run/spout ] && [ -w /run/spout ]; then out=/run/spout/t_demo; else out=$(mktemp -d /tmp/t_demo.XXXXXX); fi
printed=$(scripts/demo-guest.sh "$ko" "$out" 2>&1)
rc=$?
echo "$printed" | sed 's/^/# /'
check "demo-guest.sh exits 0" [ "$rc" = 0 ]
if grep -q 'does not export the spanhook C ABI' <<<"$printed"; then
  nok "the demo ran with libspanhook.so (it is missing: cargo build --release)"
fi
if [ -f "$out/traces.json" ]; then
  res=$("$venv/bin/python" demo/check_traces.py "$out" 2>&1)
  echo "$res"
  ST_PASS=$((ST_PASS + $(grep -c '^ok - ' <<<"$res"))); ST_FAIL=$((ST_FAIL + $(grep -c '^not ok - ' <<<"$res")))
else
  nok "the demo wrote $out/traces.json"
fi
# What a person reads: the trees name the calls and say where the time went.
for want in "fsync " "clock_nanosleep " "futex " "[client]" "mostly clock_nanosleep" "⤷ kernel:" \
            "⤷ why annotated: over" "this operation's adaptive threshold" "warm-up: " \
            "wait: lock" "kernel stack: " "user stack: "; do
  check "the printed trees show '$want'" grep -qF -- "$want" <<<"$printed"
done
rm -rf "$out"
finish
