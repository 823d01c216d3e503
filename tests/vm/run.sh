#!/bin/bash
# Runs inside the VM: the in-VM tests (tests/vm/t_*.sh; they run the compiled in-guest test
# programs) with the module path as argument; prints a summary line.
#   tests/vm/run.sh KO [FILTER]         every t_*.sh whose path contains FILTER (all without)
#   tests/vm/run.sh KO --tests NAME...  exactly these, in this order (NAME: t_sched or
#                                       t_sched.sh); a NAME with no such test is a failure
# Environment settings of a test (e.g. STRESS_MODES for t_stress.sh) pass through.
ko=$1; shift
cd "$(dirname "$0")/../.."
tests=()
if [ "${1:-}" = --tests ]; then
  shift
  [ $# -gt 0 ] || { echo "run.sh: --tests needs at least one test name" >&2; exit 2; }
  for n in "$@"; do n=${n%.sh}; tests+=("tests/vm/${n#tests/vm/}.sh"); done
else
  filter=${1:-}
  for t in tests/vm/t_*.sh; do
    case "$t" in *"$filter"*) tests+=("$t");; esac
  done
fi
pass=0; fail=0
for t in "${tests[@]}"; do
  echo "# ---- $t"
  if [ ! -f "$t" ]; then echo "not ok - $t: no such test"; fail=$((fail+1)); continue; fi
  out=$(bash "$t" "$ko" 2>&1); echo "$out"
  pass=$((pass + $(grep -c '^ok - ' <<<"$out")))
  fail=$((fail + $(grep -c '^not ok - ' <<<"$out")))
  # A script that died without reporting counts as a failure.
  grep -q '^# .*passed, .*failed' <<<"$out" || { echo "not ok - $t ended without a summary"; fail=$((fail+1)); }
  lsmod 2>/dev/null | grep -q '^spantrack' && rmmod spantrack
done
echo "vm: $pass passed, $fail failed (${#tests[@]} test scripts)"
[ "$fail" = 0 ] && [ "${#tests[@]}" -gt 0 ]
