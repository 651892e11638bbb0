#!/usr/bin/env bash
# Build FerretDB (MongoDB wire protocol on SQLite) into the psvis cache.
# Prints the path of the ferretdb binary on stdout.
#
# The Go proxy refuses `go install ...ferretdb@v1.24.1` and `@v1.24.0` fails
# while reading the module's version list, so we download the module source
# with `go mod download` and build it ourselves.
set -euo pipefail

FERRETDB_VERSION=v1.24.0

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

dest="$PSVIS_CACHE/ferretdb/$FERRETDB_VERSION"
bin="$dest/bin/ferretdb"
stamp="$dest/.installed"

if [[ -x "$bin" && -f "$stamp" ]]; then
    echo "$bin"
    exit 0
fi

need go python3
go_env
lock "ferretdb-$FERRETDB_VERSION"
if [[ -x "$bin" && -f "$stamp" ]]; then   # someone else finished while we waited
    echo "$bin"
    exit 0
fi

log "downloading FerretDB $FERRETDB_VERSION module source"
tmpmod="$(mktemp -d)"
trap 'rm -rf "$tmpmod"' EXIT
src="$(cd "$tmpmod" && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit("go mod download: %s" % d.get("Error")))')"
[[ -d "$src" ]] || die "module source dir '$src' missing"

build="$dest/src"
rm -rf "${build:?}" "${dest:?}/bin" "$stamp"
mkdir -p "$dest/bin"
cp -r "$src" "$build"
chmod -R u+w "$build"
# The binary panics at start-up without an embedded version.
mkdir -p "$build/build/version"
printf '%s' "$FERRETDB_VERSION" >"$build/build/version/version.txt"

log "building ferretdb $FERRETDB_VERSION (about a minute on a cold Go build cache)"
(cd "$build" && go build -trimpath -o "$bin.tmp" ./cmd/ferretdb)
mv -f "$bin.tmp" "$bin"
"$bin" --version >/dev/null 2>&1 || die "built ferretdb does not run: $bin"
rm -rf "$build"   # ~50 MB of sources we no longer need
touch "$stamp"
log "installed ferretdb $FERRETDB_VERSION"
echo "$bin"
