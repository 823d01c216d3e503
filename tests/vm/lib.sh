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
# What the preload and Python tests start from: the repository as the working directory;
# root (its path), lib (libspanhook.so), venv and py (the venv's Python); t, a fresh scratch
# directory named after the test (the test removes it).
st_setup() {
  cd "$(dirname "$0")/../.." || exit 1
  root=$PWD
  lib=${SPANHOOK_LIB:-$root/target/release/libspanhook.so}
  venv=${SPANTRACK_VENV:-$(scripts/python-env.sh 2>/dev/null)}
  py=$venv/bin/python
  t=$(mktemp -d "/tmp/$(basename "$0" .sh).XXXXXX")
}
