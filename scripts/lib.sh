# Shared shell helpers for spantrack's scripts (sourced, not run).

die() { echo "spantrack: error: $*" >&2; exit 1; }
stage() { echo "==> $*" >&2; }

# Where built kernels and other large artefacts live: outside the repository, reused across clones.
SPANTRACK_CACHE=${SPANTRACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spantrack}
# Kernel variant: release or debug (lockdep, KASAN, kmemleak, ...).
VARIANT=${VARIANT:-release}
case "$VARIANT" in release|debug) ;; *) die "VARIANT must be release or debug, not '$VARIANT'";; esac

# The Debian rustc (1.96, sysroot /usr, has core sources) builds the kernel and the module;
# rustup's rustc (first on PATH) has no rust-src and is kept for ordinary cargo builds.
KRUSTC=/usr/bin/rustc
KMAKE_FLAGS=(LLVM=1 "RUSTC=$KRUSTC" "BINDGEN=$(command -v bindgen 2>/dev/null || echo bindgen)")

# Prints the directory of the built kernel for $VARIANT (computes the cache key).
kernel_dir() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local srcver cfg rustv key
  srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo unknown)
  rustv=$("$KRUSTC" --version 2>/dev/null || echo none)
  cfg=$(cat "$root/kconfig/base.config" "$root/kconfig/$VARIANT.config" | sha256sum | cut -c1-12)
  key=$(printf '%s|%s|%s' "$srcver" "$rustv" "$cfg" | sha256sum | cut -c1-12)
  echo "$SPANTRACK_CACHE/kernel-6.12-$VARIANT-$key"
}

# Timer for stage figures: `t0=$(now)`; `elapsed $t0`.
now() { date +%s; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }
