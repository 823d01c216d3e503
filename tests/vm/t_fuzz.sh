#!/bin/bash
# Bad input (spantrack-stress fuzz, tests/vmtest/src/stress/fuzz.rs): random, malformed,
# partial, oversized and bad-pointer writes to /proc/spantrack/{begin,end,control}, every
# 0xB9 ioctl and random ioctls with bad arguments, invalid tunables and huge filter lists.
# Each input gets its exact errno, counters move exactly as modelled, tunables and stats
# are otherwise unchanged. FUZZ_SEED / FUZZ_ITERS repeat or resize a run (the seed is
# printed); the debug kernel runs fewer iterations by default.
. "$(dirname "$0")/lib.sh"
ko=$1
bin=target/release/spantrack-stress
[ -x "$bin" ] || { nok "stress binary built ($bin missing: cargo build --release -p spantrack-vmtest)"; finish; exit; }
lsmod | grep -q '^spantrack' && rmmod spantrack
reports='WARNING: |BUG: |Oops|general protection fault|KASAN:|UBSAN:|possible recursive locking|possible circular locking|inconsistent lock state|suspicious RCU usage|sleeping function called from invalid context|scheduling while atomic|Call Trace:|refcount_t: |list_add corruption|list_del corruption|ODEBUG: '
t0=$(date +%s.%N)
mark=$(dmesg_mark)
insmod "$ko" || { nok "insmod"; finish; exit; }
out=$(timeout -k 5 600 "$bin" fuzz ${FUZZ_SEED:-} ${FUZZ_SEED:+${FUZZ_ITERS:-}} 2>&1); rc=$?
echo "$out"
ST_PASS=$((ST_PASS + $(grep -c '^ok - ' <<<"$out")))
ST_FAIL=$((ST_FAIL + $(grep -c '^not ok - ' <<<"$out")))
grep -q '^# spantrack-stress .*passed, .*failed' <<<"$out" || nok "fuzz: spantrack-stress ended without a summary (exit $rc)"
rmmod spantrack || nok "rmmod after the fuzz"
log=$(dmesg_since "$mark" | grep -E "$reports" | head -5)
check "fuzz: kernel log clean${log:+ ($log)}" [ -z "$log" ]
took=$(echo "$(date +%s.%N) - $t0" | bc)
echo "# t_fuzz.sh: took ${took%.*}s"
finish
