#!/usr/bin/env bash
# `make demo`: builds what it needs (guest kernel, spantrack.ko, libspanhook.so, the demo
# services; setup.sh makes the Python venv), boots the VM, loads the module and runs two traced services
# (Python frontend, Rust currency service) under LD_PRELOAD=libspanhook.so; prints each slow
# trace as a tree with the system-call spans spantrack attached, and saves everything the
# OTLP receiver got in demo-output/ (traces.json, spans.jsonl, requests.json), with the trace
# view index.html (scripts/spantrack view), trace.chrome.json and otlp.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"
cd "$root"
"$here/setup.sh"
t0=$(now)
ko=$("$here/build-module.sh")
cargo build --release --workspace --quiet
stage "built in $(elapsed "$t0"); booting the VM"
keep="$root/build/demo-vm"
rm -rf "$keep"
set +e
"$here/vm-run.sh" --variant "${VARIANT:-release}" --timeout 1200 --keep "$keep" -- scripts/demo-guest.sh "$ko"
rc=$?
set -e
mkdir -p "$root/demo-output"
for f in traces.json spans.jsonl requests.json; do
  [ -f "$keep/demo-output/$f" ] && cp "$keep/demo-output/$f" "$root/demo-output/"
done
if [ -s "$root/demo-output/spans.jsonl" ]; then
  dout="$root/demo-output"
  if "$here/spantrack" view -q "$dout/spans.jsonl" -o "$dout/index.html" --chrome "$dout/trace.chrome.json" --otlp "$dout/otlp.json"; then
    stage "trace view: open file://$dout/index.html in a browser (one self-contained file); Perfetto or speedscope: $dout/trace.chrome.json; Jaeger: $dout/otlp.json"
  else
    stage "spantrack view failed: no demo-output/index.html"
  fi
fi
if [ "$rc" = 0 ]; then
  stage "saved: $root/demo-output/{traces.json,spans.jsonl,requests.json}"
else
  stage "demo failed (exit $rc); the guest's console log: $keep/console.log"
fi
exit "$rc"
