#!/usr/bin/env bash
# Boots the spantrack guest kernel under QEMU (TCG) with the host's filesystem as a read-only
# root (so host-built binaries, the repository and python3 run in the guest as they are),
# runs one shell command in the guest from the repository's top directory, prints its
# output live, and exits with its exit status. The guest also gets a fresh 64 MiB ext2 disk,
# /dev/vda, for tests that need a real block device (not mounted): a slow one (4 MB/s and
# 500 I/O per second, QEMU's throttling), so that waiting for it dominates writing to it on
# any kernel.
#
# The run fails (exit 97) when the kernel log shows a WARN, BUG, oops, lockdep, KASAN,
# kmemleak or other kernel report, even if the command succeeded; 98 when the guest never
# finished (timeout, panic).
#
# Usage: scripts/vm-run.sh [--variant release|debug|release-7|debug-7|distro-7] [--icount] [--timeout SECONDS]
#                          [--smp N] [--mem MB] [--keep DIR] -- COMMAND...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

icount=0; timeout_s=600; smp=2; mem=2048; keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) VARIANT=$2; shift 2;;
    --icount) icount=1; shift;;
    --timeout) timeout_s=$2; shift 2;;
    --smp) smp=$2; shift 2;;
    --mem) mem=$2; shift 2;;
    --keep) keep=$2; shift 2;;
    --) shift; break;;
    *) die "vm-run.sh: unknown option '$1' (see the usage at the top of the script)";;
  esac
done
[ $# -gt 0 ] || die "vm-run.sh: no command given (usage: scripts/vm-run.sh [options] -- COMMAND...)"
export VARIANT
. "$here/lib.sh"   # again: checks --variant and sets the series' toolchain

kdir=$("$here/build-kernel.sh")
bz="$kdir/arch/x86/boot/bzImage"
[ -f "$bz" ] || die "no kernel image at $bz"

if [ -n "$keep" ]; then out=$keep; rm -rf "$out"; mkdir -p "$out"; else out=$(mktemp -d /tmp/spantrack-vm.XXXXXX); fi
cleanup() { [ -n "$keep" ] || rm -rf "$out"; }
trap cleanup EXIT
printf '%s\n' "$*" > "$out/cmd"
printf '%s\n' "$root" > "$out/cwd"
# Host directories the guest must see even below /tmp (where it mounts a tmpfs).
printf '%s\n' "$root" "$SPANTRACK_CACHE" "${CARGO_TARGET_DIR:-$root/target}" | sort -u > "$out/host-paths"

extra=()
[ "$icount" = 1 ] && extra+=(-icount shift=0)
truncate -s 64M "$out/disk.img"
mkfs.ext2 -q -F "$out/disk.img" >/dev/null 2>&1 || die "mkfs.ext2 failed (e2fsprogs; scripts/setup.sh installs it)"

# tsc=reliable: under host load the clocksource watchdog can find the emulated TSC skewed
# against the HPET and demote it; the clock then has no vDSO and every clock read becomes a
# clock_gettime system call inside the tests' spans. Real hardware keeps its TSC.
set +e
timeout -k 5 "$timeout_s" qemu-system-x86_64 \
  -machine q35 -cpu qemu64 -m "$mem" -smp "$smp" \
  -display none -monitor none -no-reboot \
  -kernel "$bz" \
  -append "console=ttyS0 root=hostroot rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose ro init=$here/guest-init.sh panic=-1 loglevel=4 tsc=reliable spantrack_out=/run/spout" \
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
  -fsdev local,id=spout,path="$out",security_model=none \
  -device virtio-9p-pci,fsdev=spout,mount_tag=spout \
  -device virtio-rng-pci \
  -drive file="$out/disk.img",if=virtio,format=raw,cache=unsafe,throttling.bps-total=4194304,throttling.iops-total=500 \
  -serial "file:$out/console.log" \
  -chardev stdio,id=gout,signal=off -serial chardev:gout \
  "${extra[@]}" </dev/null
qrc=$?
set -e

if [ ! -f "$out/rc" ]; then
  echo "spantrack: guest did not finish (qemu exit $qrc, timeout ${timeout_s}s); console:" >&2
  tail -n 60 "$out/console.log" >&2 || true
  exit 98
fi
rc=$(cat "$out/rc")

# Kernel reports that make a run fail, whatever the command said.
pattern='WARNING: |BUG: |Oops|general protection fault|KASAN:|UBSAN:|possible recursive locking|possible circular locking|inconsistent lock state|possible irq lock inversion|suspicious RCU usage|DEBUG_LOCKS_WARN_ON|lockdep is turned off|sleeping function called from invalid context|scheduling while atomic|unreferenced object|Kernel panic|detected stall|Call Trace:|panicked at|refcount_t: |list_add corruption|list_del corruption|ODEBUG: |kmemleak report'
if cat "$out/dmesg" "$out/console.log" 2>/dev/null | grep -E -q "$pattern"; then
  echo "spantrack: kernel log shows a report:" >&2
  cat "$out/dmesg" "$out/console.log" 2>/dev/null | grep -E -B2 -A25 "$pattern" | head -n 80 >&2
  exit 97
fi
exit "$rc"
