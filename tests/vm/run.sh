#!/bin/bash
# Runs inside the VM: every tests/vm/t_*.sh (and the compiled in-guest test programs) with
# the module path as argument; prints a summary line. Usage: tests/vm/run.sh KO [FILTER]
ko=$1; filter=${2:-}
cd "$(dirname "$0")/../.."
pass=0; fail=0
for t in tests/vm/t_*.sh; do
  case "$t" in *"$filter"*) ;; *) continue;; esac
  echo "# ---- $t"
  out=$(bash "$t" "$ko" 2>&1); echo "$out"
  pass=$((pass + $(grep -c '^ok - ' <<<"$out")))
  fail=$((fail + $(grep -c '^not ok - ' <<<"$out")))
  # A script that died without reporting counts as a failure.
  grep -q '^# .*passed, .*failed' <<<"$out" || { echo "not ok - $t ended without a summary"; fail=$((fail+1)); }
  lsmod 2>/dev/null | grep -q '^spantrack' && rmmod spantrack
done
echo "vm: $pass passed, $fail failed"
[ "$fail" = 0 ]
