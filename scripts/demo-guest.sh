#!/bin/bash
# The demo's guest side (run by scripts/demo.sh inside the VM).
set -e
ko=$1
echo "== guest kernel: $(uname -r), $(nproc) CPUs"
echo "== insmod spantrack.ko"
insmod "$ko"
dmesg | grep 'spantrack:' | tail -n 1
echo "== /proc/spantrack:"; ls -l /proc/spantrack
echo "== /sys/kernel/spantrack:"
for f in /sys/kernel/spantrack/*; do
  [ "$(basename "$f")" = stats ] && continue
  printf '  %-12s %s\n' "$(basename "$f")" "$(cat "$f")"
done
if [ -x target/release/spantrack-demo ]; then
  echo "== a registered program with nested spans (threshold 1 ms):"
  target/release/spantrack-demo
fi
echo "== /sys/kernel/spantrack/stats:"; sed 's/^/  /' /sys/kernel/spantrack/stats
echo "== rmmod spantrack"
rmmod spantrack
dmesg | grep 'spantrack:' | tail -n 1
