#!/usr/bin/env bash
# Install uv (Python package/project manager) from PyPI into the psvis cache.
# Prints the path of the uv binary on stdout.
set -euo pipefail

UV_VERSION=0.9.30

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

dest="$PSVIS_CACHE/uv/$UV_VERSION"
bin="$dest/venv/bin/uv"
stamp="$dest/.installed"

if [[ -x "$bin" && -f "$stamp" ]]; then
    echo "$bin"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
need "$PYTHON"
lock "uv-$UV_VERSION"
if [[ -x "$bin" && -f "$stamp" ]]; then
    echo "$bin"
    exit 0
fi

rm -rf "$dest"
mkdir -p "$dest"
log "installing uv $UV_VERSION from PyPI"
"$PYTHON" -m venv "$dest/venv"
"$dest/venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" >&2
got="$("$bin" --version 2>&1)" || die "installed uv does not run: $bin"
[[ "$got" == "uv $UV_VERSION"* ]] || die "expected uv $UV_VERSION, got '$got'"
touch "$stamp"
log "installed $got"
echo "$bin"
