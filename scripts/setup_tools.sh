#!/usr/bin/env bash
# Provision perf_analyzer (used by `tritonctl benchmark`) into the virtual environment, without touching the system.
#
# perf_analyzer 2.60 ships on PyPI as the wheel `perf-analyzer` for manylinux_2_38 only. On a glibc older than 2.38
# (Debian 12 here) it runs through Debian 13's loader and C/C++ runtime (libc6, libstdc++6, libgcc-s1), fetched with a
# private apt sources list and unpacked with `dpkg -x` into a private folder: <dir>/ld-linux-x86-64.so.2
# --library-path <dir>:/lib/x86_64-linux-gnu perf_analyzer ... . A perf_analyzer already on PATH is left alone.
# Idempotent: a working $VENV/bin/perf_analyzer ends it at once.
set -euo pipefail
VENV=${1:-.venv}
WRAPPER="$VENV/bin/perf_analyzer"
PA_VERSION=2.60.0

if [ -x "$WRAPPER" ] && "$WRAPPER" --version >/dev/null 2>&1; then exit 0; fi
if command -v perf_analyzer >/dev/null 2>&1 && perf_analyzer --version >/dev/null 2>&1; then
  echo "perf_analyzer: using $(command -v perf_analyzer)"; exit 0
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "perf_analyzer: no wheel for $(uname -m); \`tritonctl benchmark\` will say so"; exit 0
fi

DEST="$(mkdir -p "$VENV/opt/perf_analyzer" && cd "$VENV/opt/perf_analyzer" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$VENV/bin/python" -m pip download -q --disable-pip-version-check "perf-analyzer==$PA_VERSION" --no-deps \
  --only-binary=:all: --platform manylinux_2_38_x86_64 -d "$TMP/wheel" 2> >(grep -v "^WARNING: Location" >&2)
"$VENV/bin/python" -m zipfile -e "$TMP"/wheel/*.whl "$TMP/unpacked"
install -m 755 "$TMP/unpacked/perf_analyzer/bin/perf_analyzer" "$DEST/perf_analyzer"

glibc="$(getconf GNU_LIBC_VERSION | awk '{print $2}')"
if [ "$(printf '%s\n2.38\n' "$glibc" | sort -V | head -n1)" = "2.38" ]; then
  printf '#!/bin/sh\nexec "%s/perf_analyzer" "$@"\n' "$DEST" > "$WRAPPER"
else
  mkdir -p "$TMP/apt/lists/partial" "$TMP/apt/cache/archives/partial" "$TMP/debs"
  echo "deb http://deb.debian.org/debian trixie main" > "$TMP/apt/sources.list"
  APT=(-q -oDir::Etc::SourceList="$TMP/apt/sources.list" -oDir::Etc::SourceParts=/nonexistent
       -oDir::State::Lists="$TMP/apt/lists" -oDir::Cache="$TMP/apt/cache" -oAPT::Sandbox::User=root)
  apt-get "${APT[@]}" update >/dev/null
  (cd "$TMP/debs" && apt-get "${APT[@]}" download libc6 libstdc++6 libgcc-s1 >/dev/null)
  rm -rf "$DEST/runtime" && mkdir -p "$DEST/runtime"
  for deb in "$TMP"/debs/*.deb; do dpkg -x "$deb" "$TMP/root"; done
  cp -a "$TMP"/root/usr/lib/x86_64-linux-gnu/. "$DEST/runtime/"
  printf '#!/bin/sh\nexec "%s/runtime/ld-linux-x86-64.so.2" --library-path "%s/runtime:/lib/x86_64-linux-gnu" "%s/perf_analyzer" "$@"\n' \
    "$DEST" "$DEST" "$DEST" > "$WRAPPER"
fi
chmod +x "$WRAPPER"
"$WRAPPER" --version
