#!/bin/bash
# Issue 12, why a slow span waited: the scheduler part of a slow span (on CPU, waiting for
# a CPU, blocked by cause, wake-ups and wakers, links to the waker's span) through the real
# module, libspanhook.so and the Python hook, on workloads with known answers
# (preload/python/tests/vm_sched.py); the sysfs switch `sched` (on at load, bad values
# refused and nothing changed, off: no scheduler part and no probe on the scheduler path).
. "$(dirname "$0")/lib.sh"
ko=$1
st_setup
w=preload/python/tests/vm_sched.py
sched=/sys/kernel/spantrack/sched
trap 'rm -rf "$t"' EXIT

if [ ! -x "$py" ]; then nok "Python venv present (run scripts/python-env.sh on the host)"; finish; exit; fi
lsmod | grep -q '^spantrack' && rmmod spantrack
mark=$(dmesg_mark)
insmod "$ko" || { nok "insmod"; finish; exit; }
echo 5000000 > /sys/kernel/spantrack/threshold_ns
absorb() { echo "$1"; ST_PASS=$((ST_PASS + $(grep -c '^ok - ' <<<"$1"))); ST_FAIL=$((ST_FAIL + $(grep -c '^not ok - ' <<<"$1"))); }
# The Python frames of the waits are opt-in (README: "Python frames of the waits"); this test
# checks them.
run() { env LD_PRELOAD="$lib" PYTHONPATH="$root/preload/python" SPANTRACK_THRESHOLD=fixed SPANTRACK_PY_STACK_INTERVAL_MS=5 "$@"; }

check "sysfs sched is 1 at load" [ "$(cat $sched)" = 1 ]
check "stats: sched_enabled 1" grep -qx 'sched_enabled 1' /proc/spantrack/stats
for bad in 2 -1 abc " " "1 1"; do
  if printf '%s' "$bad" > $sched 2>/dev/null; then nok "sysfs sched refuses '$bad'"; else ok "sysfs sched refuses '$bad'"; fi
done
check "after the refused writes sched is still 1" [ "$(cat $sched)" = 1 ]

# A real disk for the fsync workload (vm-run.sh attaches a fresh ext2 image as /dev/vda).
mkdir -p "$t/disk"
if [ -b /dev/vda ] && mount -t ext2 /dev/vda "$t/disk" 2>"$t/mount.err"; then
  export SCHED_DISK=$t/disk
  trap 'umount "$t/disk" 2>/dev/null; rm -rf "$t"' EXIT
else
  echo "# no ext2 disk: $(cat "$t/mount.err" 2>/dev/null)"
fi
out=$(run "$py" $w 2>"$t/err"); rc=$?
absorb "$out"
check "the scheduler workload exits 0" [ $rc = 0 ]
if grep -q '^spanhook' "$t/err"; then nok "library silent: $(head -c 400 "$t/err")"; else ok "library silent"; fi

stacks=/sys/kernel/spantrack/sched_stacks
check "sysfs sched_stacks is 1 at load" [ "$(cat $stacks)" = 1 ]
if printf 'x' > $stacks 2>/dev/null; then nok "sysfs sched_stacks refuses 'x'"; else ok "sysfs sched_stacks refuses 'x'"; fi
echo 0 > $stacks
check "sysfs sched_stacks 0 is taken" [ "$(cat $stacks)" = 0 ]
out=$(run "$py" $w nostacks 2>"$t/err"); rc=$?
absorb "$out"
check "the workload with stacks off exits 0" [ $rc = 0 ]
echo 1 > $stacks

echo 0 > $sched
check "sysfs sched 0 is taken" [ "$(cat $sched)" = 0 ]
check "stats: sched_enabled 0" grep -qx 'sched_enabled 0' /proc/spantrack/stats
out=$(run "$py" $w off 2>"$t/err"); rc=$?
absorb "$out"
check "the workload with sched off exits 0" [ $rc = 0 ]
echo 1 > $sched
check "sysfs sched back to 1" [ "$(cat $sched)" = 1 ]

rmmod spantrack
check "rmmod with scheduler accounting on" [ $? = 0 ]
log=$(dmesg_since "$mark")
if grep -qiE 'WARNING|BUG|lockdep|circular|Invalid wait context|kmemleak|KASAN' <<<"$log"; then
  nok "kernel log clean: $(grep -iE 'WARNING|BUG|lockdep|circular|Invalid wait|kmemleak|KASAN' <<<"$log" | head -5)"
else
  ok "kernel log clean"
fi
finish
