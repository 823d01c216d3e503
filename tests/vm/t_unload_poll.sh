#!/bin/bash
# rmmod while pollers of /proc/spantrack/control (poll, select, epoll) are kept off the CPU
# (issue 13, item 3). They are pinned to CPU 1 and a SCHED_FIFO task spins there for 2 s
# (RT throttling and the fair server off), so after the unload wakes them they cannot run
# for ~2 s. A poll()/select() caller takes its entry off the module's wait queue only when
# it runs: the unload must not free the queue before (it waits, bounded, or leaves the
# queue allocated). Checked: the poll and select callers left the queue before rmmod
# returned (else the queue was freed under them), everyone returns, the log stays clean.
. "$(dirname "$0")/lib.sh"
ko=$1
[ "$(nproc)" -ge 2 ] || { ok "skipped: needs 2 CPUs"; finish; exit; }
fs=/sys/kernel/debug/sched/fair_server/cpu1/runtime
rt=/proc/sys/kernel/sched_rt_runtime_us
[ -w "$fs" ] && [ -w "$rt" ] || { nok "scheduler knobs $fs, $rt"; finish; exit; }
old_fs=$(cat "$fs"); old_rt=$(cat "$rt")
restore() { echo "$old_fs" > "$fs"; echo "$old_rt" > "$rt"; }
insmod "$ko" || { nok "insmod"; finish; exit; }
mark=$(dmesg_mark)
out=/tmp/unload_poll.out; rm -f "$out" /tmp/unload_poll.ready
python3 - "$out" <<'PY' &
import os, select, sys, threading, time
os.sched_setaffinity(0, {1})
fd = os.open("/proc/spantrack/control", os.O_RDONLY)
res = {}
def run(name, fn):
    try:
        fn()
        res[name] = "%.6f" % time.monotonic()
    except OSError as e:
        res[name] = "%.6f:%s" % (time.monotonic(), e.strerror)
def do_poll():
    p = select.poll(); p.register(fd, select.POLLIN); p.poll()
def do_select():
    select.select([fd], [], [])
def do_epoll():
    e = select.epoll(); e.register(fd, select.EPOLLIN); e.poll(30)
ts = [threading.Thread(target=run, args=(n, f)) for n, f in
      [("poll", do_poll), ("select", do_select), ("epoll", do_epoll)]]
for t in ts:
    t.start()
time.sleep(0.3)
open("/tmp/unload_poll.ready", "w").close()
for t in ts:
    t.join()
open(sys.argv[1], "w").write(" ".join("%s=%s" % kv for kv in sorted(res.items())))
PY
pid=$!
for i in $(seq 100); do [ -e /tmp/unload_poll.ready ] && break; sleep 0.1; done
sleep 0.3
echo -1 > "$rt"; echo 0 > "$fs"
python3 -c '
import os, time
os.sched_setaffinity(0, {1})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
end = time.monotonic() + 2.0
while time.monotonic() < end:
    pass
' &
hog=$!
sleep 0.3
t0=$(python3 -c 'import time; print("%.6f" % time.monotonic())')
rmmod spantrack; rc=$?
t1=$(python3 -c 'import time; print("%.6f" % time.monotonic())')
wait "$hog"
restore
check "rmmod succeeds with pollers off the CPU (rc $rc, $(echo "$t1 - $t0" | bc) s)" [ "$rc" = 0 ]
for i in $(seq 100); do [ -e "$out" ] && break; sleep 0.1; done
wait "$pid"; prc=$?
res=$(cat "$out" 2>/dev/null)
echo "# rmmod returned at $t1; pollers returned: $res"
check "the pollers return and their process exits 0 ($prc)" [ "$prc" = 0 ]
for n in poll select; do
  t=$(grep -oE "(^| )$n=[0-9.]*" <<<"$res" | cut -d= -f2)
  before=$([ -n "$t" ] && [ "$(echo "$t < $t1" | bc)" = 1 ] && echo 1)
  check "the $n() caller left the wait queue before rmmod returned ($t < $t1)" [ -n "$before" ]
done
grep -q "epoll=" <<<"$res"; check "the epoll caller returned" [ $? = 0 ]
log=$(dmesg_since "$mark" | grep -E 'WARNING: |BUG: |Oops|general protection fault|KASAN:|Call Trace:|list_del corruption' | head -5)
check "kernel log clean${log:+ ($log)}" [ -z "$log" ]
finish
