#!/bin/bash
# rmmod while a registered process holds the control, begin/end and relay files open with a
# span open: the unload succeeds, the process sees errors (not crashes), the kernel log
# stays clean, and the module loads again afterwards.
. "$(dirname "$0")/lib.sh"
ko=$1
insmod "$ko" || { nok "insmod"; finish; exit; }
rm -f /tmp/busy.ready /tmp/busy.go /tmp/busy.out
python3 - <<'PY' &
import fcntl, os, glob, time
fd = os.open("/proc/spantrack/control", os.O_RDONLY)
fcntl.ioctl(fd, (0xB9 << 8) | 0x91)
b = os.open("/proc/spantrack/begin", os.O_WRONLY); e = os.open("/proc/spantrack/end", os.O_WRONLY)
relay = [os.open(f, os.O_RDONLY | os.O_NONBLOCK) for f in glob.glob("/sys/kernel/debug/spantrack/%d/cpu*" % os.getpid())]
line = b"0123456789abcdef0123456789abcdef 0123456789abcdef\n"
os.write(b, line)
open("/tmp/busy.ready", "w").close()
while not os.path.exists("/tmp/busy.go"):
    time.sleep(0.05)
res = []
for what, f in [("end", lambda: os.write(e, line)), ("begin", lambda: os.write(b, line)),
                ("relay", lambda: os.read(relay[0], 4096)), ("ioctl", lambda: fcntl.ioctl(fd, (0xB9 << 8) | 0x93))]:
    try:
        f(); res.append(what + ":ok")
    except OSError as x:
        res.append(what + ":" + (os.strerror(x.errno) if x.errno else "?"))
for f in relay + [fd, b, e]:
    os.close(f)
open("/tmp/busy.out", "w").write(" ".join(res))
PY
pid=$!
for i in $(seq 100); do [ -e /tmp/busy.ready ] && break; sleep 0.1; done
check "registered process ready with an open span and relay files open" [ -e /tmp/busy.ready ]
rmmod spantrack; rc=$?
check "rmmod succeeds while the process holds everything open (rc $rc)" [ "$rc" = 0 ]
touch /tmp/busy.go
wait "$pid"; prc=$?
check "the process survives the unload (exit $prc)" [ "$prc" = 0 ]
echo "# after unload: $(cat /tmp/busy.out 2>/dev/null)"
check "its later span writes fail with EIO" grep -q "end:Input/output error begin:Input/output error" /tmp/busy.out
insmod "$ko" && rmmod spantrack; rc=$?
check "the module loads and unloads again afterwards" [ "$rc" = 0 ]
finish
