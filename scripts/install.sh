#!/usr/bin/env bash
# `make install` / `make uninstall`: spantrack on a real host.
#   scripts/install.sh module     spantrack.ko built against KDIR (default: the running kernel's
#                                 build tree) after scripts/check-host.sh, installed as
#                                 $DESTDIR/lib/modules/<release>/extra/spantrack.ko, then depmod
#   scripts/install.sh user       libspanhook.so, its Python hook, the spantrack command and
#                                 spanhook.h under $DESTDIR$PREFIX (default /usr/local)
#   scripts/install.sh uninstall  removes what the two above installed
# Layout under $PREFIX: lib/spantrack/ holds libspanhook.so, python -> preload/python (the
# hook the library puts on PYTHONPATH), scripts/spantrack, cli/, view/ (the command finds its
# parts relative to itself); bin/spantrack links to it; include/spanhook.h.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
die() { echo "spantrack install: error: $*" >&2; exit 1; }
stage() { echo "==> $*" >&2; }

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
KDIR=${KDIR:-/lib/modules/$(uname -r)/build}
lib="$DESTDIR$PREFIX/lib/spantrack"

install_module() {
  local flags release out
  flags=$("$here/check-host.sh" --kdir "$KDIR" ${RUSTC:+--rustc "$RUSTC"} --make-flags) \
    || die "the host cannot build spantrack.ko yet: see what check-host.sh says above"
  release=$(cat "$KDIR/include/config/kernel.release")
  out="$root/build/host-$release"
  stage "building spantrack.ko for Linux $release in $out (make -C $KDIR $flags)"
  # The module's sources, mirrored as scripts/build-module.sh does (objects stay out of the tree).
  mkdir -p "$out/rust_module/logic" "$out/uapi/src"
  cp -u "$root/Kbuild" "$out/Kbuild"
  cp -u "$root"/rust_module/*.rs "$root"/rust_module/*.c "$root"/rust_module/*.h "$out/rust_module/"
  cp -u "$root"/rust_module/logic/*.rs "$out/rust_module/logic/" 2>/dev/null || true
  cp -u "$root/uapi/src/lib.rs" "$out/uapi/src/lib.rs"
  # shellcheck disable=SC2086
  make -s -C "$KDIR" M="$out" $flags modules || die "module build failed"
  install -D -m 644 "$out/spantrack.ko" "$DESTDIR/lib/modules/$release/extra/spantrack.ko"
  stage "installed $DESTDIR/lib/modules/$release/extra/spantrack.ko"
  if [ -z "$DESTDIR" ] && command -v depmod >/dev/null 2>&1; then
    depmod -a "$release" || die "depmod -a $release failed"
    stage "load it with: modprobe spantrack"
  fi
  if [ "$(cat /sys/module/module/parameters/sig_enforce 2>/dev/null)" = Y ]; then
    stage "this kernel enforces module signatures: sign the module first ($KDIR/scripts/sign-file)"
  fi
}

install_user() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup or your distribution's cargo)"
  stage "building libspanhook.so (cargo build --release -p spanhook)"
  (cd "$root" && cargo build --release -p spanhook --quiet) || die "cargo build failed"
  local so="$root/target/release/libspanhook.so"
  [ -f "$so" ] || die "$so missing after the build"
  install -D -m 755 "$so" "$lib/libspanhook.so"
  mkdir -p "$lib/preload/python/spantrack_hook" "$lib/cli/spantrack_cli" "$lib/view/spantrack_view" "$lib/scripts"
  install -m 644 "$root/preload/python/sitecustomize.py" "$lib/preload/python/"
  install -m 644 "$root"/preload/python/spantrack_hook/*.py "$lib/preload/python/spantrack_hook/"
  ln -sfn preload/python "$lib/python"
  install -m 644 "$root"/cli/spantrack_cli/*.py "$lib/cli/spantrack_cli/"
  install -m 644 "$root"/view/spantrack_view/*.py "$root"/view/spantrack_view/*.html "$lib/view/spantrack_view/"
  install -m 755 "$root/scripts/spantrack" "$lib/scripts/spantrack"
  mkdir -p "$DESTDIR$PREFIX/bin"
  ln -sfn ../lib/spantrack/scripts/spantrack "$DESTDIR$PREFIX/bin/spantrack"
  install -D -m 644 "$root/preload/include/spanhook.h" "$DESTDIR$PREFIX/include/spanhook.h"
  stage "installed $lib (libspanhook.so, Python hook, spantrack command), $DESTDIR$PREFIX/bin/spantrack, $DESTDIR$PREFIX/include/spanhook.h"
  stage "use: LD_PRELOAD=$PREFIX/lib/spantrack/libspanhook.so <service>; spantrack status"
}

uninstall() {
  rm -rf "$lib"
  rm -f "$DESTDIR$PREFIX/bin/spantrack" "$DESTDIR$PREFIX/include/spanhook.h"
  local release; release=$(cat "$KDIR/include/config/kernel.release" 2>/dev/null || uname -r)
  rm -f "$DESTDIR/lib/modules/$release/extra/spantrack.ko"
  if [ -z "$DESTDIR" ] && command -v depmod >/dev/null 2>&1; then depmod -a "$release" || true; fi
  stage "removed spantrack from $DESTDIR$PREFIX and /lib/modules/$release/extra"
}

case "${1:-}" in
  module) install_module;;
  user) install_user;;
  uninstall) uninstall;;
  *) die "usage: scripts/install.sh module|user|uninstall";;
esac
