#!/bin/bash
# The in-guest test program (tests/vmtest): registration, nested spans, exact system calls,
# errors, tunables, relay records, poll; against the loaded module. The program's own
# "ok"/"not ok" lines count; its exit status must be 0 (an abort, a panic or a crash drops
# the cases after it: that fails the stage). VMTEST_BIN overrides the program (the runner's
# self-test, tests/harness/runner_selftest.sh).
. "$(dirname "$0")/lib.sh"
ko=$1
bin=${VMTEST_BIN:-target/release/spantrack-vmtest}
[ -x "$bin" ] || { nok "vmtest binary built ($bin missing: cargo build --release)"; finish; exit; }
insmod "$ko" || { nok "insmod"; finish; exit; }
"$bin" ${VMTEST_FILTER:-}
rc=$?
rmmod spantrack || nok "rmmod after vmtest"
why="exit $rc"; [ "$rc" -gt 128 ] && why="killed by signal $((rc - 128)): $(kill -l $((rc - 128)) 2>/dev/null)"
check "spantrack-vmtest ran to its end ($why)" [ "$rc" = 0 ]
finish
