#!/usr/bin/env bash
# Installs everything spantrack's build, VM and tests need on a Debian 12 machine (as root).
# Idempotent: a second run checks and returns in about a second.
# Usage: scripts/setup.sh          (install what is missing)
#        scripts/setup.sh --check  (only report what is missing; exit 1 if anything is)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

# Debian packages: kernel source, the Debian rustc the kernel is built with (+ core sources),
# LLVM toolchain, kernel build tools, QEMU, and what the demo and tests use in the guest;
# chromium (headless) for the trace view's browser tests.
# The 7.x kernel series needs LLVM >= 17.0.1: Debian 12's clang-19 (+ lld, llvm, libclang
# for bindgen). Its source is not an apt package of Debian 12: scripts/kernel-source.sh
# downloads it (curl) from deb.debian.org the first time a 7.x kernel is built.
DEB_PACKAGES=(
  linux-source-6.12 rustc-web rust-web-src
  clang lld llvm libclang-dev
  clang-19 lld-19 llvm-19 libclang1-19 curl
  flex bison bc libelf-dev libssl-dev cpio kmod make xz-utils
  qemu-system-x86 python3 python3-venv python3-pip
  iproute2 procps util-linux strace busybox-static e2fsprogs
  chromium
)
BINDGEN_VERSION=0.73.2

missing_debs=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_debs+=("$p")
done

bindgen_ok=0
if command -v bindgen >/dev/null 2>&1 && bindgen --version 2>/dev/null | grep -q "bindgen $BINDGEN_VERSION"; then
  bindgen_ok=1
fi

if [ "$check_only" = 1 ]; then
  rc=0
  if [ ${#missing_debs[@]} -gt 0 ]; then
    echo "spantrack: missing Debian packages: ${missing_debs[*]} (fix: scripts/setup.sh as root)"; rc=1
  fi
  if [ "$bindgen_ok" = 0 ]; then
    echo "spantrack: missing bindgen $BINDGEN_VERSION (fix: scripts/setup.sh, or cargo install --locked bindgen-cli --version $BINDGEN_VERSION)"; rc=1
  fi
  venv="$SPANTRACK_CACHE/venv"
  if [ ! -x "$venv/bin/python" ]; then
    echo "spantrack: missing the Python venv $venv (fix: scripts/setup.sh, or scripts/python-env.sh)"; rc=1
  fi
  exit $rc
fi

if [ ${#missing_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    die "missing Debian packages: ${missing_debs[*]}; run scripts/setup.sh as root"
  fi
  stage "apt-get install ${missing_debs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || die "apt-get update failed"
  apt-get install -y -q --no-install-recommends "${missing_debs[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing_debs[*]}"
fi

if [ "$bindgen_ok" = 0 ]; then
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first, then rerun scripts/setup.sh"
  stage "cargo install bindgen-cli $BINDGEN_VERSION (the kernel's Rust build needs >= 0.65.1; Debian's is 0.60)"
  cargo install --locked --quiet bindgen-cli --version "$BINDGEN_VERSION" \
    || die "cargo install bindgen-cli $BINDGEN_VERSION failed"
fi

[ -f /usr/src/linux-source-6.12.tar.xz ] || die "/usr/src/linux-source-6.12.tar.xz missing after install (package linux-source-6.12)"
[ -x /usr/bin/rustc ] || die "/usr/bin/rustc missing (package rustc-web)"
[ -d /usr/lib/rustlib/src/rust/library ] || die "Rust core sources missing (package rust-web-src)"
# The Python venv of the demo and the Python tests (pinned OpenTelemetry SDK, oteltest).
"$here/python-env.sh" >/dev/null || die "python-env.sh failed"
exit 0
