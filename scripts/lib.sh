# Shared shell helpers for spantrack's scripts (sourced, not run).

die() { echo "spantrack: error: $*" >&2; exit 1; }
stage() { echo "==> $*" >&2; }

# Where built kernels and other large artefacts live: outside the repository, reused across clones.
SPANTRACK_CACHE=${SPANTRACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spantrack}
# Kernel variant: <flavour>[-<series>]. Flavour: release, or debug (lockdep, KASAN, kmemleak,
# ...), or distro (Debian's own kernel config, kconfig/distro-<series>.config; 7.x only).
# Series: none = 6.12 (Debian's linux-source-6.12), "7" = the 7.x series below.
VARIANT=${VARIANT:-release}
# The 7.x series: the newest linux-source-7.* Debian serves (scripts/kernel-source.sh fetches
# it from deb.debian.org, newest version of the series across suites).
KSERIES_7=7.3
case "$VARIANT" in
  release|debug) KFLAVOUR=$VARIANT; KSERIES=6.12;;
  release-7|debug-7|distro-7) KFLAVOUR=${VARIANT%-7}; KSERIES=$KSERIES_7;;
  *) die "VARIANT must be release, debug, release-7, debug-7 or distro-7, not '$VARIANT'";;
esac

# The Debian rustc (1.96, sysroot /usr, has core sources) builds the kernel and the module;
# rustup's rustc (first on PATH) has no rust-src and is kept for ordinary cargo builds.
# C compiler per series: 6.12 uses Debian 12's default clang 14; 7.x needs LLVM >= 17.0.1
# and uses Debian 12's clang-19 (LLVM=-19). bindgen loads the libclang of the same LLVM.
KRUSTC=/usr/bin/rustc
case "$KSERIES" in
  6.12) KLLVM=1; KLLVM_VER=14;;
  *) KLLVM=-19; KLLVM_VER=19;;
esac
export LIBCLANG_PATH=/usr/lib/llvm-$KLLVM_VER/lib
KMAKE_FLAGS=(LLVM=$KLLVM "RUSTC=$KRUSTC" "BINDGEN=$(command -v bindgen 2>/dev/null || echo bindgen)")

# The kconfig fragments of $VARIANT, in merge order: base, flavour, then the series' own
# additions if any (series-<series>.config, series-<series>-<flavour>.config).
# The distro flavour has one fragment, applied over Debian's own config (build-kernel.sh).
kconfig_fragments() {
  local root f; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ "$KFLAVOUR" = distro ]; then echo "$root/kconfig/distro-$KSERIES.config"; return 0; fi
  echo "$root/kconfig/base.config" "$root/kconfig/$KFLAVOUR.config"
  [ "$KSERIES" != 6.12 ] || return 0
  for f in "series-$KSERIES" "series-$KSERIES-$KFLAVOUR"; do
    [ ! -f "$root/kconfig/$f.config" ] || echo "$root/kconfig/$f.config"
  done
}

# Prints "<debian version> <tarball>" of the kernel source of $KSERIES (fetches 7.x once).
kernel_source() {
  "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kernel-source.sh" "$KSERIES"
}

# Prints the directory of the built kernel for $VARIANT (computes the cache key: series,
# source package version, rustc, fragments; for 7.x also the C compiler).
kernel_dir() {
  local srcver cfg rustv key
  rustv=$("$KRUSTC" --version 2>/dev/null || echo none)
  # shellcheck disable=SC2046
  cfg=$(cat $(kconfig_fragments) | sha256sum | cut -c1-12)
  if [ "$KSERIES" = 6.12 ]; then
    # Unchanged from the single-series key, so that cached 6.12 kernels stay valid.
    srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo unknown)
    key=$(printf '%s|%s|%s' "$srcver" "$rustv" "$cfg" | sha256sum | cut -c1-12)
  else
    srcver=$(kernel_source | cut -d' ' -f1) || return 1
    key=$(printf '%s|%s|%s|%s|%s' "$KSERIES" "$srcver" "$rustv" "$cfg" "$KLLVM" | sha256sum | cut -c1-12)
  fi
  echo "$SPANTRACK_CACHE/kernel-$KSERIES-$KFLAVOUR-$key"
}

# Timer for stage figures: `t0=$(now)`; `elapsed $t0`.
now() { date +%s; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }
