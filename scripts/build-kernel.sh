#!/usr/bin/env bash
# Builds the Rust-enabled Linux 6.12 guest kernel for VARIANT=release|debug into the cache
# (outside the repository), keyed by kernel source version, config fragments and rustc version.
# A second run with the same key returns at once. Prints the kernel build directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

"$here/setup.sh" --check >&2 || die "build prerequisites missing (run scripts/setup.sh)"

kdir=$(kernel_dir)
if [ -f "$kdir/.spantrack-built" ]; then
  echo "$kdir"; exit 0
fi

mkdir -p "$SPANTRACK_CACHE"
exec 9>"$SPANTRACK_CACHE/.lock-$VARIANT"
flock 9
if [ -f "$kdir/.spantrack-built" ]; then echo "$kdir"; exit 0; fi

t0=$(now)
stage "building kernel ($VARIANT) into $kdir (first run only; ~6-15 min on 2 cores)"
# Built in place: a kernel tree records absolute paths. The marker file is written last.
rm -rf "$kdir"
mkdir -p "$kdir"
tar -C "$kdir" --strip-components=1 -xf /usr/src/linux-source-6.12.tar.xz
stage "unpacked source in $(elapsed "$t0")"
cd "$kdir"

make -s "${KMAKE_FLAGS[@]}" rustavailable >&2 || die "the kernel says Rust is not available with $KRUSTC and $(command -v bindgen)"
make -s "${KMAKE_FLAGS[@]}" tinyconfig >&2
scripts/kconfig/merge_config.sh -m .config "$root/kconfig/base.config" "$root/kconfig/$VARIANT.config" >&2
make -s "${KMAKE_FLAGS[@]}" olddefconfig >&2

# Every option the fragments ask for must have survived the dependency resolution.
bad=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qx -- "$line" .config || { echo "spantrack: config wanted '$line', got '$(grep -- "^${line%%=*}[= ]" .config || echo unset)'" >&2; bad=1; } ;;
    "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}; grep -q "^$opt=" .config && { echo "spantrack: config wanted $opt off" >&2; bad=1; } ;;
  esac
done < <(cat "$root/kconfig/base.config" "$root/kconfig/$VARIANT.config")
[ "$bad" = 0 ] || die "kernel config fragment not satisfied (see above)"

t1=$(now)
jobs=$(( $(nproc) + 1 ))
make -s -j"$jobs" "${KMAKE_FLAGS[@]}" bzImage modules >&2 || die "kernel build failed"
stage "kernel ($VARIANT) built in $(elapsed "$t1")"

touch "$kdir/.spantrack-built"
stage "kernel ($VARIANT) ready in $(elapsed "$t0")"
echo "$kdir"
