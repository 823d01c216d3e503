#!/bin/bash
# PID 1 of the spantrack test VM (see vm-run.sh). The root is the host's filesystem,
# read-only over 9p; writable places are tmpfs. Runs the command from the output share,
# writes its exit status and the kernel log there, then powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug
# kmemleak scans on its own every 10 minutes: a kthread that holds a vCPU of the emulated
# debug kernel for seconds (it delayed a timed spin by 80 ms, and its scans met RCU stall
# warnings on a loaded host). Leaks are still found: two scans run after the command.
[ -w /sys/kernel/debug/kmemleak ] && echo scan=off > /sys/kernel/debug/kmemleak
out=/run/spout
mkdir -p "$out"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 spout "$out"
# /tmp and /var/tmp become writable tmpfs; host directories below them that the run needs
# (a repository cloned into /tmp, a cache there) are bound back at the same paths.
i=0
while IFS= read -r keep; do
  case "$keep" in /tmp/*|/var/tmp/*) ;; *) continue;; esac
  [ -d "$keep" ] || continue
  mkdir -p "/run/keep/$i"; mount --bind "$keep" "/run/keep/$i"; i=$((i+1))
done < "$out/host-paths"
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
i=0
while IFS= read -r keep; do
  case "$keep" in /tmp/*|/var/tmp/*) ;; *) continue;; esac
  [ -d "/run/keep/$i" ] || continue
  mkdir -p "$keep"; mount --move "/run/keep/$i" "$keep"; i=$((i+1))
done < "$out/host-paths"
ip link set lo up 2>/dev/null
hostname spantrack-vm 2>/dev/null
stty -F /dev/ttyS1 raw -echo 2>/dev/null

cd "$(cat "$out/cwd")"
export SPANTRACK_IN_VM=1
bash -c "$(cat "$out/cmd")" </dev/null >/dev/ttyS1 2>&1
echo $? > "$out/rc.tmp"

# A kmemleak scan, when the kernel has it: leaks count as kernel reports.
if [ -w /sys/kernel/debug/kmemleak ]; then
  echo scan > /sys/kernel/debug/kmemleak; echo scan > /sys/kernel/debug/kmemleak
  cat /sys/kernel/debug/kmemleak > "$out/kmemleak" 2>/dev/null
  if [ -s "$out/kmemleak" ]; then
    echo "kmemleak report:" > /dev/kmsg; head -c 3000 "$out/kmemleak" > /dev/kmsg
  fi
fi
dmesg > "$out/dmesg"
mv "$out/rc.tmp" "$out/rc"
sync
busybox poweroff -f
