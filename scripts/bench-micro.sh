#!/usr/bin/env bash
# Micro-costs of spantrack in the guest (not part of `make test`): system call on an
# untracked / tracked thread / inside a span, span begin+end pair. Runs the guest with QEMU
# -icount shift=0 (guest ns = instructions: repeatable) and once without (emulated wall
# clock), both labelled.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
"$here/setup.sh"
ko=$("$here/build-module.sh")
cargo build --release -p spantrack-vmtest --quiet
cmd="target/release/spantrack-microbench baseline && insmod $ko && target/release/spantrack-microbench module && rmmod spantrack"
echo "== guest clock tied to instructions (-icount shift=0): 1 ns = 1 instruction"
"$here/vm-run.sh" --icount --timeout 1200 -- "$cmd"
echo "== emulated wall clock (TCG, depends on host load)"
"$here/vm-run.sh" --timeout 1200 -- "$cmd"
