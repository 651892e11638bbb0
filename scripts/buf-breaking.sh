#!/usr/bin/env bash
# Invariant 6: no breaking change to the protobuf contracts (never reuse or renumber a field).
# Compares proto/ with the previous commit that had it; usage: scripts/buf-breaking.sh BUF
set -euo pipefail
buf="$1"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
base="${PSVIS_PROTO_BASELINE:-}"
if [[ -z "$base" ]]; then
    base="$(git rev-list -1 HEAD~1 -- proto 2>/dev/null || true)"
fi
if [[ -z "$base" ]]; then
    echo "buf breaking: no earlier commit with proto/ to compare with; nothing to check" >&2
    exit 0
fi
"$buf" breaking --against ".git#ref=${base}"
echo "buf breaking: proto/ is compatible with ${base:0:12}" >&2
