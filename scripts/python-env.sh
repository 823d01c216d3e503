#!/usr/bin/env bash
# Creates (once) the Python virtual environment of the demo and the Python tests, outside the
# repository: ${SPANTRACK_CACHE:-~/.cache/spantrack}/venv, with the pinned packages of
# preload/python/requirements.txt (OpenTelemetry SDK, OTLP/HTTP exporter, opentelemetry-proto,
# oteltest for its `otelsink` receiver). Prints the venv's path on stdout.
#
# Idempotent: a second run compares a stamp (interpreter + requirements) and returns at once.
# The venv works inside the VM too (the guest sees the host's filesystem at the same paths).
# SPANTRACK_PYTHON picks the interpreter (default: Debian's /usr/bin/python3, else python3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

req="$root/preload/python/requirements.txt"
venv="$SPANTRACK_CACHE/venv"

py=${SPANTRACK_PYTHON:-}
if [ -z "$py" ]; then
  if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py=$(command -v python3 || true); fi
fi
[ -n "$py" ] && [ -x "$py" ] || die "python-env.sh: no python3 found (install python3 and python3-venv: scripts/setup.sh)"
# The real interpreter (not a pyenv shim), so that the venv works where PATH differs (VM).
py=$("$py" -c 'import os, sys; print(os.path.realpath(sys.executable))')

stamp_want=$( { "$py" --version 2>&1; echo "$py"; cat "$req"; } | sha256sum | cut -c1-16)
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.spantrack-stamp" 2>/dev/null)" = "$stamp_want" ]; then
  echo "$venv"; exit 0
fi

stage "python-env.sh: creating $venv ($("$py" --version 2>&1))"
mkdir -p "$SPANTRACK_CACHE"
rm -rf "$venv"
"$py" -m venv "$venv" >&2 \
  || die "python-env.sh: '$py -m venv' failed (Debian: apt-get install python3-venv)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req" >&2 \
  || { rm -rf "$venv"; die "python-env.sh: pip install -r $req failed"; }
"$venv/bin/python" -c 'import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter, opentelemetry.proto.collector.trace.v1.trace_service_pb2, oteltest' \
  || { rm -rf "$venv"; die "python-env.sh: the venv's packages do not import"; }
[ -x "$venv/bin/otelsink" ] || { rm -rf "$venv"; die "python-env.sh: oteltest installed no otelsink"; }
echo "$stamp_want" > "$venv/.spantrack-stamp"
echo "$venv"
