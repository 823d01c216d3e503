#!/bin/bash
# Other users. Two unprivileged uids made up in the guest (setpriv with numeric ids; the
# guest's /etc/passwd is the host's, read-only):
#  - uid 4321, a service preloaded with libspanhook.so, is annotated end to end (the Rust
#    demo service's self-test: its slow spans carry exactly their system calls); it reads
#    its records through the descriptors of IOCTL_RELAY_FDS, as debugfs is root's;
#  - uid 4321 again (spantrack-stress child-users-service) holds a slow span open while
#    uid 4322 (child-users-intruder) tries to end it (EPERM unregistered, ENOENT
#    registered), to read its records (debugfs EACCES, /proc/PID/fd EACCES, pidfd_getfd
#    EPERM, RELAY_FDS ENOENT), to unregister it (ENOENT: only itself), and to change any
#    tunable (EACCES); the service then ends its span and gets its exact record, and the
#    intruder, once registered, sees only its own records;
#  - a user cannot pin unbounded kernel memory with relay descriptors of closed channels,
#    nor take the process table (max_procs_per_uid): another user's service is annotated.
. "$(dirname "$0")/lib.sh"
ko=$1
A=4321; B=4322
tmp=$(mktemp -d /tmp/t_users.XXXXXX)
chmod 755 "$tmp"
# Copies the users can execute whatever the permissions of the repository's directories.
for f in target/release/spantrack-stress target/release/libspanhook.so target/release/spantrack-rust-demo-svc; do
  [ -f "$f" ] || { nok "binaries built ($f missing: cargo build --release --workspace)"; finish; exit; }
  cp "$f" "$tmp/" && chmod 755 "$tmp/$(basename "$f")"
done
as() { local u=$1; shift; setpriv --reuid="$u" --regid="$u" --clear-groups --inh-caps=-all -- "$@"; }
# Shows a child's output, counts its own ok lines, returns its result line.
result_of() { grep '^result ' "$1" | tail -1; }
expect() {  # expect FILE WHO key=value...
  local file=$1 who=$2 r kv bad=""; shift 2
  r=" $(result_of "$file") "
  for kv in "$@"; do
    case "$r" in *" $kv "*) ;; *) bad+=" $kv";; esac
  done
  if [ -z "$bad" ]; then ok "$who: $*"
  else nok "$who: expected$bad; got:$r"; fi
}

insmod "$ko" || { nok "insmod"; finish; exit; }
mark=$(dmesg_mark)
thr=/sys/kernel/spantrack/threshold_ns
old_thr=$(cat $thr)
echo 2000000 > $thr
s0=$(cat /proc/spantrack/stats)
stat() { awk -v k="$1" '$1 == k { print $2 }' <<<"$2"; }

# --- 1. An unprivileged service, preloaded, annotated end to end --------------------------
out=$(cd "$tmp" && as $A env LD_PRELOAD="$tmp/libspanhook.so" "$tmp/spantrack-rust-demo-svc" --selftest active 2>"$tmp/svc.err"); rc=$?
echo "$out" | sed 's/^ok - /# (uid '$A' self-test) ok - /; s/^not ok - /# (uid '$A' self-test) NOT OK - /'
# Its one check that changes a tunable (threshold_ns, root's) must fail, with EACCES.
n_ok=$(grep -c '^ok - ' <<<"$out")
others=$(grep '^not ok - ' <<<"$out" | grep -v 'threshold change seen live: write /sys/kernel/spantrack/threshold_ns: Permission denied')
if [ "$n_ok" -ge 10 ] && [ -z "$others" ] && grep -q 'exactly its system calls as children' <<<"$out" && ! grep -q '^spanhook' "$tmp/svc.err"; then
  ok "uid $A: the preloaded service's self-test passes its $n_ok annotation checks (slow spans carry exactly their system calls), library silent"
else
  nok "uid $A: the preloaded service's self-test (exit $rc, $n_ok ok; failures: $others)"; sed 's/^/# stderr: /' "$tmp/svc.err" | head
fi
check "uid $A: the self-test's live threshold change is refused (sysfs is root's: EACCES)" \
  grep -q '^not ok - .*threshold change seen live: write /sys/kernel/spantrack/threshold_ns: Permission denied' <<<"$out"

# --- 2. Another user against a running service --------------------------------------------
mkfifo "$tmp/go"; chmod 666 "$tmp/go"
as $A "$tmp/spantrack-stress" child-users-service <"$tmp/go" >"$tmp/service.out" 2>&1 &
spid=$!
exec 3>"$tmp/go"
for i in $(seq 200); do grep -q '^ready ' "$tmp/service.out" && break; sleep 0.05; done
ready=$(grep '^ready ' "$tmp/service.out")
echo "# service: $ready"
if [ -z "$ready" ]; then
  nok "uid $A service ready"; cat "$tmp/service.out"; exec 3>&-; wait $spid
else
  pid=$(sed 's/.* pid=\([0-9]*\).*/\1/' <<<"$ready")
  line=$(sed 's/.* line=\([^ ]*\).*/\1/' <<<"$ready")
  fd=$(sed 's/.* fd=\([-0-9]*\).*/\1/' <<<"$ready")
  as $B "$tmp/spantrack-stress" child-users-intruder "$pid" "$line" "$fd" >"$tmp/intruder.out" 2>&1
  echo "# intruder: $(result_of "$tmp/intruder.out")"
  W=EACCES
  expect "$tmp/intruder.out" "uid $B cannot end uid $A's span" end_unregistered=EPERM end_registered=ENOENT
  expect "$tmp/intruder.out" "uid $B cannot read uid $A's records (debugfs, /proc/PID/fd, pidfd_getfd, RELAY_FDS)" \
    debugfs_dir=$W debugfs_file=$W proc_fd=$W pidfd_getfd=EPERM relay_fds_unregistered=ENOENT
  expect "$tmp/intruder.out" "uid $B cannot unregister uid $A's process (only itself)" unregister=ENOENT unregister_thread=ENOENT
  expect "$tmp/intruder.out" "uid $B cannot write any tunable (open for writing: EACCES), may read them" \
    sysfs_write=EACCES,EACCES,EACCES,EACCES,EACCES sysfs_read=ok
  expect "$tmp/intruder.out" "uid $B registers itself only, and sees only its own spans and records" \
    register=ok info_registered=1 info_written=0 begin_same_ids=ok end_same_ids=ok own_record=found foreign=0 unregister_self=ok
  echo go >&3; exec 3>&-
  wait $spid; src=$?
  echo "# service: $(result_of "$tmp/service.out")"
  expect "$tmp/service.out" "uid $A registers and reads its records through RELAY_FDS (debugfs closed to it)" \
    register=ok debugfs=EACCES begin=ok
  expect "$tmp/service.out" "uid $A's span survived the other user and its record is exact (no foreign record)" \
    end=ok record=exact records_seen=1 foreign=0 info_registered=1 info_written=1
  expect "$tmp/service.out" "uid $A's relay descriptors read EIO after its UNREGISTER (channel closed)" unregister=ok read_after_unregister=EIO
  check "uid $A service exited 0 ($src)" [ "$src" = 0 ]
fi

# --- 3. Kernel memory a user can pin --------------------------------------------------------
# Descriptors keep a closed channel's buffers (1 MiB per CPU): REGISTER is refused while the
# user holds max_procs_per_uid (16) closed channels that way (EDQUOT), and works again once it
# closes them. Meanwhile another user's service registers and is annotated.
mpu=/sys/kernel/spantrack/max_procs_per_uid
check "max_procs_per_uid defaults to 16" [ "$(cat $mpu)" = 16 ]
s_ref=$(cat /proc/spantrack/stats)
mkfifo "$tmp/go2"; chmod 666 "$tmp/go2"
as $A "$tmp/spantrack-stress" child-users-pin hold <"$tmp/go2" >"$tmp/pin.out" 2>&1 &
ppid=$!
exec 4>"$tmp/go2"
for i in $(seq 400); do grep -q '^held ' "$tmp/pin.out" && break; sleep 0.05; done
echo "# pin: $(grep '^held ' "$tmp/pin.out")"
check "uid $A holds 16 closed channels and is refused the 17th (EDQUOT)" grep -q '^held rounds=16 refused=EDQUOT' "$tmp/pin.out"
out=$(cd "$tmp" && as $B env LD_PRELOAD="$tmp/libspanhook.so" "$tmp/spantrack-rust-demo-svc" --selftest active 2>"$tmp/svcB.err")
if grep -q 'exactly its system calls as children' <<<"$out" && ! grep -q '^spanhook' "$tmp/svcB.err"; then
  ok "uid $B's service registers and is annotated while uid $A has used up its share"
else
  nok "uid $B's service while uid $A has used up its share"; sed 's/^/# /' "$tmp/svcB.err" | head -5
  grep '^not ok' <<<"$out" | head -5
fi
echo go >&4; exec 4>&-
wait $ppid
echo "# pin: $(result_of "$tmp/pin.out")"
expect "$tmp/pin.out" "uid $A registers again once it closes them" \
  pinned_rounds=16 refused=EDQUOT register_after_close=ok unregister=ok
s_ref1=$(cat /proc/spantrack/stats)
check "that refusal is counted (processes_refused_uid +$(( $(stat processes_refused_uid "$s_ref1") - $(stat processes_refused_uid "$s_ref") )))" \
  [ $(( $(stat processes_refused_uid "$s_ref1") - $(stat processes_refused_uid "$s_ref") )) = 1 ]

# --- 4. Registered processes per user ------------------------------------------------------
for v in 0 65 abc -1; do
  if echo "$v" > $mpu 2>/dev/null; then nok "max_procs_per_uid=$v refused"; else ok "max_procs_per_uid=$v refused"; fi
done
check "a refused value changes nothing" [ "$(cat $mpu)" = 16 ]
echo 2 > $mpu
holders=()
for i in 1 2; do
  (cd "$tmp" && exec setpriv --reuid=$A --regid=$A --clear-groups --inh-caps=-all -- env LD_PRELOAD="$tmp/libspanhook.so" sleep 30) 2>"$tmp/hold$i.err" &
  holders+=($!)
done
for i in $(seq 100); do
  [ "$(stat processes "$(cat /proc/spantrack/stats)")" -ge $(( $(stat processes "$s0") + 2 )) ] && break; sleep 0.05
done
third=$(cd "$tmp" && as $A env LD_PRELOAD="$tmp/libspanhook.so" true 2>&1)
echo "# third process of uid $A: $third"
check "uid $A's third process is refused, and the library says why (max_procs_per_uid 2)" \
  grep -q 'spanhook: inactive (ioctl REGISTER: this user already has the most processes registered' <<<"$third"
other=$(cd "$tmp" && as $B env LD_PRELOAD="$tmp/libspanhook.so" true 2>&1)
check "uid $B registers meanwhile (library silent: '$other')" [ -z "$other" ]
mine=$(LD_PRELOAD="$tmp/libspanhook.so" true 2>&1)
check "root registers meanwhile, exempt (library silent: '$mine')" [ -z "$mine" ]
kill "${holders[@]}" 2>/dev/null; wait "${holders[@]}" 2>/dev/null
echo 16 > $mpu

# --- 3. Root's view afterwards --------------------------------------------------------------
s1=$(cat /proc/spantrack/stats)
for k in processes threads open_spans; do
  check "afterwards: $k back to $(stat $k "$s0") (now $(stat $k "$s1"))" [ "$(stat $k "$s1")" = "$(stat $k "$s0")" ]
done
w=$(stat records_written "$s1"); d=$(stat records_dropped "$s1"); sl=$(stat spans_slow "$s1")
check "records written $w + dropped $d = slow spans $sl" [ $((w + d)) = "$sl" ]
echo "$old_thr" > $thr
rmmod spantrack || nok "rmmod"
rm -rf "$tmp"
finish
