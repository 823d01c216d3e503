#!/bin/bash
# Host self-test of tests/vm/run.sh's test selection (issue 15: make test's 7.3 stage runs a
# named list): in a scratch copy of tests/vm with stub tests and stub lsmod/rmmod,
#  - "--tests a b" runs exactly a and b, in that order, and passes when they pass;
#  - a name with no test fails the run (a typo in the list must not shrink it silently);
#  - a named test that fails fails the run;
#  - "--tests" without names is a usage error;
#  - the FILTER form still selects by substring, and no argument runs every t_*.sh.
# Prints "ok - ..." / "not ok - ..."; exit 0 if all pass.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/spantrack-runlist.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tests/vm" "$work/bin"
cp "$root/tests/vm/run.sh" "$work/tests/vm/run.sh"
printf '#!/bin/sh\nexit 0\n' > "$work/bin/lsmod"; cp "$work/bin/lsmod" "$work/bin/rmmod"; chmod +x "$work/bin"/*
for n in t_alpha t_beta t_gamma t_beta_two; do
  printf '#!/bin/bash\necho "ran %s"\necho "ok - %s"\necho "# %s: 1 passed, 0 failed"\n' "$n" "$n" "$n" > "$work/tests/vm/$n.sh"
done
printf '#!/bin/bash\necho "ran t_bad"\necho "not ok - t_bad"\necho "# t_bad: 0 passed, 1 failed"\n' > "$work/tests/vm/t_bad.sh"
fail=0
run() { (cd / && PATH="$work/bin:$PATH" bash "$work/tests/vm/run.sh" /x.ko "$@" 2>&1); }
check() { # description, condition result (0 = good), output
  if [ "$2" = 0 ]; then echo "ok - $1"; else echo "not ok - $1; output:"; sed 's/^/#   /' <<<"$3"; fail=1; fi
}

out=$(run --tests t_gamma t_alpha.sh); rc=$?
[ "$rc" = 0 ] && [ "$(grep '^ran ' <<<"$out" | tr '\n' ' ')" = "ran t_gamma ran t_alpha " ] \
  && grep -q '^vm: 2 passed, 0 failed (2 test scripts)$' <<<"$out"
check "--tests runs exactly the named tests, in order (exit $rc)" $? "$out"

out=$(run --tests t_alpha t_nosuch); rc=$?
[ "$rc" != 0 ] && grep -q '^not ok - tests/vm/t_nosuch.sh: no such test' <<<"$out" && grep -q '^ran t_alpha' <<<"$out"
check "--tests with an unknown name fails the run (exit $rc)" $? "$out"

out=$(run --tests t_alpha t_bad); rc=$?
[ "$rc" != 0 ] && grep -q '^vm: 1 passed, 1 failed' <<<"$out"
check "--tests with a failing test fails the run (exit $rc)" $? "$out"

out=$(run --tests); rc=$?
[ "$rc" = 2 ]
check "--tests without names is a usage error (exit $rc)" $? "$out"

out=$(run beta); rc=$?
[ "$rc" = 0 ] && [ "$(grep -c '^ran ' <<<"$out")" = 2 ] && grep -q '^ran t_beta$' <<<"$out" && grep -q '^ran t_beta_two$' <<<"$out"
check "a FILTER selects by substring (exit $rc)" $? "$out"

out=$(run); rc=$?
[ "$rc" != 0 ] && [ "$(grep -c '^ran ' <<<"$out")" = 5 ]
check "no argument runs every t_*.sh (t_bad fails it: exit $rc)" $? "$out"

exit "$fail"
