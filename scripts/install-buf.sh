#!/usr/bin/env bash
# Install buf (protobuf lint/generate tool) into the psvis cache.
# Prints the path of the buf binary on stdout.
set -euo pipefail

BUF_VERSION=1.47.2

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

dest="$PSVIS_CACHE/buf/$BUF_VERSION"
bin="$dest/bin/buf"
stamp="$dest/.installed"

if [[ -x "$bin" && -f "$stamp" ]]; then
    echo "$bin"
    exit 0
fi

need go
go_env
lock "buf-$BUF_VERSION"
if [[ -x "$bin" && -f "$stamp" ]]; then
    echo "$bin"
    exit 0
fi

rm -rf "$dest"
mkdir -p "$dest/bin"
log "building buf $BUF_VERSION with go install (about 90 s on a cold Go build cache)"
# Run outside the repo so no go.mod/go.work of ours gets involved.
(cd "$dest" && GOBIN="$dest/bin" GOWORK=off go install -trimpath "github.com/bufbuild/buf/cmd/buf@v$BUF_VERSION")
got="$("$bin" --version 2>&1)" || die "installed buf does not run: $bin"
[[ "$got" == "$BUF_VERSION" ]] || die "expected buf $BUF_VERSION, got '$got'"
touch "$stamp"
log "installed buf $BUF_VERSION"
echo "$bin"
