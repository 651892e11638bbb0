# shellcheck shell=bash
# shellcheck disable=SC2034  # variables used by the scripts that source this
# Shared helpers for the psvis install/service scripts. Source it; do not run it.

PSVIS_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PSVIS_REPO_DIR="$(cd "$PSVIS_SCRIPTS_DIR/.." && pwd)"
PSVIS_CACHE="${PSVIS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/psvis}"

# One-line progress message on stderr (stdout is reserved for the result path).
log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "required command '$c' not found on PATH"
    done
}

# lock NAME: take an exclusive lock (held until the script exits) so that two
# concurrent installs of the same thing do not trample each other.
lock() {
    mkdir -p "$PSVIS_CACHE/locks"
    exec 9>"$PSVIS_CACHE/locks/$1.lock"
    flock 9
}

# Go settings shared by the Go builds: never try to fetch another toolchain,
# build static binaries, and keep the repo's own go.mod (if any) out of it.
go_env() {
    export GOTOOLCHAIN=local
    export CGO_ENABLED=0
    export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"
    export GO111MODULE=on
}
