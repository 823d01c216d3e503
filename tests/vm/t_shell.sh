#!/bin/bash
# What a person at a shell sees: writes from an unregistered shell are refused with the
# documented errors, bad sysfs values are refused and change nothing, unknown ioctls fail.
. "$(dirname "$0")/lib.sh"
ko=$1
insmod "$ko" || { nok "insmod"; finish; exit; }
line="0123456789abcdef0123456789abcdef 0123456789abcdef"
err=$( (echo "$line" > /proc/spantrack/begin) 2>&1 )
check "echo into begin from an unregistered shell: EPERM ($err)" grep -q "Operation not permitted" <<<"$err"
err=$( (echo "$line" > /proc/spantrack/end) 2>&1 )
check "echo into end from an unregistered shell: EPERM ($err)" grep -q "Operation not permitted" <<<"$err"
err=$( (echo "not a span" > /proc/spantrack/begin) 2>&1 )
check "malformed line from a shell: EINVAL or EPERM ($err)" grep -Eq "Invalid argument|Operation not permitted" <<<"$err"
old=$(cat /sys/kernel/spantrack/threshold_ns)
err=$( (echo -5 > /sys/kernel/spantrack/threshold_ns) 2>&1 )
check "threshold_ns=-5 refused ($err)" grep -q "Invalid argument" <<<"$err"
check "threshold_ns unchanged" [ "$(cat /sys/kernel/spantrack/threshold_ns)" = "$old" ]
echo 2500000 > /sys/kernel/spantrack/threshold_ns
check "threshold_ns set live" [ "$(cat /sys/kernel/spantrack/threshold_ns)" = 2500000 ]
echo "$old" > /sys/kernel/spantrack/threshold_ns
out=$(python3 - <<'PY'
import fcntl, os, errno
fd = os.open("/proc/spantrack/control", os.O_RDONLY)
res = []
for cmd in [0, 0xB990, 0xB9FF, 0x12345678, (0xB9 << 8) | 0x93, (0xB9 << 8) | 0x92]:
    try:
        fcntl.ioctl(fd, cmd)
        res.append("ok")
    except OSError as e:
        res.append(errno.errorcode[e.errno])
print(" ".join(res))
PY
)
check "unknown ioctls ENOTTY; UNREGISTER/UNREGISTER_THREAD unregistered ENOENT ($out)" [ "$out" = "ENOTTY ENOTTY ENOTTY ENOTTY ENOENT ENOENT" ]
stats=$(cat /proc/spantrack/stats)
check "stats show no tracked process after all that" grep -Eq "^processes 0$" <<<"$stats"
rmmod spantrack || nok "rmmod"
finish
