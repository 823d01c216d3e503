#!/usr/bin/env bash
# `make test`: host tests, then in-VM tests against the real module on the release and the
# debug kernel (lockdep, KASAN, kmemleak), then the VM harness's own self-test. Prints how
# long each stage took and closes with one "N passed, N failed" line.
# VARIANTS="release" limits the kernels; VM_FILTER=word runs only matching in-VM tests.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"
cd "$root"

"$here/setup.sh" || exit 1

pass=0; fail=0
declare -a timings
record() { # name status seconds
  if [ "$2" = 0 ]; then pass=$((pass+1)); r=ok; else fail=$((fail+1)); r=FAILED; fi
  timings+=("$(printf '%-44s %-7s %5ss' "$1" "$r" "$3")")
}
run_stage() { # name command...
  local name=$1; shift; local t0; t0=$(now)
  stage "$name"
  "$@"; local st=$?
  record "$name" "$st" "$(( $(now) - t0 ))"
  return $st
}

run_stage "host: cargo test (workspace)" cargo test --workspace --quiet
run_stage "host: build user-space programs" cargo build --release --workspace --quiet
venv=$("$here/python-env.sh") || exit 1
run_stage "host: Python hook unit tests" env PYTHONDONTWRITEBYTECODE=1 \
  "$venv/bin/python" -m unittest discover -s preload/python/tests
run_stage "host: in-VM runner fails a crashed test program" bash tests/harness/runner_selftest.sh
run_stage "host: trace view tests (chromium)" env PYTHONDONTWRITEBYTECODE=1 \
  timeout 300 python3 -m unittest discover -s view/tests
run_stage "host: spantrack command tests" env PYTHONDONTWRITEBYTECODE=1 \
  timeout 120 python3 -m unittest discover -s cli/tests

for v in ${VARIANTS:-release debug}; do
  if ! run_stage "$v: kernel (cached after first build)" env VARIANT=$v "$here/build-kernel.sh"; then continue; fi
  if ! run_stage "$v: spantrack.ko" env VARIANT=$v "$here/build-module.sh"; then continue; fi
  timeout_s=1500; [ "$v" = debug ] && timeout_s=3600
  run_stage "$v: in-VM tests" "$here/vm-run.sh" --variant "$v" --timeout "$timeout_s" -- \
    tests/vm/run.sh "build/$v/spantrack.ko" "${VM_FILTER:-}"
done

harness_selftest() {
  local kdir; kdir=$(VARIANT=release "$here/build-kernel.sh") || return 1
  local w="$root/build/warn_on_load"
  mkdir -p "$w"; cp -u tests/harness/warn_on_load/* "$w/"
  make -s -C "$kdir" M="$w" "${KMAKE_FLAGS[@]}" modules || return 1
  # The guest command succeeds; the WARN in the kernel log must still fail the run (97).
  "$here/vm-run.sh" --variant release -- "insmod $w/warn_on_load.ko && echo inserted"
  local rc=$?
  if [ "$rc" = 97 ]; then echo "ok - vm-run.sh fails a run whose kernel log shows a WARN"; return 0; fi
  echo "not ok - vm-run.sh returned $rc for a module that WARNs on load (want 97)"; return 1
}
run_stage "harness: a WARN in the guest fails the run" harness_selftest

echo
echo "== stage timings =="
printf '%s\n' "${timings[@]}"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
