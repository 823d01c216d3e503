#!/usr/bin/env bash
# Can spantrack.ko be built against this host's kernel, and loaded into it? Checks the kernel
# build tree (default: the running kernel's, /lib/modules/$(uname -r)/build) and the tools,
# and says what is missing and what to do about each. `make install` runs it first.
#
# Usage: scripts/check-host.sh [--kdir DIR] [--rustc PATH] [--make-flags]
#   --kdir DIR     the kernel build tree (also $KDIR); without it, the running kernel's
#   --rustc PATH   the rustc to use (also $RUSTC); without it, the first one found (each on
#                  PATH, /usr/bin, /usr/lib/rust-*/bin, rustup toolchains) whose version is
#                  the kernel's
#   --make-flags   on success print, on stdout, the make variables the module build needs
#                  (LLVM=..., RUSTC=...); the report goes to stderr either way
# Exit status: 0 nothing missing, 1 something missing (each problem is one line
# "MISSING [key] ..." followed by what to do), 2 bad usage.
set -uo pipefail

kdir=${KDIR:-}
rustc_arg=${RUSTC:-}
want_flags=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kdir) kdir=${2:-}; shift 2 || exit 2;;
    --rustc) rustc_arg=${2:-}; shift 2 || exit 2;;
    --make-flags) want_flags=1; shift;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "check-host: unknown argument '$1' (see --help)" >&2; exit 2;;
  esac
done
running=0
if [ -z "$kdir" ]; then
  kdir=/lib/modules/$(uname -r)/build
  running=1
fi

problems=()
say() { echo "$*" >&2; }
ok() { say "  ok       $*"; }
note() { say "  note     $*"; }
missing() { # key, what, what to do (one or more lines)
  local key=$1 what=$2; shift 2
  problems+=("$key")
  say "  MISSING  [$key] $what"
  local l; for l in "$@"; do say "           -> $l"; done
}

# Value of CONFIG_$1 in the tree's .config ("" when unset), quotes removed.
cfg() {
  local v
  v=$(grep -m1 "^CONFIG_$1=" "$kdir/.config" 2>/dev/null) || { echo ""; return; }
  v=${v#*=}; v=${v#\"}; v=${v%\"}
  echo "$v"
}

say "spantrack check-host: kernel build tree $kdir"

# --- The build tree ------------------------------------------------------------------------
if [ ! -f "$kdir/Makefile" ] || [ ! -f "$kdir/.config" ]; then
  missing no-build-tree "no kernel build tree at $kdir (no Makefile or .config)" \
    "install the headers of the kernel: Debian/Ubuntu 'apt install linux-headers-$(uname -r)'," \
    "Fedora/RHEL 'dnf install kernel-devel-$(uname -r)', Arch 'pacman -S linux-headers'" \
    "(or pass --kdir <the build directory of the kernel you built>)"
  say "result: 1 problem(s): ${problems[*]}"
  exit 1
fi
release=$(cat "$kdir/include/config/kernel.release" 2>/dev/null || echo unknown)
ok "build tree of Linux $release"
if [ "$running" = 1 ] && [ "$release" != "$(uname -r)" ]; then
  missing tree-not-running-kernel "the build tree is of $release, the running kernel is $(uname -r)" \
    "install the headers of the running kernel, or boot the kernel the tree belongs to"
fi

# --- Kernel options ------------------------------------------------------------------------
if [ "$(cfg MODULES)" != y ]; then
  missing no-modules "CONFIG_MODULES is off: this kernel loads no modules" \
    "use a kernel built with CONFIG_MODULES=y"
fi
rust=0
if [ "$(cfg RUST)" = y ]; then
  rust=1
  ok "CONFIG_RUST=y"
else
  missing no-config-rust "CONFIG_RUST is off in $kdir/.config: this kernel cannot load Rust modules" \
    "run a kernel built with CONFIG_RUST=y (6.12: with MODVERSIONS off; 6.14+: MODVERSIONS needs" \
    "GENDWARFKSYMS), e.g. your distribution's Rust-enabled kernel or one you build from its source" \
    "with its own config plus CONFIG_RUST=y (README: 'Installing on a host')"
fi
opts_missing=()
for o in FTRACE_SYSCALLS RELAY DEBUG_FS TRACEPOINTS KALLSYMS; do
  [ "$(cfg $o)" = y ] || opts_missing+=("CONFIG_$o")
done
if [ ${#opts_missing[@]} = 0 ]; then
  ok "CONFIG_FTRACE_SYSCALLS, RELAY, DEBUG_FS, TRACEPOINTS, KALLSYMS"
else
  missing kernel-options "${opts_missing[*]} off (spantrack needs the system-call tracepoints, relay and debugfs)" \
    "use a kernel built with them on (distribution kernels usually have them)"
fi

# --- The C compiler the kernel was built with ------------------------------------------------
llvm=""
cc_text=$(cfg CC_VERSION_TEXT)
if [ "$(cfg CC_IS_CLANG)" = y ]; then
  cmajor=$(( $(cfg CLANG_VERSION) / 10000 ))
  cc=""
  for c in clang "clang-$cmajor"; do
    command -v "$c" >/dev/null 2>&1 || continue
    v=$("$c" -dumpversion 2>/dev/null); [ "${v%%.*}" = "$cmajor" ] || continue
    cc=$c; break
  done
  if [ -z "$cc" ]; then
    missing no-clang "the kernel was built with clang $cmajor ('$cc_text'); no clang $cmajor found" \
      "install clang $cmajor with lld and llvm (Debian/Ubuntu: apt install clang-$cmajor lld-$cmajor llvm-$cmajor)"
  else
    if [ "$cc" = clang ]; then llvm=1; else llvm=-$cmajor; fi
    ld=ld.lld; [ "$llvm" = 1 ] || ld=ld.lld$llvm
    if ! command -v "$ld" >/dev/null 2>&1; then
      missing no-lld "clang $cmajor found ($cc) but not $ld (LLVM=$llvm uses the LLVM linker and tools)" \
        "install lld-$cmajor and llvm-$cmajor"
    else
      ok "C compiler: $cc (clang $cmajor, as the kernel; make LLVM=$llvm)"
    fi
    got=$(LC_ALL=C "$cc" --version 2>/dev/null | head -n1)
    [ "$got" = "$cc_text" ] || note "the kernel's compiler was '$cc_text', this one is '$got' (same major version: usually fine)"
  fi
else
  gmajor=$(( $(cfg GCC_VERSION) / 10000 ))
  cc=""
  for c in "gcc-$gmajor" "$(uname -m)-linux-gnu-gcc-$gmajor" gcc; do
    command -v "$c" >/dev/null 2>&1 || continue
    v=$("$c" -dumpversion 2>/dev/null); [ "${v%%.*}" = "$gmajor" ] || continue
    cc=$c; break
  done
  if [ -z "$cc" ]; then
    other=$(gcc -dumpversion 2>/dev/null || echo none)
    missing no-gcc "the kernel was built with gcc $gmajor ('$cc_text'); no gcc $gmajor found (gcc: $other)" \
      "install gcc $gmajor (Debian/Ubuntu: apt install gcc-$gmajor; Debian's headers packages name it gcc-$gmajor-for-host)"
  else
    ok "C compiler: $cc (gcc $gmajor, as the kernel)"
  fi
fi

# --- Rust: metadata and compiler -----------------------------------------------------------
if [ "$rust" = 1 ]; then
  meta=(rust/libkernel.rmeta rust/libcore.rmeta rust/libcompiler_builtins.rmeta rust/libmacros.so
        include/generated/rustc_cfg)
  # x86_64 kernels (6.12 to 7.3 at least) pass --target=scripts/target.json to rustc, a file
  # generated in the build tree from the .config.
  [ "$(cfg X86_64)" != y ] || meta+=(scripts/target.json)
  absent=()
  for f in "${meta[@]}"; do [ -e "$kdir/$f" ] || absent+=("$f"); done
  have_meta=1
  if [ ${#absent[@]} = 0 ]; then
    ok "Rust metadata: ${meta[*]}"
  else
    have_meta=0
    missing no-rust-metadata "the build tree has no Rust metadata for out-of-tree modules: ${absent[*]} absent" \
      "the kernel crate's metadata is made when the kernel is built; headers packages without it need it made:" \
      "Ubuntu ships it apart: apt install linux-lib-rust-$release (files in /usr/src/linux-lib-rust-$release/rust);" \
      "elsewhere (Debian's linux-headers, for one) make it from the kernel's own source and .config with the" \
      "rustc below: make olddefconfig && make modules_prepare, then build against that tree (README: 'Installing on a host')"
  fi

  want=$(cfg RUSTC_VERSION_TEXT)
  cands=()
  if [ -n "$rustc_arg" ]; then
    cands=("$rustc_arg")
  else
    # A here-string, not process substitution: that needs /dev/fd, which a minimal system (the test
    # VM's devtmpfs, a container) may lack.
    mapfile -t cands <<<"$(type -ap rustc)"
    cands+=(/usr/bin/rustc /usr/lib/rust-*/bin/rustc "${RUSTUP_HOME:-$HOME/.rustup}"/toolchains/*/bin/rustc)
  fi
  rustc=""; seen=""
  for c in "${cands[@]}"; do
    [ -x "$c" ] || continue
    v=$("$c" --version 2>/dev/null) || continue
    seen+="$c: $v; "
    if [ -z "$want" ] || [ "$v" = "$want" ]; then rustc=$c; break; fi
  done
  if [ -z "$want" ]; then
    note "the .config has no CONFIG_RUSTC_VERSION_TEXT (a kernel before 6.12?): the rustc version was not compared"
  fi
  if [ -z "$rustc" ]; then
    if [ -z "$seen" ]; then
      missing no-rustc "no rustc found${rustc_arg:+ at $rustc_arg}; the kernel was built with '$want'" \
        "install that rustc (rustup toolchain install <its version> --component rust-src, or your distribution's" \
        "package of that version) and pass --rustc <its path> / RUSTC=<its path>"
    else
      missing rustc-version "no rustc of the kernel's version: it was built with '$want'; found ${seen%; }" \
        "rustc reads only metadata it made itself: install exactly that version (rustup toolchain install" \
        "<its version> --component rust-src, or your distribution's rustc package of it) and pass --rustc <path>"
    fi
  else
    ok "rustc: $rustc ('$("$rustc" --version)', as the kernel)"
  fi

  # The files being there is not enough: the kernel crate needs every crate it was built with
  # (bindings, uapi, ffi, build_error, pin_init, ... by version), readable by this rustc.
  # rustc itself says: a crate with `extern crate kernel;`, checked as the kernel's Kbuild
  # checks a module (x86_64's target.json, no sysroot), metadata only, nothing written here.
  if [ "$have_meta" = 1 ] && [ -n "$rustc" ] && [ "$(cfg X86_64)" = y ]; then
    probe=$(mktemp -d)
    echo '#![no_std] extern crate kernel;' > "$probe/probe.rs"
    if err=$(cd "$probe" && RUSTC_BOOTSTRAP=1 "$rustc" --edition=2021 -Zunstable-options \
          --crate-type=rlib --emit=metadata -o "$probe/probe.rmeta" \
          --target="$kdir/scripts/target.json" --sysroot=/dev/null -L "$kdir/rust" \
          --extern kernel "$probe/probe.rs" 2>&1); then
      ok "rustc reads the kernel crate's metadata"
    else
      why=$(grep -m3 '^error' <<<"$err" | tr '\n' ' ')
      missing rust-metadata-unusable "$rustc cannot use the metadata in $kdir/rust: ${why:-$(head -n1 <<<"$err")}" \
        "the rust/ directory must hold every lib*.rmeta and lib*.so the kernel's build made there" \
        "(copy them all, from the same kernel build), made by this very rustc"
    fi
    rm -rf "$probe"
  fi

  # bindgen and libclang: the module runs no bindgen itself; they are needed only to make the
  # metadata (modules_prepare), i.e. when the tree lacks it.
  bg_want=$(cfg BINDGEN_VERSION_TEXT)
  if command -v "${BINDGEN:-bindgen}" >/dev/null 2>&1; then
    bg=$("${BINDGEN:-bindgen}" --version 2>/dev/null | head -n1)
    if [ "$have_meta" = 1 ]; then
      note "bindgen: '$bg' (needed only to remake the Rust metadata)"
    elif [ -n "$bg_want" ] && [ "$bg" != "$bg_want" ]; then
      note "bindgen is '$bg', the kernel used '$bg_want' (to remake the metadata, prefer the same)"
    else
      ok "bindgen: '$bg' (for remaking the Rust metadata)"
    fi
  elif [ "$have_meta" = 0 ]; then
    missing no-bindgen "no bindgen: making the Rust metadata (modules_prepare) runs it${bg_want:+; the kernel used '$bg_want'}" \
      "cargo install --locked bindgen-cli${bg_want:+ --version ${bg_want#bindgen }} (with libclang of the kernel's LLVM: libclang-dev / libclang1-<version>)"
  else
    note "bindgen: none (not needed: the tree has the Rust metadata)"
  fi
fi

# --- Loading: signatures ---------------------------------------------------------------------
if [ "$running" = 1 ] && [ "$(cat /sys/module/module/parameters/sig_enforce 2>/dev/null)" = Y ]; then
  missing unsigned-module "the running kernel loads only signed modules (sig_enforce=Y: module signing enforced or lockdown)" \
    "sign spantrack.ko with a key the kernel trusts: $kdir/scripts/sign-file sha256 <key> <cert> spantrack.ko" \
    "(a Machine Owner Key enrolled with mokutil, as DKMS does), then load it"
fi

if [ ${#problems[@]} = 0 ]; then
  say "result: nothing missing"
  if [ "$want_flags" = 1 ]; then
    flags=()
    [ -z "$llvm" ] || flags+=("LLVM=$llvm")
    [ "$rust" = 0 ] || flags+=("RUSTC=$rustc")
    echo "${flags[*]}"
  fi
  exit 0
fi
say "result: ${#problems[@]} problem(s): ${problems[*]}"
exit 1
