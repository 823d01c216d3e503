#!/bin/bash
# The traced system-call path only for threads that need it (glue.c, issue 16): while
# spantrack's probes are alone on sys_enter/sys_exit, threads outside any span drop the
# kernel's SYSCALL_TRACEPOINT work; another tracer that attaches (here ftrace's
# raw_syscalls events) gets every thread back, including ones that dropped it long before,
# and when it leaves the threads drop it again. Loading and unloading under it leave it
# working and the kernel log clean.
. "$(dirname "$0")/lib.sh"
ko=$1
tr=/sys/kernel/tracing
mountpoint -q $tr || mount -t tracefs nodev $tr 2>/dev/null
stat_of() { awk -v k="$1" '$1 == k { print $2 }' /proc/spantrack/stats; }
# Waits up to 3 s for stats line $1 to satisfy test $2 $3 (e.g. -ge 1).
wait_stat() {
  local i v
  for i in $(seq 30); do
    v=$(stat_of "$1"); [ -n "$v" ] && [ "$v" "$2" "$3" ] && return 0; sleep 0.1
  done
  echo "# $1 is $(stat_of "$1"), wanted $2 $3"; return 1
}
ev=$tr/events/raw_syscalls/sys_enter
[ -d "$ev" ] || { nok "ftrace's raw_syscalls events in this kernel ($ev)"; finish; exit; }
echo 0 > $tr/tracing_on; echo 0 > $ev/enable; echo > $tr/trace

mark=$(dmesg_mark)
# An untracked process that makes a getppid (110) every 20 ms, started before the load:
# its flag was set by the kernel at the load and dropped at its next call.
python3 -c '
import os, time
while True:
    os.getppid(); time.sleep(0.02)' &
victim=$!
insmod "$ko" || { nok insmod; kill $victim; finish; exit; }
check "alone on the system-call tracepoints: the traced path goes lazy (syscall_trace_lazy 1)" wait_stat syscall_trace_lazy -eq 1
check "no other probes seen (syscall_trace_foreign_probes 0)" wait_stat syscall_trace_foreign_probes -eq 0
sleep 0.3
check "threads outside spans dropped the traced path (syscall_trace_dropped $(stat_of syscall_trace_dropped))" \
  wait_stat syscall_trace_dropped -ge 1

# Another tracer attaches: ftrace's raw_syscalls sys_enter, only for the victim.
restores0=$(stat_of syscall_trace_restores)
echo "$victim" > $tr/set_event_pid
echo 1 > $ev/enable; echo 1 > $tr/tracing_on
check "another probe is seen (syscall_trace_foreign_probes >= 1)" wait_stat syscall_trace_foreign_probes -ge 1
check "the traced path is not lazy while it is there (syscall_trace_lazy 0)" wait_stat syscall_trace_lazy -eq 0
check "every thread got the traced path back (syscall_trace_restores > $restores0)" wait_stat syscall_trace_restores -gt "$restores0"
echo > $tr/trace
sleep 0.5
n=$(grep -c "sys_enter: NR 110 " $tr/trace)
check "the other tracer sees the calls of a thread that had dropped the path ($n getppid in 0.5 s, want >= 5)" [ "$n" -ge 5 ]
# The module leaves while the other tracer stays: it still sees them.
rmmod spantrack || nok rmmod
echo > $tr/trace
sleep 0.5
n=$(grep -c "sys_enter: NR 110 " $tr/trace)
check "after rmmod the other tracer still sees them ($n getppid in 0.5 s)" [ "$n" -ge 5 ]

# Loaded while the other tracer is there: never lazy; lazy again once it leaves.
insmod "$ko" || nok "insmod under a tracer"
sleep 0.5
check "loaded under another tracer: not lazy (syscall_trace_lazy $(stat_of syscall_trace_lazy))" [ "$(stat_of syscall_trace_lazy)" = 0 ]
echo > $tr/trace
sleep 0.5
n=$(grep -c "sys_enter: NR 110 " $tr/trace)
check "the other tracer sees every call meanwhile ($n getppid in 0.5 s)" [ "$n" -ge 5 ]
d0=$(stat_of syscall_trace_dropped)
echo 0 > $ev/enable; echo 0 > $tr/tracing_on; echo > $tr/set_event_pid
check "the other tracer gone: lazy again (syscall_trace_lazy 1)" wait_stat syscall_trace_lazy -eq 1
check "and threads drop the path again (syscall_trace_dropped > $d0)" wait_stat syscall_trace_dropped -gt "$d0"
rmmod spantrack || nok "rmmod #2"
kill $victim; wait $victim 2>/dev/null
bad=$(dmesg_since "$mark" | grep -Ei 'warn|bug|lockdep|kasan|rcu.*stall|circular|call trace' | head -3)
check "kernel log clean${bad:+: $bad}" [ -z "$bad" ]
finish
