#!/usr/bin/env bash
# Guest side of `make bench` (run by scripts/bench.sh inside the VM, as root, from the
# repository's top directory). Runs every configuration of the overhead benchmark in this
# one boot, interleaved (the order rotates from one repetition to the next) and repeated,
# and appends one JSON line per run to $BENCH_OUT/results.jsonl.
#
# Configurations (all run the same currency service, spantrack-bench serve):
#   none      no OpenTelemetry, module not loaded
#   otel      OpenTelemetry SDK (10% sampling, batch processor, OTLP/HTTP to a loopback sink)
#   st1       otel + SpantrackProcessor + LD_PRELOAD=libspanhook.so + spantrack.ko, threshold_ns=1
#             and SPANTRACK_THRESHOLD=fixed (every sampled span annotated, as the paper's Fig. 4)
#   stdef     spantrack as shipped: the module's default threshold (1 ms), adaptive per-operation
#             thresholds with their 1 ms floor (almost no span of this service is slow)
#   stfix     stdef with SPANTRACK_THRESHOLD=fixed: the difference to stdef is what the
#             per-operation (adaptive) thresholds cost per span
#   st1sum    st1 with SpantrackProcessor's min_child_call = 1 ms: the record's attributes on
#             every sampled span, child spans only for calls of 1 ms or more (none here)
#   st1all    st1 with the annotation budget unbounded (SPANTRACK_BUDGET_PCT=100) and no
#             per-operation cap (SPANTRACK_OP_ANNOTATIONS_PER_S=0; default 100/s): every sampled
#             span annotated (st1 summarises those past either limit)
#   st1allsum st1all with min_child_call = 1 ms: every sampled span gets the record's
#             attributes, no child spans (the difference to st1all is the child spans' cost)
#   otelko    otel with spantrack.ko loaded but the service not registered: the floor, what
#             the module's system-call tracepoints cost every process on the machine
#   strace    otel + `strace -f -tt -T -o FILE` around the service (what a user would pick instead)
#   perf      otel + `perf trace -o FILE` around the service (only if it works in the guest)
#
# Environment (defaults in brackets):
#   BENCH_OUT [/run/spout]  BENCH_NS ["1000 10000 100000"]  BENCH_REPS [3]
#   BENCH_CONFIGS ["none otel otelko st1 st1sum stdef stfix strace perf"]   BENCH_PEER_MAX_N [10000]: strace/perf
#   only up to this N (they are orders of magnitude slower under emulation)
#   BENCH_KS ["5 10 20"] extra getpid per span for Fig. 5 (k=0 is the Fig. 4 run)
#   BENCH_K_CONFIGS ["otel otelko st1 st1sum"]   BENCH_K_NS [= BENCH_NS]
#   BENCH_MICRO [1]: run spantrack-microbench first   BENCH_CLOCK [icount]: label of the runs
#   BENCH_WARMUP [200]   BENCH_K_REPS [1] repetitions of the Fig. 5 runs
#   BENCH_PROFILE [1]: perf profiles of a getpid() loop, tracked / in a span (spantrack-bench spin)
#   BENCH_PROFILE_RUNS [""]: "CONFIG:K:N ..." runs done once under `perf record -a` (not counted)
#   KO: path of spantrack.ko (required)
#
# BENCH_PARTS ["overhead"]: what this boot runs, "overhead" (all of the above), "overload"
# (issue 19: the integrations under sustained load, below), "scale" (issue 16:
# contention on several vCPUs, below) and/or "realistic" (issue 16: the realistic service,
# below), in the order overload, scale, overhead, realistic.
#
# Part "overload" (one JSON line per run appended to $BENCH_OUT/overload.jsonl): the load of
# issue 19 in a Python service (preload/python/tools/bench_overload.py one, $BENCH_PY) and in
# a Rust one (spantrack-overload-bench, otel/demo_svc): BENCH_OVL_THREADS [8] threads x
# BENCH_OVL_SPANS [1000] spans, each three writes to /dev/null and a 1.5 ms sleep (every span
# slow at the default threshold), SimpleSpanProcessor with a JSON-serialising exporter.
# Configurations (BENCH_OVL_CONFIGS ["off st all allsum"]), each a fresh module:
#   off     without spantrack: module not loaded, no preload (Rust: no SpantrackProcessor)
#   st      spantrack as shipped: module loaded, libspanhook.so preloaded, every default
#   all     spantrack, nothing bounded (budget 100%, unbounded queue and record store,
#           10 s record wait, 600 s shutdown): every span annotated, to measure what each
#           annotated span and each child span costs
#   allsum  "all" without child spans (SPANTRACK_MIN_CHILD_US of 1000 s): the difference
#           to "all" is the child spans' cost
# BENCH_OVL_LANGS ["python rust"], BENCH_OVL_REPS [2] (interleaved; the order rotates).
# BENCH_OVL_ENV [""]: VAR=value words added to the environment of the spantrack runs.
#
# Part "realistic" (issue 16, item 3; one JSON line per run appended to
# $BENCH_OUT/realistic.jsonl, the format of results.jsonl plus "app"): the same service and
# client with `--app realistic`: every request parses JSON, runs SQLite queries and a write
# transaction on a fresh database file in this guest's tmpfs ($work/currency.db), computes
# and renders a JSON reply (bench/src/realistic.rs). Configurations BENCH_REAL_CONFIGS
# ["none otel otelko stdef st1all st1allsum"] (as above), N = BENCH_REAL_N [5000] requests after
# BENCH_REAL_WARMUP [200], BENCH_REAL_REPS [3] repetitions, interleaved (the order rotates),
# after one uncounted run; repetition r under the service's memory layout r (--layout-seed).
# Then BENCH_REAL_PHASE_CONFIGS ["otel otelko stdef st1allsum st1all"], one run each with
# BENCH_PHASES=1 (the service thread's CPU time per phase of a request, to
# $BENCH_OUT/realistic-phases.jsonl), and the same with glibc's malloc limited to one arena. BENCH_REAL_PROFILE_RUNS [""]: "CONFIG:N ..." runs done once
# under `perf record -a` first (not counted; profile-realistic-CONFIG-nN-CLOCK.txt).
set -uo pipefail
root=$(pwd)
out=${BENCH_OUT:-/run/spout}
ns=${BENCH_NS:-"1000 10000 100000"}
reps=${BENCH_REPS:-3}
configs=${BENCH_CONFIGS:-"none otel otelko st1 st1sum stdef stfix strace perf"}
peer_max=${BENCH_PEER_MAX_N:-10000}
ks=${BENCH_KS:-"5 10 20"}
kconfigs=${BENCH_K_CONFIGS:-"otel otelko st1 st1sum"}
kns=${BENCH_K_NS:-$ns}
micro=${BENCH_MICRO:-1}
clock=${BENCH_CLOCK:-icount}
warmup=${BENCH_WARMUP:-200}
ko=${KO:?KO must name spantrack.ko}
tdir=${CARGO_TARGET_DIR:-$root/target}/release
bench=$tdir/spantrack-bench
hook=$tdir/libspanhook.so
sysfs=/sys/kernel/spantrack
work=/tmp/bench
mkdir -p "$work"
res=$out/results.jsonl
log() { echo "bench-guest: $*" >&2; }

module_on() { [ -d "$sysfs" ] || insmod "$ko" || { log "insmod failed"; exit 1; }; }
module_off() { [ -d "$sysfs" ] && { rmmod spantrack || { log "rmmod failed"; exit 1; }; }; return 0; }

# Default threshold: read once from a freshly loaded module.
module_on; default_threshold=$(cat $sysfs/threshold_ns); module_off
log "module default threshold_ns=$default_threshold"
parts=${BENCH_PARTS:-overhead}

# ---- part "overload" (issue 19) ---------------------------------------------------------
# ovl_run LANG CONFIG REP: one run of the load, one line in overload.jsonl.
ovl_run() {
  local lang=$1 cfg=$2 rep=$3 env=() cmd=() line rc t0 t1 mstats=null
  local threads=${BENCH_OVL_THREADS:-8} spans=${BENCH_OVL_SPANS:-1000}
  module_off
  case "$cfg" in
    off) ;;
    st|all|allsum)
      module_on   # fresh: its stats are this run's; threshold_ns stays the default
      env=(LD_PRELOAD="$hook" SPANHOOK_QUIET=1)
      if [ "$cfg" != st ]; then
        env+=(SPANTRACK_BUDGET_PCT=100 SPANTRACK_QUEUE_SIZE=1000000 SPANTRACK_TAKE_TIMEOUT_MS=10000
              SPANTRACK_SHUTDOWN_TIMEOUT_MS=600000 SPANHOOK_MAX_RECORDS=1000000 SPANHOOK_MAX_BYTES=1073741824)
      fi
      [ "$cfg" = allsum ] && env+=(SPANTRACK_MIN_CHILD_US=1000000000)
      # shellcheck disable=SC2206 # words on purpose: VAR=value ...
      [ -n "${BENCH_OVL_ENV:-}" ] && env+=($BENCH_OVL_ENV);;
    *) log "unknown overload config $cfg"; return;;
  esac
  case "$lang" in
    python) cmd=("${BENCH_PY:-python3}" "$root/preload/python/tools/bench_overload.py" one "$threads" "$spans");;
    rust) cmd=("$tdir/spantrack-overload-bench" --threads "$threads" --spans "$spans")
          [ "$cfg" = off ] && cmd+=(--plain);;
    *) log "unknown overload language $lang"; return;;
  esac
  t0=$(date +%s%N)
  (cd "$work" && env "${env[@]}" timeout 1500 "${cmd[@]}" > "$work/ovl.out" 2> "$work/ovl.err")
  rc=$?
  t1=$(date +%s%N)
  line=$(grep '^{' "$work/ovl.out" | tail -n 1)
  if [ "$rc" != 0 ] || [ -z "$line" ]; then
    log "overload FAILED: $lang $cfg rep=$rep (rc $rc): $(tail -c 600 "$work/ovl.err")"
    line=null
  fi
  if [ -d "$sysfs" ]; then
    mstats=$(awk 'BEGIN{printf "{"} NF==2{printf "%s\"%s\":%s", (n++?",":""), $1, $2} END{printf "}"}' /proc/spantrack/stats 2>/dev/null)
  fi
  echo "{\"clock\":\"$clock\",\"lang\":\"$lang\",\"config\":\"$cfg\",\"rep\":$rep,\"rc\":$rc,\"run_ns\":$((t1 - t0)),\"module_stats\":$mstats,\"result\":$line}" >> "$out/overload.jsonl"
  log "overload $lang $cfg rep=$rep ($(( (t1 - t0) / 1000000 )) guest ms): $(echo "$line" | cut -c1-160)"
}

if [[ " $parts " == *" overload "* ]]; then
  echo "{\"probe\":1,\"clock\":\"$clock\",\"kernel\":\"$(uname -r)\",\"default_threshold_ns\":$default_threshold,\"cpus\":$(nproc),\"python\":\"$(${BENCH_PY:-python3} -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)\"}" >> "$out/overload.jsonl"
  ovl_configs=(${BENCH_OVL_CONFIGS:-off st all allsum})
  for ((rep = 1; rep <= ${BENCH_OVL_REPS:-2}; rep++)); do
    for lang in ${BENCH_OVL_LANGS:-python rust}; do
      for ((i = 0; i < ${#ovl_configs[@]}; i++)); do
        ovl_run "$lang" "${ovl_configs[(i + rep - 1) % ${#ovl_configs[@]}]}" "$rep"
      done
    done
  done
  module_off
  log "overload done: $(grep -c '"config"' "$out/overload.jsonl") runs"
fi
# Part "scale" (issue 16; one JSON line per run appended to $BENCH_OUT/scale.jsonl): the
# contention benchmark, meant for a multi-vCPU boot without -icount (wall clock).
# spantrack-bench scale: BENCH_SCALE_THREADS ["1 4 8 32 64"] threads, each making
# BENCH_SCALE_K [16] getpid() per span of its own for BENCH_SCALE_S [3] seconds; modes
# "plain" (module not loaded), "in-span" (module loaded, process registered, threshold_ns
# 1 hour: every call tracked and itemised, no record) and "in-slot" (the same through each
# thread's active-span slot, as asyncio and tokio), interleaved, BENCH_SCALE_REPS [3].
if [[ " $parts " == *" scale "* ]]; then
  echo "{\"probe\":1,\"clock\":\"$clock\",\"kernel\":\"$(uname -r)\",\"cpus\":$(nproc)}" >> "$out/scale.jsonl"
  for ((rep = 1; rep <= ${BENCH_SCALE_REPS:-3}; rep++)); do
    for t in ${BENCH_SCALE_THREADS:-1 4 8 32 64}; do
      modes=(plain in-span in-slot); ((rep % 2 == 0)) && modes=(in-slot in-span plain)
      for mode in "${modes[@]}"; do
        if [ "$mode" = plain ]; then module_off; else module_on; echo 3600000000000 > $sysfs/threshold_ns; fi
        line=$("$bench" scale --threads "$t" --seconds "${BENCH_SCALE_S:-3}" --calls-per-span "${BENCH_SCALE_K:-16}" --mode "$mode" 2>"$work/scale.err" | grep '^{' | tail -n 1)
        [ -n "$line" ] || { log "scale FAILED: $t $mode: $(tail -c 300 "$work/scale.err")"; line=null; }
        mstats=null
        [ "$mode" != plain ] && mstats=$(awk 'BEGIN{printf "{"} NF==2{printf "%s\"%s\":%s", (n++?",":""), $1, $2} END{printf "}"}' /proc/spantrack/stats 2>/dev/null)
        echo "{\"clock\":\"$clock\",\"rep\":$rep,\"module_stats\":${mstats:-null},\"result\":$line}" >> "$out/scale.jsonl"
        log "scale rep=$rep threads=$t $mode: $(echo "$line" | cut -c1-200)"
        module_off
      done
    done
  done
  log "scale done"
fi
in_parts() { [[ " $parts " == *" $1 "* ]]; }
in_parts overhead || in_parts realistic || exit 0

# Which peers can run here.
have_perf=0
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
if command -v perf >/dev/null && perf trace -o "$work/perf.probe" -- true >/dev/null 2>&1; then have_perf=1; fi
have_strace=0; command -v strace >/dev/null && strace -f -o /dev/null true 2>/dev/null && have_strace=1
log "peers: strace=$have_strace perf-trace=$have_perf (bpftrace: $(command -v bpftrace || echo absent))"
in_parts overhead && echo "{\"probe\":1,\"clock\":\"$clock\",\"kernel\":\"$(uname -r)\",\"default_threshold_ns\":$default_threshold,\"have_strace\":$have_strace,\"have_perf\":$have_perf,\"cpus\":$(nproc)}" >> "$res"

if [ "$micro" = 1 ] && in_parts overhead; then
  log "micro-costs (spantrack-microbench)"
  { "$tdir/spantrack-microbench" baseline && insmod "$ko" && "$tdir/spantrack-microbench" module && rmmod spantrack; } > "$out/micro-$clock.txt" 2>&1 \
    || log "microbench failed (see micro-$clock.txt)"
  module_off
fi

# Where a tracked system call's time goes: perf profiles (cpu-clock samples, kernel and user)
# of a getpid() loop on a registered thread outside any span and inside one open span.
if [ "${BENCH_PROFILE:-1}" = 1 ] && [ "$have_perf" = 1 ] && in_parts overhead; then
  log "profile of the system-call probe path (perf record -e cpu-clock, spantrack-bench spin)"
  for mode in tracked in-span; do
    module_off; module_on
    perf record -q -e cpu-clock -c 1000 -o "$work/spin.data" -- "$bench" spin --calls 300000 --mode "$mode" > "$work/spin.out" 2>&1
    { echo "# perf record -e cpu-clock -c 1000 -- spantrack-bench spin --calls 300000 --mode $mode ($clock): $(cat "$work/spin.out")"
      perf report -i "$work/spin.data" --stdio --sort sym --no-children 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
    } > "$out/profile-syscall-$mode-$clock.txt"
    rm -f "$work/spin.data"
  done
  module_off
fi

"$bench" sink --port-file "$work/sink.port" 2> "$work/sink.err" &
sink_pid=$!

# run CONFIG K N REP [profile]: one run, appended to results.jsonl; with "profile", the
# whole guest is sampled with perf (cpu-clock) during the run instead and the run is not
# counted: the report goes to profile-CONFIG-kK-nN.txt.
run() {
  local cfg=$1 k=$2 n=$3 rep=$4 prof=${5:-} pre=() env=() extra=() trace=otel peer_out="" mstats="null" t0 t1 line perf_pid=
  # RUN_APP=realistic (the realistic service): its own requests, database and result file.
  local app=${RUN_APP:-tiny} dst=$res app_json="" client_app=()
  if [ "$app" = realistic ]; then
    dst=$out/realistic.jsonl; app_json="\"app\":\"realistic\","
    extra+=(--app realistic --db "$work/currency.db"); client_app=(--app realistic)
    # RUN_SEED: the service's memory layout (--layout-seed; 0: none), recorded in the line.
    extra+=(--layout-seed "${RUN_SEED:-0}"); app_json+="\"layout_seed\":${RUN_SEED:-0},"
  fi
  dst=${RUN_DST:-$dst}
  case "$cfg" in
    none) module_off; trace=none;;
    otel) module_off;;
    otelko) module_off; module_on;;
    st1|st1all|st1sum|st1allsum|stdef|stfix)
      module_off; module_on   # fresh module: its stats are this run's
      if [ "$cfg" = stdef ] || [ "$cfg" = stfix ]; then echo "$default_threshold" > $sysfs/threshold_ns; else echo 1 > $sysfs/threshold_ns; fi
      if [ "$cfg" = st1sum ] || [ "$cfg" = st1allsum ]; then extra+=(--min-child-us 1000); fi
      env=(LD_PRELOAD="$hook" SPANHOOK_QUIET=1); trace=spantrack
      # threshold_ns=1 judges every span only in fixed mode (adaptive spans carry their
      # operation's own threshold); stdef runs as shipped, adaptive.
      if [ "$cfg" != stdef ]; then env+=(SPANTRACK_THRESHOLD=fixed); fi
      # st1all: st1 with the annotation budget and the per-operation cap (100 annotations/s)
      # lifted: every sampled span annotated.
      if [ "$cfg" = st1all ] || [ "$cfg" = st1allsum ]; then env+=(SPANTRACK_BUDGET_PCT=100 SPANTRACK_OP_ANNOTATIONS_PER_S=0); fi;;
    strace) module_off; peer_out=$work/strace.out; pre=(strace -f -qq -tt -T -o "$peer_out");;
    perf) module_off; peer_out=$work/perf.out; pre=(perf trace -o "$peer_out" --);;
    *) log "unknown config $cfg"; return;;
  esac
  [ "${BENCH_PHASES:-0}" = 1 ] && env+=(BENCH_PHASES=1)
  # RUN_MALLOC: glibc malloc tunables for the service (GLIBC_TUNABLES), recorded in the line.
  if [ -n "${RUN_MALLOC:-}" ]; then env+=(GLIBC_TUNABLES="$RUN_MALLOC"); app_json+="\"malloc\":\"$RUN_MALLOC\","; fi
  rm -f "$work/svc.port"
  if [ -n "$prof" ]; then
    perf record -q -a -e cpu-clock -c 5000 -o "$work/run.data" > /dev/null 2>&1 &
    perf_pid=$!
    sleep 1
  fi
  env "${env[@]}" "${pre[@]}" "$bench" serve --port-file "$work/svc.port" --trace "$trace" --getpid "$k" \
    --sink-port-file "$work/sink.port" "${extra[@]}" 2> "$work/svc.err" &
  local svc=$!
  t0=$(date +%s%N)
  line=$(timeout 1800 "$bench" client --port-file "$work/svc.port" --n "$n" --warmup "${RUN_WARMUP:-$warmup}" "${client_app[@]}" 2> "$work/client.err")
  local rc=$?
  t1=$(date +%s%N)
  wait "$svc" 2>/dev/null
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null
    local pf="$out/profile-$cfg-k$k-n$n-$clock.txt"
    [ "$app" = realistic ] && pf="$out/profile-realistic-$cfg-n$n-$clock.txt"
    { echo "# perf record -a -e cpu-clock during one run: $cfg k=$k n=$n ($clock); client: $line"
      echo "## by process (comm) and object (dso)"
      perf report -i "$work/run.data" --stdio --sort comm,dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
      echo "## by process and symbol"
      perf report -i "$work/run.data" --stdio --sort comm,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -70
      if [ "$app" = realistic ]; then
        # Sample counts (-c 5000 of cpu-clock: under -icount one sample = 5,000 instructions).
        echo "## samples by process (comm)"
        perf report -i "$work/run.data" --stdio -n --sort comm 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
        echo "## samples by process, object and symbol"
        perf report -i "$work/run.data" --stdio -n --sort comm,dso,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -150
        local c
        for c in conn spantrack-otel OpenTelemetry.T spanhook-reader; do
          echo "## samples of thread $c by object and symbol"
          perf report -i "$work/run.data" --stdio -n --comms "$c" --sort dso,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
        done
        # The service thread's every symbol (for diffs between configurations).
        perf report -i "$work/run.data" --stdio -n --comms conn --sort dso,sym 2>/dev/null | grep -v '^#' | grep -v '^$' > "${pf%.txt}-conn-all.txt"
      fi
    } > "$pf"
    rm -f "$work/run.data" "$peer_out"
    log "profiled $cfg k=$k n=$n -> $(basename "$pf")"
    return
  fi
  if [ $rc -ne 0 ] || [ -z "$line" ]; then
    log "FAILED: $cfg k=$k n=$n rep=$rep (client rc $rc): $(tail -c 400 "$work/client.err") $(tail -c 400 "$work/svc.err")"
    kill "$svc" 2>/dev/null; wait "$svc" 2>/dev/null
    line=null
  fi
  if [ -d "$sysfs" ] && [ "$trace" = spantrack ]; then
    mstats=$(awk 'BEGIN{printf "{"} NF==2{printf "%s\"%s\":%s", (n++?",":""), $1, $2} END{printf "}"}' /proc/spantrack/stats 2>/dev/null)
  fi
  local peer_lines=0
  if [ -n "$peer_out" ]; then peer_lines=$(wc -l < "$peer_out" 2>/dev/null || echo 0); rm -f "$peer_out"; fi
  # The processor's one-time symbol load, done before the client connects (serve waits).
  local syms_ms
  syms_ms=$(sed -n 's/.*stack symbols loaded \([0-9]*\) ms.*/\1/p' "$work/svc.err" | head -n 1)
  echo "{${app_json}\"clock\":\"$clock\",\"config\":\"$cfg\",\"k\":$k,\"n\":$n,\"rep\":$rep,\"run_ns\":$((t1 - t0)),\"peer_lines\":$peer_lines,\"symbols_ms\":${syms_ms:-null},\"module_stats\":$mstats,\"result\":$line}" >> "$dst"
  log "$app $cfg k=$k n=$n rep=$rep: $(echo "$line" | cut -c1-110)"
}

# Rotates a word list by R positions.
rotate() { local r=$1; shift; local a=("$@") i n=$#; for ((i = 0; i < n; i++)); do printf '%s ' "${a[(i + r) % n]}"; done; }

enabled() {
  case "$1" in
    strace) [ "$have_strace" = 1 ] && [ "$2" -le "$peer_max" ];;
    perf) [ "$have_perf" = 1 ] && [ "$2" -le "$peer_max" ];;
    *) return 0;;
  esac
}

# Profiles first (not counted): where OTel's and spantrack's time goes.
in_parts overhead && for spec in ${BENCH_PROFILE_RUNS:-}; do
  IFS=: read -r pc pk pn <<< "$spec"
  [ "$have_perf" = 1 ] && run "$pc" "$pk" "$pn" 0 profile
done

kreps=${BENCH_K_REPS:-1}
in_parts overhead || { reps=0; kreps=0; }
for ((rep = 1; rep <= (reps > kreps ? reps : kreps); rep++)); do
  # Fig. 4 (k = 0): every configuration, interleaved.
  [ "$rep" -le "$reps" ] && for n in $ns; do
    for cfg in $(rotate $((rep - 1)) $configs); do
      enabled "$cfg" "$n" && run "$cfg" 0 "$n" "$rep"
    done
  done
  # Fig. 5: k extra getpid per span.
  [ "$rep" -le "$kreps" ] && for n in $kns; do
    for k in $(rotate $((rep - 1)) $ks); do
      for cfg in $(rotate $((rep - 1)) $kconfigs); do
        run "$cfg" "$k" "$n" "$rep"
      done
    done
  done
done

# Part "realistic" (issue 16, item 3): the realistic service, -icount, interleaved.
if in_parts realistic; then
  echo "{\"probe\":1,\"app\":\"realistic\",\"clock\":\"$clock\",\"kernel\":\"$(uname -r)\",\"default_threshold_ns\":$default_threshold,\"cpus\":$(nproc),\"db\":\"$work/currency.db\",\"db_fs\":\"$(stat -f -c %T "$work")\"}" >> "$out/realistic.jsonl"
  rconfigs=${BENCH_REAL_CONFIGS:-"none otel otelko stdef st1all st1allsum"}
  # One run first, not counted: the boot's first run pays the binaries' page-ins from the
  # host (9p: the guest idles, and idle time passes at real time under -icount).
  RUN_APP=realistic RUN_DST=/dev/null RUN_WARMUP=200 run st1all 0 1000 0
  # Profiles first (not counted): BENCH_REAL_PROFILE_RUNS ["" ] "CONFIG:N ...".
  for spec in ${BENCH_REAL_PROFILE_RUNS:-}; do
    IFS=: read -r pc pn <<< "$spec"
    [ "$have_perf" = 1 ] && RUN_APP=realistic RUN_WARMUP=${BENCH_REAL_WARMUP:-200} run "$pc" 0 "$pn" 0 profile
  done
  # Each repetition runs the service under another memory layout (RUN_SEED, the service's
  # --layout-seed), the same for every configuration of that repetition.
  for ((rep = 1; rep <= ${BENCH_REAL_REPS:-3}; rep++)); do
    for cfg in $(rotate $((rep - 1)) $rconfigs); do
      RUN_SEED=$rep RUN_APP=realistic RUN_WARMUP=${BENCH_REAL_WARMUP:-200} run "$cfg" 0 "${BENCH_REAL_N:-5000}" "$rep"
    done
  done
  # Then one run each with the service thread's CPU time read around the phases of every
  # request (BENCH_PHASES=1: span start, work, reply, span end of the sampled requests; the
  # unsampled ones whole): four more system calls per request, three inside a sampled span,
  # so these runs are apart (realistic-phases.jsonl), never in the table above.
  # Again with glibc's malloc limited to one arena: how much of a thread's figure is the
  # allocator's handling of memory freed by other threads (the span data the worker and
  # the exporter free).
  # BENCH_REAL_PHASE_MALLOCS: the allocator settings, `default` for glibc's own.
  pconfigs=${BENCH_REAL_PHASE_CONFIGS-otel otelko stdef st1allsum st1all}
  for malloc in ${BENCH_REAL_PHASE_MALLOCS:-default glibc.malloc.arena_max=1}; do
    [ "$malloc" = default ] && malloc=
    for cfg in $pconfigs; do
      RUN_MALLOC=$malloc BENCH_PHASES=1 RUN_DST=$out/realistic-phases.jsonl RUN_APP=realistic RUN_WARMUP=${BENCH_REAL_WARMUP:-200} run "$cfg" 0 "${BENCH_REAL_N:-5000}" 0
    done
  done
  log "realistic done: $(grep -c '"config"' "$out/realistic.jsonl") runs"
fi
module_off
kill "$sink_pid" 2>/dev/null; wait "$sink_pid" 2>/dev/null
in_parts overhead && log "done: $(grep -c '"config"' "$res") runs in $res"
exit 0
