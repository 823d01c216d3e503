#!/bin/bash
# Stress and fault tests (spantrack-stress, tests/vmtest/src/stress): 64 threads x
# thousands of nested spans with threads born and exiting mid-span; registered processes
# killed mid-span and REGISTER racing with thread creation/exit; fork/exec of registered
# processes; full span table, process table, thread table and chunk pool; a relay reader
# that stops reading; rmmod with everything busy; insmod/rmmod cycles under load.
# Each mode runs against a fresh load of the module and must leave the kernel log clean.
# Counts are smaller on the debug kernel (STRESS_SCALE overrides the factor, RELOAD_CYCLES
# the reload cycles);
# STRESS_MODES selects modes; STRESS_BUDGET is each mode's hang guard in seconds. The times are
# printed, never judged: how long a mode takes depends on the host's load (a second VM, a
# kernel build), and a timed test that fails on a busy host hides nothing but the load. A
# mode that does not finish within its guard is killed and fails as a hang.
. "$(dirname "$0")/lib.sh"
ko=$1
bin=target/release/spantrack-stress
[ -x "$bin" ] || { nok "stress binary built ($bin missing: cargo build --release -p spantrack-vmtest)"; finish; exit; }
lsmod | grep -q '^spantrack' && rmmod spantrack
# make test runs this on both kernels within CI's 90 minutes (the debug kernel, ~5x slower,
# gets scaled-down counts and 3 reload cycles: 6-10 minutes with t_fuzz.sh, most of it
# insmod/rmmod and thread creation, depending on the load of the host). The hang guard is
# per mode, well above a whole run's time on a loaded host.
if [ -e /sys/kernel/debug/kmemleak ]; then kernel=debug; budget=${STRESS_BUDGET:-900}; cycles=${RELOAD_CYCLES:-3}
else kernel=release; budget=${STRESS_BUDGET:-600}; cycles=${RELOAD_CYCLES:-10}; fi
modes=${STRESS_MODES:-threads slots procs forkexec tables capacity relayfull unload reload}
reports='WARNING: |BUG: |Oops|general protection fault|KASAN:|UBSAN:|possible recursive locking|possible circular locking|inconsistent lock state|suspicious RCU usage|sleeping function called from invalid context|scheduling while atomic|Call Trace:|refcount_t: |list_add corruption|list_del corruption|ODEBUG: '
t_all=$(date +%s.%N)
times=""
for mode in $modes; do
  t0=$(date +%s.%N)
  mark=$(dmesg_mark)
  args=()
  case "$mode" in
    unload) args=("$ko");;
    reload) args=("$ko" "$cycles");;
  esac
  if [ "$mode" != reload ]; then
    insmod "$ko" || { nok "$mode: insmod"; continue; }
  fi
  out=$(timeout -k 5 "$budget" "$bin" "$mode" "${args[@]}" 2>&1); rc=$?
  echo "$out"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && nok "$mode: still running after its ${budget} s hang guard (killed)"
  ST_PASS=$((ST_PASS + $(grep -c '^ok - ' <<<"$out")))
  ST_FAIL=$((ST_FAIL + $(grep -c '^not ok - ' <<<"$out")))
  grep -q '^# spantrack-stress .*passed, .*failed' <<<"$out" || nok "$mode: spantrack-stress ended without a summary (exit $rc)"
  if lsmod | grep -q '^spantrack'; then
    rmmod spantrack || nok "$mode: rmmod afterwards"
  fi
  log=$(dmesg_since "$mark" | grep -E "$reports" | head -5)
  check "$mode: kernel log clean${log:+ ($log)}" [ -z "$log" ]
  took=$(echo "$(date +%s.%N) - $t0" | bc)
  times+=" $mode=${took%.*}s"
done
total=$(echo "$(date +%s.%N) - $t_all" | bc)
echo "# t_stress.sh ($kernel kernel): times:$times; total ${total%.*}s (printed, not judged)"
finish
