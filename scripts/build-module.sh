#!/usr/bin/env bash
# Builds spantrack.ko out of tree against the cached guest kernel for VARIANT, into
# build/<variant>/spantrack.ko (the source tree is copied there so that release and debug
# objects never mix). Prints the path of the .ko.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

kdir=$("$here/build-kernel.sh")
out="$root/build/$VARIANT"
mkdir -p "$out"
# Mirror the module's sources (only changed files are copied, so make stays incremental).
cp -u "$root/Kbuild" "$out/Kbuild"
mkdir -p "$out/rust_module/logic" "$out/uapi/src"
cp -u "$root"/rust_module/*.rs "$root"/rust_module/*.c "$root"/rust_module/*.h "$out/rust_module/"
cp -u "$root"/rust_module/logic/*.rs "$out/rust_module/logic/" 2>/dev/null || true
cp -u "$root/uapi/src/lib.rs" "$out/uapi/src/lib.rs"
t0=$(now)
make -s -C "$kdir" M="$out" "${KMAKE_FLAGS[@]}" modules >&2 || die "module build failed ($VARIANT)"
stage "spantrack.ko ($VARIANT) built in $(elapsed "$t0")"
echo "$out/spantrack.ko"
