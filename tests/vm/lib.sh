# Helpers for in-guest test scripts (sourced). Each check prints "ok - name" or
# "not ok - name: why"; the runner counts them.
ST_PASS=0; ST_FAIL=0
ok()   { ST_PASS=$((ST_PASS+1)); echo "ok - $*"; }
nok()  { ST_FAIL=$((ST_FAIL+1)); echo "not ok - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else nok "$name"; fi; }
finish() { echo "# $(basename "$0"): $ST_PASS passed, $ST_FAIL failed"; [ "$ST_FAIL" = 0 ]; }
# Kernel log lines written since the mark.
dmesg_mark() { dmesg | wc -l; }
dmesg_since() { dmesg | tail -n +"$(( $1 + 1 ))"; }
