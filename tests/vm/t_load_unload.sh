#!/bin/bash
# insmod/rmmod spantrack.ko 20 times: every entry appears on load and vanishes on unload,
# one log line per load, nothing else in the kernel log.
. "$(dirname "$0")/lib.sh"
ko=$1
entries=(/proc/spantrack /proc/spantrack/control /proc/spantrack/begin /proc/spantrack/end /proc/spantrack/stats
         /sys/kernel/spantrack /sys/kernel/spantrack/threshold_ns /sys/kernel/spantrack/timeout_ns
         /sys/kernel/spantrack/max_calls /sys/kernel/spantrack/filter
         /sys/kernel/debug/spantrack)
mark=$(dmesg_mark)
good=0
for i in $(seq 20); do
  insmod "$ko" || { nok "insmod #$i"; break; }
  missing=""; for e in "${entries[@]}"; do [ -e "$e" ] || missing+=" $e"; done
  [ -z "$missing" ] || { nok "entries present after insmod #$i:$missing"; rmmod spantrack; break; }
  [ "$i" = 1 ] && check "counters in /proc/spantrack/stats as 'name value' lines, not in sysfs (one value per file)" \
    bash -c '[ ! -e /sys/kernel/spantrack/stats ] && grep -Eq "^records_written [0-9]+$" /proc/spantrack/stats && ! grep -Evq "^[a-z_]+ [0-9]+$" /proc/spantrack/stats'
  rmmod spantrack || { nok "rmmod #$i"; break; }
  left=""; for e in "${entries[@]}"; do [ -e "$e" ] && left+=" $e"; done
  [ -z "$left" ] || { nok "entries gone after rmmod #$i:$left"; break; }
  good=$((good+1))
done
check "20 insmod/rmmod cycles with entries appearing and vanishing ($good done)" [ "$good" = 20 ]
loads=$(dmesg_since "$mark" | grep -c 'spantrack: loaded')
check "one 'loaded' log line per load ($loads)" [ "$loads" = 20 ]
others=$(dmesg_since "$mark" | grep -v 'spantrack: loaded' | grep -v 'spantrack: unloaded' | grep -v 'loading out-of-tree module taints kernel' | grep -v 'module verification failed: signature and/or required key missing' | grep -ci 'spantrack')
check "no other spantrack log lines ($others)" [ "$others" = 0 ]
finish
