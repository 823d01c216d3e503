#!/bin/bash
# The in-guest test program (tests/vmtest): registration, nested spans, exact system calls,
# errors, tunables, relay records, poll; against the loaded module.
. "$(dirname "$0")/lib.sh"
ko=$1
bin=target/release/spantrack-vmtest
[ -x "$bin" ] || { nok "vmtest binary built ($bin missing: cargo build --release)"; finish; exit; }
insmod "$ko" || { nok "insmod"; finish; exit; }
"$bin" ${VMTEST_FILTER:-}
rc=$?
rmmod spantrack || nok "rmmod after vmtest"
[ "$rc" = 0 ] || echo "# spantrack-vmtest exited $rc"
echo "# t_vmtest.sh: 0 passed, 0 failed"
