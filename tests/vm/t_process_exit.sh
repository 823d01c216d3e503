#!/bin/bash
# A registered process that exits (with a span open, without UNREGISTER) is forgotten: its
# relay channel goes away, its threads and spans are dropped and counted.
. "$(dirname "$0")/lib.sh"
ko=$1
insmod "$ko" || { nok "insmod"; finish; exit; }
stat() { awk -v k="$1" '$1 == k { print $2 }' /proc/spantrack/stats; }
ab0=$(stat spans_abandoned)
pid=$(python3 - <<'PY'
import fcntl, os, threading
fd = os.open("/proc/spantrack/control", os.O_RDONLY)
fcntl.ioctl(fd, (0xB9 << 8) | 0x91)
b = os.open("/proc/spantrack/begin", os.O_WRONLY)
def worker(i):
    os.write(b, b"%032x %016x\n" % (0xfeed0000 + i, 0x100 + i))
ts = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
os.write(b, b"%032x %016x\n" % (0xfeed, 0x1))
print(os.getpid(), flush=True)
PY
)
check "python registered, opened spans on 4 threads and exited (pid $pid)" [ -n "$pid" ]
gone=0
for i in $(seq 50); do [ -e "/sys/kernel/debug/spantrack/$pid" ] || { gone=1; break; }; sleep 0.1; done
check "its relay directory is removed" [ "$gone" = 1 ]
check "no process or thread is tracked any more" [ "$(stat processes)" = 0 -a "$(stat threads)" = 0 ]
ab1=$(stat spans_abandoned)
check "its 4 open spans are counted as abandoned ($ab0 -> $ab1)" [ "$((ab1 - ab0))" = 4 ]
check "no span is left open" [ "$(stat open_spans)" = 0 ]
rmmod spantrack || nok "rmmod"
finish
