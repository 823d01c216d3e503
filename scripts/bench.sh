#!/usr/bin/env bash
# `make bench` (not part of `make test`): the overhead benchmark of issue 5, paper 000's
# Fig. 4 and Fig. 5 with peers. Host side: builds the module and the programs, boots ONE VM
# with QEMU -icount shift=0 (guest ns = executed instructions: figures do not depend on how
# busy the host is) that runs every configuration interleaved and repeated
# (scripts/bench-guest.sh), then one shorter VM without -icount for emulated wall-clock
# figures; writes results/bench/ (raw JSON lines, results.md, SVG figures). 15.5 minutes
# on 2 idle cores (2026-12-02: overload VM 5.2, VM 1 9.6, VM 2 0.7); more on a busy host.
#
# Both VMs have ONE vCPU (--smp 1): with two, QEMU's round-robin TCG lets a vCPU spin for a
# whole time slice on a lock the other one holds, and runs of the same configuration then
# differed by up to 27%; with one, repeated runs agree within 0.1%.
#
# Issue 19's part (BENCH_PARTS contains "overload"), first, in a VM of its own (-icount
# shift=0, one vCPU): the integrations under sustained load, Python and Rust, with and without
# spantrack (scripts/bench-guest.sh, part "overload"; about 5 minutes): results/bench/
# raw-overload.jsonl and the section "Under sustained load" of results.md (also overload.md).
#
# Issue 16's part (BENCH_PARTS contains "scale"), in a VM of its own with BENCH_SCALE_CPUS (4)
# vCPUs and no -icount (TCG runs the vCPUs in parallel, so contention is real; the clock is
# emulated wall clock, and host load shows in it): 1..64 threads making system calls inside
# spans, module loaded vs not (results/bench/raw-scale.jsonl, section "On several vCPUs").
#
# Issue 16's realistic service (BENCH_PARTS contains "realistic"), in a VM of its own (-icount
# shift=0, one vCPU, like VM 1): the currency service with real work per request (JSON,
# SQLite queries and a write transaction, computation, a JSON reply: bench/src/realistic.rs),
# configurations none/otel/otelko/stdef/st1all/st1allsum interleaved, BENCH_REAL_N (5000)
# requests, BENCH_REAL_REPS (3) (results/bench/raw-realistic.jsonl, section "A realistic
# service"; 12.5 minutes with the build on a loaded 2-core host, 2026-12-03; BENCH_REAL_TIMEOUT
# (3600) seconds).
#
# Knobs (environment): BENCH_PARTS ("overload scale realistic overhead": all; "overload" alone takes ~6
# minutes); BENCH_NS, BENCH_REPS, BENCH_KS, BENCH_K_REPS, BENCH_CONFIGS,
# BENCH_PEER_MAX_N, BENCH_PROFILE_RUNS, BENCH_OVL_* ... (see scripts/bench-guest.sh); BENCH_WALL=0 skips
# the wall-clock VM; BENCH_WALL_N (10000) its N; BENCH_TIMEOUT (3600) seconds for the icount VM;
# BENCH_OVL_TIMEOUT (2400) for the overload VM. KO: a spantrack.ko to use instead of building
# one (scripts/build-module.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
. "$here/lib.sh"
VARIANT=release; export VARIANT
t_all=$(now)

"$here/setup.sh"
ko=${KO:-$("$here/build-module.sh")}
parts=${BENCH_PARTS:-overload scale realistic overhead}
stage "building spantrack-bench, libspanhook.so, spantrack-microbench, spantrack-overload-bench"
cargo build --release --quiet -p spantrack-bench -p spanhook -p spantrack-vmtest -p spantrack-rust-demo-svc
BENCH_PY=$("$here/python-env.sh")/bin/python; export BENCH_PY
res="$root/results/bench"
mkdir -p "$res" "$root/build/bench"
# What was measured: build-info.txt for a run with the overhead part (results.md's main
# figures); a partial run leaves it alone and writes build-info-PART.txt for each part it
# runs, so that every section names the build it measured.
build_info() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "kernel: $("$here/build-kernel.sh") ($VARIANT)"
  echo "module: $ko"
  echo "uncommitted changes in the measured code (git status --short rust_module uapi preload otel bench):"
  git -C "$root" status --short rust_module uapi preload otel bench 2>/dev/null | sed 's/^/  /'
}
for p in $parts; do build_info > "$res/build-info-$p.txt"; done
[[ " $parts " == *" overhead "* ]] && cp "$res/build-info-overhead.txt" "$res/build-info.txt" && rm -f "$res/build-info-overhead.txt"

# Passes the BENCH_* knobs into the guest command.
guest_env() {
  local v out="KO=$ko"
  for v in $(compgen -e | grep '^BENCH_' || true); do out+=" $v=$(printf '%q' "${!v}")"; done
  printf '%s' "$out"
}

if [[ " $parts " == *" overload "* ]]; then
  stage "VM 0: -icount shift=0, issue 19's load (Python and Rust, with and without spantrack)"
  t0=$(now)
  "$here/vm-run.sh" --variant release --icount --smp 1 --timeout "${BENCH_OVL_TIMEOUT:-2400}" --keep "$root/build/bench/overload" -- \
    "$(guest_env) BENCH_CLOCK=icount BENCH_PARTS=overload scripts/bench-guest.sh"
  stage "VM 0 done in $(elapsed "$t0")"
  cp "$root/build/bench/overload/overload.jsonl" "$res/raw-overload.jsonl"
fi
if [[ " $parts " == *" scale "* ]]; then
  stage "VM 3: ${BENCH_SCALE_CPUS:-4} vCPUs, emulated wall clock (no -icount: TCG runs the vCPUs in parallel), issue 16's contention benchmark"
  t0=$(now)
  "$here/vm-run.sh" --variant release --smp "${BENCH_SCALE_CPUS:-4}" --timeout "${BENCH_SCALE_TIMEOUT:-1800}" --keep "$root/build/bench/scale" -- \
    "$(guest_env) BENCH_CLOCK=wall BENCH_PARTS=scale scripts/bench-guest.sh"
  stage "VM 3 done in $(elapsed "$t0")"
  cp "$root/build/bench/scale/scale.jsonl" "$res/raw-scale.jsonl"
fi
if [[ " $parts " == *" realistic "* ]]; then
  stage "VM 4: -icount shift=0, issue 16's realistic service (JSON, SQLite, computation per request)"
  t0=$(now)
  "$here/vm-run.sh" --variant release --icount --smp 1 --timeout "${BENCH_REAL_TIMEOUT:-3600}" --keep "$root/build/bench/realistic" -- \
    "$(guest_env) BENCH_CLOCK=icount BENCH_PARTS=realistic BENCH_REAL_N=${BENCH_REAL_N:-5000} scripts/bench-guest.sh"
  stage "VM 4 done in $(elapsed "$t0")"
  cp "$root/build/bench/realistic/realistic.jsonl" "$res/raw-realistic.jsonl"
  cp "$root/build/bench/realistic/realistic-phases.jsonl" "$res/raw-realistic-phases.jsonl" 2>/dev/null || rm -f "$res/raw-realistic-phases.jsonl"
fi
[[ " $parts " == *" overhead "* ]] || { stage "report"; python3 "$here/bench-report.py" "$res"
  stage "make bench done in $(elapsed "$t_all"): $res/results.md"; exit 0; }

stage "VM 1: -icount shift=0, all configurations (this is the long part)"
t0=$(now)
export BENCH_PROFILE_RUNS=${BENCH_PROFILE_RUNS-"otel:0:10000 st1:0:10000 st1:20:10000"}
"$here/vm-run.sh" --variant release --icount --smp 1 --timeout "${BENCH_TIMEOUT:-3600}" --keep "$root/build/bench/icount" -- \
  "$(guest_env) BENCH_CLOCK=icount BENCH_PARTS=overhead scripts/bench-guest.sh"
stage "VM 1 done in $(elapsed "$t0")"
cp "$root/build/bench/icount/results.jsonl" "$res/raw-icount.jsonl"
rm -f "$res"/profile-*.txt
cp "$root/build/bench/icount/micro-icount.txt" "$root"/build/bench/icount/profile-*.txt "$res/" 2>/dev/null || true

if [ "${BENCH_WALL:-1}" = 1 ]; then
  stage "VM 2: emulated wall clock (no -icount), one repetition, N=${BENCH_WALL_N:-10000}"
  t0=$(now)
  "$here/vm-run.sh" --variant release --smp 1 --timeout 1200 --keep "$root/build/bench/wall" -- \
    "$(guest_env) BENCH_CLOCK=wall BENCH_PARTS=overhead BENCH_REPS=1 BENCH_NS=${BENCH_WALL_N:-10000} BENCH_KS='5 20' BENCH_K_CONFIGS='otel st1' BENCH_K_NS=${BENCH_WALL_N:-10000} BENCH_K_REPS=1 BENCH_PROFILE=0 BENCH_PROFILE_RUNS= scripts/bench-guest.sh"
  stage "VM 2 done in $(elapsed "$t0")"
  cp "$root/build/bench/wall/results.jsonl" "$res/raw-wall.jsonl"
  cp "$root/build/bench/wall/micro-wall.txt" "$res/micro-wall.txt" 2>/dev/null || true
fi

stage "report"
python3 "$here/bench-report.py" "$res"
stage "make bench done in $(elapsed "$t_all"): $res/results.md"
