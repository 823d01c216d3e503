#!/bin/bash
# Issue 15: the README's "Installing on a host", followed inside the test VM as a new user
# would, against the running guest kernel. Not part of make test (it builds the module and
# the library under emulation: minutes). Run it with
#   scripts/vm-run.sh --variant release|release-7|distro-7 --timeout 2400 -- tests/vm/install_walkthrough.sh
# What the VM makes different from a host, and how this script stands in for it:
#  - the root filesystem is the host's, read-only, and has no /lib/modules (the VM cannot
#    create it): the guest kernel's build tree is given as KDIR=<tree> (README: "KDIR=<build
#    tree>"), and the module is installed with DESTDIR=/run/root, then `depmod -b /run/root`
#    and `modprobe -d /run/root spantrack` (on a host: /lib/modules/$(uname -r)/build, no
#    DESTDIR, plain modprobe);
#  - the repository is read-only: it is cloned into /tmp ("from a clone of this repository");
#  - for the same reason the library and the command go there too (DESTDIR=/run/root, the
#    default PREFIX=/usr/local), and are run from there;
#  - cargo's home (~/.cargo) is read-only: its registry is copied to a tmpfs CARGO_HOME
#    (offline: the VM has no network).
# Prints "ok - ..." / "not ok - ..." and a summary; the output of each step is kept.
. "$(dirname "$0")/lib.sh"
repo=$(cd "$(dirname "$0")/../.." && pwd)
rel=$(uname -r)
step() { echo "# \$ $*"; }
t0=$(date +%s)
# The running kernel's tree: same release, and the build stamp /proc/version shows (the
# release and debug 6.12 kernels have the same release string).
kdir=${KDIR:-$(ls -d "$HOME"/.cache/spantrack/kernel-* 2>/dev/null | while read -r d; do
  [ "$(cat "$d/include/config/kernel.release" 2>/dev/null)" = "$rel" ] && [ -f "$d/.spantrack-built" ] || continue
  uts=$(sed -n 's/^#define UTS_VERSION "\(.*\)"/\1/p' "$d/include/generated/utsversion.h" 2>/dev/null)
  [ -n "$uts" ] && grep -qF "$uts" /proc/version && echo "$d"; done | head -n1)}
[ -n "$kdir" ] || { nok "the build tree of the running kernel $rel is in the cache"; finish; exit; }
ok "running Linux $rel; its build tree: $kdir"

dest=/run/root
P=$dest/usr/local

clone=/tmp/spantrack
step git clone "$repo" "$clone"
git -c safe.directory='*' clone -q "$repo" "$clone" || { nok "git clone"; finish; exit; }
cd "$clone" || exit 1
echo "# clone at $(git log --oneline -1)"

# 1. Before the build tree is in place: the check must say exactly that.
step make install-check
out=$(make install-check 2>&1); rc=$?; sed 's/^/#   /' <<<"$out"
if [ "$rc" != 0 ] && grep -q 'MISSING  \[no-build-tree\]' <<<"$out"; then
  ok "install-check without /lib/modules/$rel/build: exit 1, MISSING [no-build-tree]"
else nok "install-check without /lib/modules/$rel/build: exit 1, MISSING [no-build-tree] (exit $rc)"; fi

step make install-check KDIR="$kdir"
out=$(make install-check KDIR="$kdir" 2>&1); rc=$?; sed 's/^/#   /' <<<"$out"
check "install-check with the running kernel's build tree: exit 0" [ "$rc" = 0 ]

# 2. make install: the module, then the library and the command.
mkdir -p /tmp/cargo-home
cp -a "$HOME/.cargo/registry" /tmp/cargo-home/ 2>/dev/null
# rustup's cargo, on PATH as `. ~/.cargo/env` puts it (the VM's init does not).
export PATH=$HOME/.cargo/bin:$PATH CARGO_HOME=/tmp/cargo-home CARGO_NET_OFFLINE=true
step make install KDIR="$kdir" DESTDIR=$dest "# (CARGO_HOME=$CARGO_HOME: a copy of ~/.cargo/registry)"
t1=$(date +%s)
out=$(make install KDIR="$kdir" DESTDIR=$dest 2>&1); rc=$?; sed 's/^/#   /' <<<"$out"
check "make install: exit 0 ($(( $(date +%s) - t1 )) s in the VM)" [ "$rc" = 0 ]
check "spantrack.ko installed in $dest/lib/modules/$rel/extra" [ -f "$dest/lib/modules/$rel/extra/spantrack.ko" ]

step "depmod -b $dest -a $rel; modprobe -d $dest spantrack"
depmod -b $dest -a "$rel" 2>&1 | sed 's/^/#   /'
modprobe -d $dest spantrack 2>&1 | sed 's/^/#   /'
if [ -d /sys/module/spantrack ] && [ -e /proc/spantrack/control ]; then ok "modprobe spantrack: loaded"
else nok "modprobe spantrack: loaded"; fi

if [ -x "$P/lib/spantrack/libspanhook.so" ] && [ -x "$P/bin/spantrack" ] && [ -f "$P/include/spanhook.h" ]; then
  ok "libspanhook.so, the spantrack command and spanhook.h installed under $P"
else nok "libspanhook.so, the spantrack command and spanhook.h installed under $P"; fi

# 3. Run something: the README's LD_PRELOAD line on the Rust demo service's self-test (its
# slow spans must carry exactly their system calls), and the installed command.
echo 2000000 > /sys/kernel/spantrack/threshold_ns
svc=$repo/target/release/spantrack-rust-demo-svc
step LD_PRELOAD="$P/lib/spantrack/libspanhook.so" "$svc" --selftest active
out=$(LD_PRELOAD="$P/lib/spantrack/libspanhook.so" "$svc" --selftest active 2>&1); rc=$?
sed 's/^/#   /' <<<"$out" | tail -n 12
name="preloaded self-test with the installed library: exit $rc, $(grep -c '^ok - ' <<<"$out") ok, $(grep -c '^not ok - ' <<<"$out") not ok"
if [ "$rc" = 0 ] && ! grep -q '^not ok - ' <<<"$out"; then ok "$name"; else nok "$name"; fi
step "$P/bin/spantrack status"
out=$("$P/bin/spantrack" status 2>&1); rc=$?; sed 's/^/#   /' <<<"$out" | head -n 20
check "installed spantrack status: exit 0, module loaded" [ "$rc" = 0 ]
step "modprobe -d $dest -r spantrack"
modprobe -d $dest -r spantrack
check "modprobe -r spantrack: unloaded" [ ! -d /sys/module/spantrack ]
step make uninstall KDIR="$kdir" DESTDIR=$dest
make uninstall KDIR="$kdir" DESTDIR=$dest >/dev/null 2>&1
if [ ! -e "$dest/lib/modules/$rel/extra/spantrack.ko" ] && [ ! -e "$P/bin/spantrack" ] && [ ! -e "$P/lib/spantrack" ]; then
  ok "make uninstall removes the module and the files"
else nok "make uninstall removes the module and the files"; fi
echo "# walkthrough on Linux $rel: $(( $(date +%s) - t0 )) s"
finish
