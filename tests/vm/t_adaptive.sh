#!/bin/bash
# Issue 14: per-operation adaptive thresholds against the real module. A Python service
# with two operations of very different speed (cache.get ~1 ms, report ~200 ms), each with
# injected outliers (x10): in adaptive mode, after warm-up, the outliers of both are
# annotated and the usual spans are not (each says why: threshold, source, the operation's
# estimates); in fixed mode one threshold floods one operation or misses the other's
# outliers (both shown). Also the begin line's threshold field at the proc interface.
. "$(dirname "$0")/lib.sh"
ko=$1
st_setup
trap 'rm -rf "$t"' EXIT
if [ ! -x "$py" ]; then nok "Python venv present"; finish; exit; fi
lsmod | grep -q '^spantrack' && rmmod spantrack
insmod "$ko" || { nok "insmod"; finish; exit; }
ok "insmod"

# --- The begin line's threshold (ABI 4), raw ----------------------------------------------
out=$("$py" - <<'PY'
import errno, fcntl, os
REGISTER = (0xB9 << 8) | 0x91
c = os.open("/proc/spantrack/control", os.O_RDONLY)
fcntl.ioctl(c, REGISTER)
b = os.open("/proc/spantrack/begin", os.O_WRONLY)
e = os.open("/proc/spantrack/end", os.O_WRONLY)
ids = "0af7651916cd43dd8448eb211c80319c b7ad6b71692033%02x"
def w(fd, s):
    try:
        os.write(fd, s.encode())
        return 0
    except OSError as x:
        return errno.errorcode[x.errno]
res = {}
res["old"] = (w(b, ids % 1 + "\n"), w(e, ids % 1 + "\n"))
res["own"] = (w(b, ids % 2 + " 5000000\n"), w(e, ids % 2 + "\n"))
res["max"] = (w(b, ids % 3 + " 3600000000000\n"), w(e, ids % 3 + "\n"))
res["range"] = w(b, ids % 4 + " 3600000000001\n")
res["letters"] = w(b, ids % 5 + " 5ms\n")
res["two_spaces"] = w(b, ids % 6 + "  5\n")
res["end_with_threshold"] = (w(b, ids % 7 + "\n"), w(e, ids % 7 + " 5\n"), w(e, ids % 7 + "\n"))
res["refused_left_nothing_open"] = w(e, ids % 4 + "\n")
print(res)
PY
)
echo "# $out"
check "begin line without a threshold still accepted" grep -q "'old': (0, 0)" <<<"$out"
check "begin line with a threshold accepted" grep -q "'own': (0, 0)" <<<"$out"
check "threshold of 1 hour accepted (64-byte line)" grep -q "'max': (0, 0)" <<<"$out"
check "threshold above 1 hour: ERANGE" grep -q "'range': 'ERANGE'" <<<"$out"
check "malformed threshold: EINVAL" grep -q "'letters': 'EINVAL', 'two_spaces': 'EINVAL'" <<<"$out"
check "an end line takes no threshold (EINVAL, span still open)" grep -q "'end_with_threshold': (0, 'EINVAL', 0)" <<<"$out"
check "a refused begin opened nothing (ENOENT at its end)" grep -q "'refused_left_nothing_open': 'ENOENT'" <<<"$out"

# A span with its own threshold is judged by it, not by threshold_ns.
echo 1000000 > /sys/kernel/spantrack/threshold_ns
slow0=$(awk '$1=="spans_slow"{print $2}' /proc/spantrack/stats)
"$py" - <<'PY'
import fcntl, os, time
c = os.open("/proc/spantrack/control", os.O_RDONLY); fcntl.ioctl(c, (0xB9 << 8) | 0x91)
b = os.open("/proc/spantrack/begin", os.O_WRONLY); e = os.open("/proc/spantrack/end", os.O_WRONLY)
ids = "1af7651916cd43dd8448eb211c80319c b7ad6b71692033%02x"
os.write(b, (ids % 1 + " 500000000\n").encode()); time.sleep(0.01); os.write(e, (ids % 1 + "\n").encode())  # 10 ms < own 500 ms: fast
os.write(b, (ids % 2 + " 1000\n").encode()); os.write(e, (ids % 2 + "\n").encode())                            # ~0 ms >= own 1 us: slow
PY
slow1=$(awk '$1=="spans_slow"{print $2}' /proc/spantrack/stats)
check "own thresholds decide at the end (10 ms over 500 ms: fast; a few us over 1 us: slow)" [ $((slow1 - slow0)) = 1 ]

# --- Adaptive (default) and fixed: two operations, outliers x10 ------------------------------
# Timing under QEMU TCG on a shared host is noisy (a 1 ms computation has been seen to take
# 150 ms): each scenario is tried up to 3 times and the last attempt is reported; the
# attempts before it are shown as comments. When more than 2% of an operation's usual spans
# took 5 times their length (half an outlier's), or more than 5% of those before its first
# outlier (the samples its first adaptive threshold comes from: p95), in every attempt, no
# threshold can tell the outliers from the VM's noise: the checks that failed then are
# reported as skipped, with the noise measured.
run() { env LD_PRELOAD="$lib" PYTHONPATH="$root/preload/python" SPANTRACK_OPS_DIR="$t/ops" "$@"; }
q() { "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"d": d}))' "$@"; }
# A scenario: NAME THRESHOLD_NS CHECKS_FILE ENV...; the checks are "name<TAB>python condition".
scenario() {
  local name=$1 thr=$2 checks=$3; shift 3
  local attempt all quiet
  for attempt in 1 2 3; do
    echo "$thr" > /sys/kernel/spantrack/threshold_ns
    run "$@" "$py" preload/python/tests/vm_adaptive.py "$t/$name.json" 2>"$t/$name.err"
    echo "# $name (attempt $attempt): $(q "$t/$name.json" '{k: {x: v[x] for x in ("spans","stretched","outliers","outliers_slow","outliers_annotated","normal","normal_slow","normal_annotated","sources")} for k, v in d["ops"].items()}' 2>&1)"
    echo "# $name (attempt $attempt) noise: $(q "$t/$name.json" '{k: (v["early_stretched"], v["early_spans"], v["stretched_at"]) for k, v in d["ops"].items()}' 2>&1)"
    quiet=$(q "$t/$name.json" "all(v['stretched'] * 50 <= v['spans'] and v['early_stretched'] * 20 <= v['early_spans'] for v in d['ops'].values())" 2>/dev/null)
    all=True
    while IFS=$'\t' read -r cname cond; do
      [ "$(q "$t/$name.json" "$cond" 2>/dev/null)" = True ] || all=False
    done < "$checks"
    [ "$all" = True ] && break
    [ "$attempt" -lt 3 ] && echo "# $name: attempt $attempt failed (a noisy VM?), again"
  done
  while IFS=$'\t' read -r cname cond; do
    if [ "$(q "$t/$name.json" "$cond" 2>/dev/null)" = True ]; then
      ok "$name: $cname"
    elif [ "$quiet" != True ]; then
      ok "$name: $cname # SKIP the VM is too noisy to judge: $(q "$t/$name.json" '{k: "%d of %d usual spans took 5x their length, %d of the %d before the first outlier" % (v["stretched"], v["spans"], v["early_stretched"], v["early_spans"]) for k, v in d["ops"].items()}')"
    else
      nok "$name: $cname"
    fi
  done < "$checks"
}
printf '%s\t%s\n' \
  "the hook is in" 'd["hooked"]' \
  "every outlier of cache.get (x10) judged slow" "d['ops']['cache.get']['outliers_slow'] == d['ops']['cache.get']['outliers'] > 0" \
  "every outlier of report (x10) judged slow" "d['ops']['report']['outliers_slow'] == d['ops']['report']['outliers'] > 0" \
  "usual cache.get spans not slow (at most 5%: p95)" "d['ops']['cache.get']['normal_slow'] <= 1 + d['ops']['cache.get']['normal'] // 20" \
  "usual report spans not slow (at most 5%: p95)" "d['ops']['report']['normal_slow'] <= 1 + d['ops']['report']['normal'] // 20" \
  "slow spans annotated with their calls (most: a record may be late on a loaded host)" "all(v['outliers_annotated'] * 2 >= v['outliers'] for v in d['ops'].values())" \
  "annotated spans say why (threshold, source adaptive, p50/p95/p99, samples, cv)" "all(w.get('spantrack.threshold.source') == 'adaptive' and all(k in w for k in ('spantrack.threshold_ns','spantrack.op.p50_ns','spantrack.op.p95_ns','spantrack.op.p99_ns','spantrack.op.samples','spantrack.op.cv')) for v in d['ops'].values() for w in v['why'])" \
  "each operation its own threshold (report's >= 200 ms, cache.get's < 50 ms)" "min(w['spantrack.threshold_ns'] for w in d['ops']['report']['why']) >= 200e6 and max(w['spantrack.threshold_ns'] for w in d['ops']['cache.get']['why']) < 50e6" \
  > "$t/adaptive.checks"
# p95 (the default) with a warm-up of 25 (the default 59 would take 12 s of `report`).
scenario adaptive 5000000 "$t/adaptive.checks" SPANTRACK_THRESHOLD_WARMUP=25
echo "# adaptive outliers: $(q "$t/adaptive.json" '{k: v["outlier_detail"] for k, v in d["ops"].items()}')"
check "adaptive: the library published its operations for spantrack top, and removed them at exit" \
  [ -d "$t/ops" -a -z "$(ls "$t/ops")" ]

# Fixed at 5 ms: cache.get's 10 ms outliers are seen, but every usual 200 ms report is
# "slow" (a flood).
printf '%s\t%s\n' \
  "cache.get's outliers slow" "d['ops']['cache.get']['outliers_slow'] == d['ops']['cache.get']['outliers']" \
  "report flooded (every usual report span slow)" "d['ops']['report']['normal_slow'] == d['ops']['report']['normal'] > 0" \
  "slow spans say source fixed" "all(v['sources'] == ['fixed'] for v in d['ops'].values())" \
  > "$t/fixed5.checks"
scenario fixed5 5000000 "$t/fixed5.checks" SPANTRACK_THRESHOLD=fixed VM_ADAPTIVE_WARM=0
# Fixed at 500 ms: report's usual spans are quiet, but cache.get's outliers are missed.
printf '%s\t%s\n' \
  "report's outliers slow, its usual spans not" "d['ops']['report']['outliers_slow'] == d['ops']['report']['outliers'] and d['ops']['report']['normal_slow'] == 0" \
  "cache.get's outliers missed (none slow)" "d['ops']['cache.get']['outliers_slow'] == 0" \
  > "$t/fixed500.checks"
scenario fixed500 500000000 "$t/fixed500.checks" SPANTRACK_THRESHOLD=fixed VM_ADAPTIVE_WARM=0
for f in adaptive fixed5 fixed500; do
  if grep -qv '^spanhook' "$t/$f.err" 2>/dev/null && [ -s "$t/$f.err" ]; then echo "# $f stderr: $(head -c 400 "$t/$f.err")"; fi
done
echo 1000000 > /sys/kernel/spantrack/threshold_ns
rmmod spantrack && ok "rmmod"
finish
