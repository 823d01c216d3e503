#!/usr/bin/env bash
# `make test`: host tests, then in-VM tests against the real module on the 6.12 release and
# debug kernels (lockdep, KASAN, kmemleak), then a named subset on the Linux 7.3 release
# kernel, then the VM harness's own self-test. Prints how long each stage took and closes
# with one "N passed, N failed" line.
#   VARIANTS="release"  limits the 6.12 kernels (VARIANTS="" none); VM_FILTER=word runs only
#                       the matching in-VM tests on them
#   TEST_7=auto         (default) the 7.3 stage runs when the 7.3 release kernel is cached,
#                       and is skipped, saying so, when it is not: a fresh machine cannot
#                       build three kernels within CI's 90 minutes (README "Toolchain")
#   TEST_7=1            builds the 7.3 kernel if needed and runs the stage (`make test-7`:
#                       host stages and this stage only); TEST_7=0 never runs it
#   VM_TESTS_7="t_a t_b" the 7.3 subset (default $VM_TESTS_7_DEFAULT below); "all": every test
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"
cd "$root"

"$here/setup.sh" || exit 1

pass=0; fail=0; skipped=
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
run_stage "host: in-VM runner runs a named list of tests" bash tests/harness/run_list_selftest.sh
run_stage "host: trace view tests (chromium)" env PYTHONDONTWRITEBYTECODE=1 \
  timeout 300 python3 -m unittest discover -s view/tests
run_stage "host: spantrack command tests" env PYTHONDONTWRITEBYTECODE=1 \
  timeout 120 python3 -m unittest discover -s cli/tests

# The 7.3 subset: the entry points of the module. ioctl (register, info, unregister, thread
# unregister), /proc begin/end, stats, sysfs tunables, debugfs relay reads and the control
# file's poll: t_vmtest; the relay-descriptor ioctl: t_users; every 0xB9 ioctl with bad
# arguments, the active-slot ioctl (IOCTL_SET_ACTIVE_SLOT) among them, and bad writes:
# t_fuzz (4 s; a slot that is set and read at system calls: t_async, not in the list); unload with every kind of user busy:
# t_unload_busy, t_unload_poll; thread creation and exit, process exit (task_newtask,
# sched_process_exit): t_process_exit, t_vmtest; exec (sched_process_exec): t_stress's forkexec
# mode; the scheduler probes (sched_switch, sched_waking, sched_stat_runtime, softirq, timer
# and hrtimer entry/exit) and the wait stacks: t_sched; the preloaded library and the Rust
# processor end to end: t_preload_rust; permissions and relay descriptors across users:
# t_users; 20 load/unload cycles: t_load_unload.
VM_TESTS_7_DEFAULT="t_load_unload t_trace_lazy t_vmtest t_process_exit t_sched t_preload_rust t_unload_busy t_unload_poll t_users t_stress t_fuzz"
VM_STRESS_MODES_7=${VM_STRESS_MODES_7:-forkexec}

for v in ${VARIANTS-release debug}; do
  if ! run_stage "$v: kernel (cached after first build)" env VARIANT=$v "$here/build-kernel.sh"; then continue; fi
  if ! run_stage "$v: spantrack.ko" env VARIANT=$v "$here/build-module.sh"; then continue; fi
  timeout_s=1500; [ "$v" = debug ] && timeout_s=3600
  run_stage "$v: in-VM tests" "$here/vm-run.sh" --variant "$v" --timeout "$timeout_s" -- \
    tests/vm/run.sh "build/$v/spantrack.ko" "${VM_FILTER:-}"
done

# The 7.3 release kernel: cached, or built when asked (TEST_7=1).
test_7() {
  local v=release-7 tests
  case "${TEST_7:-auto}" in
    0) echo "release-7: skipped (TEST_7=0)"; return 0;;
    1) ;;
    auto)
      if ! VARIANT=$v "$here/build-kernel.sh" --cached >/dev/null; then
        stage "release-7: SKIPPED: the Linux 7.3 kernel is not cached, and building it takes ~42 min on 2 cores (CI's 90 minutes cannot hold it with the two 6.12 kernels); run 'make test-7' (or TEST_7=1 make test) once to build and test it; later runs of make test include it"
        timings+=("$(printf '%-44s %-7s %5ss' "release-7: in-VM tests (7.3 not cached)" skipped 0)")
        skipped="release-7 (7.3 kernel not cached: make test-7)"
        return 0
      fi;;
    *) die "TEST_7 must be auto, 1 or 0, not '$TEST_7'";;
  esac
  run_stage "$v: kernel (cached after first build)" env VARIANT=$v "$here/build-kernel.sh" || return 1
  run_stage "$v: spantrack.ko" env VARIANT=$v "$here/build-module.sh" || return 1
  tests=${VM_TESTS_7:-$VM_TESTS_7_DEFAULT}
  if [ "$tests" = all ]; then
    run_stage "$v: in-VM tests (all)" "$here/vm-run.sh" --variant $v --timeout 1500 -- \
      tests/vm/run.sh "build/$v/spantrack.ko"
  else
    # shellcheck disable=SC2086
    run_stage "$v: in-VM tests (entry-point subset)" "$here/vm-run.sh" --variant $v --timeout 1500 -- \
      env STRESS_MODES="$VM_STRESS_MODES_7" tests/vm/run.sh "build/$v/spantrack.ko" --tests $tests
  fi
}
test_7

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
case " ${VARIANTS-release debug} " in
  *" release "*) run_stage "harness: a WARN in the guest fails the run" harness_selftest;;
  *) echo "harness self-test skipped: it boots the 6.12 release kernel, not among VARIANTS";;
esac

echo
echo "== stage timings =="
printf '%s\n' "${timings[@]}"
echo "$pass passed, $fail failed${skipped:+; skipped: $skipped}"
[ "$fail" = 0 ]
