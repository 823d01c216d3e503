#!/bin/bash
# Host self-test of the in-guest runner (issue 13, item 8): a test program that aborts or
# crashes must fail its stage. Runs tests/vm/run.sh on t_vmtest.sh with a stub program
# (VMTEST_BIN) that prints one passing case and then dies, and with stub insmod/rmmod/lsmod
# (no module is loaded on the host). Prints "ok - ..." / "not ok - ..."; exit 0 if all pass.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/spantrack-runner.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
for c in insmod rmmod; do printf '#!/bin/sh\nexit 0\n' > "$work/bin/$c"; done
printf '#!/bin/sh\nexit 0\n' > "$work/bin/lsmod"
chmod +x "$work/bin"/*
fail=0
for how in abort segv exit3 pass; do
  case "$how" in
    abort) body='kill -ABRT $$';;
    segv) body='kill -SEGV $$';;
    exit3) body='exit 3';;
    pass) body='exit 0';;
  esac
  printf '#!/bin/bash\necho "ok - first case"\n%s\necho "ok - second case"\n' "$body" > "$work/prog-$how"
  chmod +x "$work/prog-$how"
  out=$(cd "$root" && PATH="$work/bin:$PATH" VMTEST_BIN="$work/prog-$how" bash tests/vm/run.sh /nonexistent.ko t_vmtest 2>&1)
  rc=$?
  if [ "$how" = pass ]; then
    good=$([ "$rc" = 0 ] && echo 1)
  else
    good=$([ "$rc" != 0 ] && grep -q '^not ok - spantrack-vmtest ran to its end' <<<"$out" && echo 1)
  fi
  if [ -n "$good" ]; then
    echo "ok - runner with a test program that ends by '$how': exit $rc"
  else
    echo "not ok - runner with a test program that ends by '$how': exit $rc, output:"; sed 's/^/#   /' <<<"$out"
    fail=1
  fi
done
exit "$fail"
