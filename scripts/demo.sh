#!/usr/bin/env bash
# `make demo`: builds what it needs (guest kernel, spantrack.ko, user-space programs), boots
# the VM, loads the module and shows it at work: a registered program opens nested spans
# around known system calls, and the slow spans' records come back through relay.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"
cd "$root"
"$here/setup.sh"
t0=$(now)
ko=$("$here/build-module.sh")
cargo build --release --workspace --quiet
stage "built in $(elapsed "$t0"); booting the VM"
exec "$here/vm-run.sh" --variant "${VARIANT:-release}" -- scripts/demo-guest.sh "$ko"
