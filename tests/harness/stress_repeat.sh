#!/bin/bash
# Runs t_stress.sh's record-integrity modes N times in one guest and counts the runs that
# failed (issue 13's proof: run it while the host is busy, e.g. with a second VM):
#   scripts/vm-run.sh --variant release --timeout 3000 -- tests/harness/stress_repeat.sh build/release/spantrack.ko 20
# STRESS_MODES overrides the modes (default: threads procs relayfull).
ko=${1:?usage: stress_repeat.sh KO [N]}; n=${2:-20}
pass=0; fail=0
for i in $(seq "$n"); do
  out=$(STRESS_MODES="${STRESS_MODES:-threads procs relayfull}" bash tests/vm/t_stress.sh "$ko" 2>&1)
  if grep -q '^not ok' <<<"$out" || ! grep -q '^ok' <<<"$out"; then
    fail=$((fail + 1)); echo "run $i: FAILED"; grep '^not ok' <<<"$out" | head -3
  else
    pass=$((pass + 1)); echo "run $i: ok ($(grep -c '^ok' <<<"$out") checks;$(grep 'times:' <<<"$out" | sed 's/.*times://'))"
  fi
done
echo "stress_repeat: $pass of $n runs passed, $fail failed"
[ "$fail" = 0 ]
