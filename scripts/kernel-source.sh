#!/usr/bin/env bash
# Provides the Linux source tarball of one kernel SERIES without touching the host's apt
# sources, and prints "<debian version> <path of linux-source-SERIES.tar.xz>".
#
#   scripts/kernel-source.sh 6.12            the Debian 12/13 package linux-source-6.12
#                                            (installed by setup.sh through apt)
#   scripts/kernel-source.sh 7.3             linux-source-7.3 from deb.debian.org: the newest
#                                            version any of $KSOURCE_SUITES serves, downloaded
#                                            by URL from the suite's Packages index, its SHA256
#                                            checked against the index, unpacked with
#                                            dpkg-deb -x into $SPANTRACK_CACHE/src/
#   scripts/kernel-source.sh --refresh 7.3   re-read the indexes (a newer version gets its own
#                                            directory, and with it a new kernel cache key)
#   scripts/kernel-source.sh --config 7.3 cloud-amd64
#                                            Debian's own kernel config of that flavour for the
#                                            same version: linux-config-SERIES_<version>_amd64.deb
#                                            (built from the same source package, so its pool
#                                            path follows from the version), unpacked with
#                                            dpkg-deb -x; prints "<version> <path of the config>"
#
# Once a series has been fetched, later calls read nothing from the network: the version in
# use is the one recorded in $SPANTRACK_CACHE/src/linux-source-SERIES.current.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

refresh=0; config_flavour=
[ "${1:-}" = "--refresh" ] && { refresh=1; shift; }
if [ "${1:-}" = "--config" ]; then
  series=${2:?usage: kernel-source.sh --config SERIES FLAVOUR}
  config_flavour=${3:?usage: kernel-source.sh --config SERIES FLAVOUR}
  read -r ver _ < <("$0" "$series") || exit 1
  srcdir="$SPANTRACK_CACHE/src"
  dest="$srcdir/linux-config-${series}_$ver"
  cfg="$dest/config.amd64_none_$config_flavour"
  if [ ! -f "$cfg" ]; then
    command -v curl >/dev/null || die "curl missing (apt-get install curl)"
    MIRROR=${KSOURCE_MIRROR:-http://deb.debian.org/debian}
    url="$MIRROR/pool/main/l/linux/linux-config-${series}_${ver}_amd64.deb"
    mkdir -p "$dest"
    stage "kernel-source: Debian's kernel config: $url"
    curl -fsSL --retry 3 --max-time 600 "$url" -o "$dest/config.deb" || die "download of $url failed"
    rm -rf "$dest/x"; dpkg-deb -x "$dest/config.deb" "$dest/x" || die "dpkg-deb -x $dest/config.deb failed"
    xz=$dest/x/usr/src/linux-config-$series/config.amd64_none_$config_flavour.xz
    [ -f "$xz" ] || die "linux-config-$series $ver has no config.amd64_none_$config_flavour.xz (it has: $(ls "$dest/x/usr/src/linux-config-$series" | tr '\n' ' '))"
    stage "kernel-source: linux-config-${series}_${ver}_amd64.deb SHA256 $(sha256sum "$dest/config.deb" | cut -d' ' -f1)"
    xz -dc "$xz" > "$cfg.part" && mv "$cfg.part" "$cfg"
    rm -rf "$dest/x" "$dest/config.deb"
  fi
  echo "$ver $cfg"; exit 0
fi
series=${1:?usage: kernel-source.sh [--refresh] SERIES}
pkg="linux-source-$series"

if [ "$series" = 6.12 ]; then
  ver=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) \
    || die "package $pkg not installed (run scripts/setup.sh as root)"
  tarball=/usr/src/$pkg.tar.xz
  [ -f "$tarball" ] || die "$tarball missing (reinstall package $pkg)"
  echo "$ver $tarball"; exit 0
fi

MIRROR=${KSOURCE_MIRROR:-http://deb.debian.org/debian}
# Searched in this order; the highest version wins (dpkg --compare-versions), so a 7.3 final
# in sid or trixie-backports replaces the 7.3~rc build of experimental by itself.
KSOURCE_SUITES=${KSOURCE_SUITES:-"trixie-backports sid forky experimental"}
srcdir="$SPANTRACK_CACHE/src"
current="$srcdir/$pkg.current"

print_current() { # prints "<version> <tarball>" if the recorded version is unpacked
  [ -f "$current" ] || return 1
  local v d; v=$(cat "$current"); d="$srcdir/${pkg}_$v"
  [ -f "$d/.spantrack-unpacked" ] || return 1
  echo "$v $d/usr/src/$pkg.tar.xz"
}

if [ "$refresh" = 0 ] && print_current; then exit 0; fi

command -v curl >/dev/null || die "curl missing (apt-get install curl)"
command -v dpkg-deb >/dev/null || die "dpkg-deb missing (it comes with dpkg)"
mkdir -p "$srcdir"
exec 8>"$srcdir/.lock-$pkg"
flock 8
if [ "$refresh" = 0 ] && print_current; then exit 0; fi

# Find the newest $pkg among the suites' binary-all Packages indexes.
best_ver=; best_file=; best_sha=; best_suite=
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for suite in $KSOURCE_SUITES; do
  url="$MIRROR/dists/$suite/main/binary-all/Packages.xz"
  if ! curl -fsSL --retry 3 --max-time 120 "$url" -o "$tmp/Packages.xz"; then
    stage "kernel-source: no index at $url (skipped)"; continue
  fi
  # Paragraphs of $pkg: version, filename, sha256 (one line each).
  while read -r v f s; do
    [ -n "$v" ] || continue
    if [ -z "$best_ver" ] || dpkg --compare-versions "$v" gt "$best_ver"; then
      best_ver=$v; best_file=$f; best_sha=$s; best_suite=$suite
    fi
  done < <(xz -dc "$tmp/Packages.xz" | awk -v pkg="$pkg" '
    /^Package: / { p = ($2 == pkg); v = f = s = "" }
    p && /^Version: /  { v = $2 }
    p && /^Filename: / { f = $2 }
    p && /^SHA256: /   { s = $2 }
    /^$/ { if (p && v != "") print v, f, s; p = 0 }
    END  { if (p && v != "") print v, f, s }')
done
if [ -z "$best_ver" ]; then
  die "no $pkg in $MIRROR (suites: $KSOURCE_SUITES); set KSOURCE_SUITES, or pick another series"
fi

dest="$srcdir/${pkg}_$best_ver"
if [ ! -f "$dest/.spantrack-unpacked" ]; then
  deb="$srcdir/$(basename "$best_file")"
  stage "kernel-source: $pkg $best_ver from $best_suite: $MIRROR/$best_file"
  t0=$(now)
  curl -fSL --retry 3 --max-time 1800 -s "$MIRROR/$best_file" -o "$deb.part" \
    || die "download of $MIRROR/$best_file failed"
  got=$(sha256sum "$deb.part" | cut -d' ' -f1)
  [ "$got" = "$best_sha" ] || { rm -f "$deb.part"; die "SHA256 mismatch for $best_file: index says $best_sha, got $got"; }
  mv "$deb.part" "$deb"
  rm -rf "$dest"; mkdir -p "$dest"
  dpkg-deb -x "$deb" "$dest" || die "dpkg-deb -x $deb failed"
  [ -f "$dest/usr/src/$pkg.tar.xz" ] || die "$deb holds no usr/src/$pkg.tar.xz"
  rm -f "$deb"   # the unpacked tarball is all the build needs
  touch "$dest/.spantrack-unpacked"
  stage "kernel-source: $pkg $best_ver fetched, SHA256 checked, unpacked in $(elapsed "$t0")"
fi
echo "$best_ver" > "$current"
print_current
