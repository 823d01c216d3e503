#!/usr/bin/env bash
# Builds the Rust-enabled guest kernel for VARIANT into the cache (outside the repository).
# VARIANT=release|debug: Linux 6.12 (Debian's linux-source-6.12); release-7|debug-7: the 7.x
# series of lib.sh ($KSERIES_7, fetched by scripts/kernel-source.sh); distro-7: that source
# with Debian's own config (kconfig/distro-7.3.config: which one, and what we change). Keyed by series, kernel
# source version, config fragments (kconfig/base + flavour [+ series-<series>.config]) and
# rustc version. A second run with the same key returns at once. Prints the build directory.
# `build-kernel.sh --cached`: only says whether it is built (exit 0 and its directory, or 3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

# --cached: print the build directory and exit 0 if the kernel is built, else exit 3;
# builds and fetches nothing (a 7.x series whose source was never fetched is not cached).
if [ "${1:-}" = --cached ]; then
  if [ "$KSERIES" != 6.12 ] && [ ! -f "$SPANTRACK_CACHE/src/linux-source-$KSERIES.current" ]; then exit 3; fi
  kdir=$(kernel_dir 2>/dev/null) || exit 3
  [ -f "$kdir/.spantrack-built" ] || exit 3
  echo "$kdir"; exit 0
fi

"$here/setup.sh" --check >&2 || die "build prerequisites missing (run scripts/setup.sh)"

# The C compiler of the series must be there before anything is unpacked.
cc=clang; [ "$KLLVM" = 1 ] || cc=clang$KLLVM
command -v "$cc" >/dev/null 2>&1 || die "Linux $KSERIES needs $cc (LLVM >= 17.0.1 for 7.x; Debian 12: apt-get install clang-19 lld-19 llvm-19 libclang1-19, which scripts/setup.sh does)"
[ -d "$LIBCLANG_PATH" ] || die "bindgen needs libclang in $LIBCLANG_PATH (package libclang1-$KLLVM_VER)"

kdir=$(kernel_dir) || die "cannot find the kernel source of series $KSERIES"
if [ -f "$kdir/.spantrack-built" ]; then
  echo "$kdir"; exit 0
fi

mkdir -p "$SPANTRACK_CACHE"
exec 9>"$SPANTRACK_CACHE/.lock-$KSERIES-$KFLAVOUR"
flock 9
if [ -f "$kdir/.spantrack-built" ]; then echo "$kdir"; exit 0; fi

t0=$(now)
read -r srcver tarball < <(kernel_source)
stage "building kernel $KSERIES ($VARIANT, source $srcver) into $kdir (first run only; 20-40 min on 2 busy cores)"
# Built in place: a kernel tree records absolute paths. The marker file is written last.
rm -rf "$kdir"
mkdir -p "$kdir"
tar -C "$kdir" --strip-components=1 -xf "$tarball"
stage "unpacked source in $(elapsed "$t0")"
cd "$kdir"

make -s "${KMAKE_FLAGS[@]}" rustavailable >&2 || die "Linux $KSERIES says Rust is not available with $KRUSTC, $(command -v bindgen) and $cc (see its message above; minimum versions: scripts/min-tool-version.sh in $kdir)"
if [ "$KFLAVOUR" = distro ]; then
  # Debian's own config (kconfig/distro-<series>.config says which flavour and what changes).
  dflav=$(sed -n 's/^# debian-config: *//p' "$(kconfig_fragments)")
  read -r _ dcfg < <("$here/kernel-source.sh" --config "$KSERIES" "$dflav") || die "no Debian config"
  cp "$dcfg" .config
  make -s "${KMAKE_FLAGS[@]}" olddefconfig >&2
  make -s "${KMAKE_FLAGS[@]}" mod2noconfig >&2
  # shellcheck disable=SC2046
  scripts/kconfig/merge_config.sh -m .config $(kconfig_fragments) >&2
  make -s "${KMAKE_FLAGS[@]}" olddefconfig >&2
  stage "config: Debian's $dflav config $(basename "$dcfg"), $(grep -c '=y$' .config) options =y, $(grep -c '=m$' .config) =m"
else
  make -s "${KMAKE_FLAGS[@]}" tinyconfig >&2
  # shellcheck disable=SC2046
  scripts/kconfig/merge_config.sh -m .config $(kconfig_fragments) >&2
  make -s "${KMAKE_FLAGS[@]}" olddefconfig >&2
fi

# Every option the fragments ask for must have survived the dependency resolution.
# Options a series fragment lists in a "# spantrack-drop:" line do not exist in that series.
# shellcheck disable=SC2046
dropped=" $(cat $(kconfig_fragments) | sed -n 's/^# spantrack-drop://p' | tr '\n' ' ') "
bad=0
while IFS= read -r line; do
  opt=${line#\# }; opt=${opt%%[= ]*}
  case "$dropped" in *" $opt "*) continue;; esac
  case "$line" in
    CONFIG_*=*) grep -qx -- "$line" .config || { echo "spantrack: config wanted '$line', got '$(grep -- "^${line%%=*}[= ]" .config || echo unset)'" >&2; bad=1; } ;;
    "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}; grep -q "^$opt=" .config && { echo "spantrack: config wanted $opt off" >&2; bad=1; } ;;
  esac
done < <(cat $(kconfig_fragments))
[ "$bad" = 0 ] || die "kernel config fragment not satisfied (see above)"

t1=$(now)
jobs=$(( $(nproc) + 1 ))
make -s -j"$jobs" "${KMAKE_FLAGS[@]}" bzImage modules >&2 || die "kernel build failed"
stage "kernel ($VARIANT) built in $(elapsed "$t1")"

touch "$kdir/.spantrack-built"
stage "kernel ($VARIANT) ready in $(elapsed "$t0")"
echo "$kdir"
