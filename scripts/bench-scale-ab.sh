#!/usr/bin/env bash
# Issue 16: two builds of spantrack.ko side by side in one boot (guest side, run from the
# repository's top directory as root): `spantrack-bench scale` with module A, module B and
# without the module, interleaved, for each thread count. One JSON line per run, appended
# to OUT/scale-ab.jsonl; summarise with scripts/bench-scale-ab.py.
#   scripts/vm-run.sh --variant release --smp 4 --keep DIR -- \
#     "scripts/bench-scale-ab.sh OLD.ko NEW.ko /run/spout"
# Environment: REPS [3], S [3] seconds per run, THREADS ["1 4 8 32 64"], K [16] calls per span,
# MODE [in-span] (in-slot: every call charged through the thread's active-span slot, as an
# async runtime's).
set -uo pipefail
A=${1:?module A}; B=${2:?module B}; out=${3:-/run/spout}
reps=${REPS:-3}; secs=${S:-3}; k=${K:-16}
bench=${CARGO_TARGET_DIR:-target}/release/spantrack-bench
sysfs=/sys/kernel/spantrack
for ((rep = 1; rep <= reps; rep++)); do
  for t in ${THREADS:-1 4 8 32 64}; do
    for mode in plain A B; do
      rmmod spantrack 2>/dev/null
      m=${MODE:-in-span}
      case $mode in
        plain) m=plain ;;
        A) insmod "$A" || exit 1 ;;
        B) insmod "$B" || exit 1 ;;
      esac
      # In span: no record (threshold 1 hour), every call tracked and itemised.
      [ $m != plain ] && echo 3600000000000 > $sysfs/threshold_ns
      line=$("$bench" scale --threads "$t" --seconds "$secs" --calls-per-span "$k" --mode $m 2>/tmp/scale.err | grep '^{' | tail -n 1)
      [ -n "$line" ] || { echo "scale FAILED: $t $mode: $(tail -c 300 /tmp/scale.err)" >&2; line=null; }
      st=null
      [ $m != plain ] && st=\"$(grep -E "^calls_(attributed|stale|without_enter|unknown_active_span|span_ended) " /proc/spantrack/stats | tr '\n' ' ')\"
      echo "{\"rep\":$rep,\"ko\":\"$mode\",\"stats\":$st,\"result\":$line}" | tee -a "$out/scale-ab.jsonl"
      rmmod spantrack 2>/dev/null
    done
  done
done
