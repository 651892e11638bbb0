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

# go_install_tool NAME VERSION PACKAGE [LDFLAGS [VERSION_ARGS]]: build PACKAGE@vVERSION with
# `go install` into $PSVIS_CACHE/NAME/VERSION/bin (once; later calls find it there) and print
# the binary's path. LDFLAGS is for tools whose release builds stamp their version with -X;
# VERSION_ARGS is how the tool prints its version (default --version).
go_install_tool() {
    local name="$1" version="$2" package="$3" ldflags="${4:-}" version_args="${5:---version}"
    local dest="$PSVIS_CACHE/$name/$version"
    local bin="$dest/bin/$name" stamp="$dest/.installed" got
    if [[ ! -x "$bin" || ! -f "$stamp" ]]; then
        need go
        go_env
        lock "$name-$version"
    fi
    if [[ ! -x "$bin" || ! -f "$stamp" ]]; then   # nobody finished it while we waited
        rm -rf "$dest"
        mkdir -p "$dest/bin"
        log "building $name $version with go install (a minute or two on a cold Go build cache)"
        # Run outside the repo so no go.mod/go.work of ours gets involved.
        (cd "$dest" && GOBIN="$dest/bin" GOWORK=off go install -trimpath ${ldflags:+"-ldflags=$ldflags"} "$package@v$version")
        # shellcheck disable=SC2086  # VERSION_ARGS is split into words on purpose
        got="$("$bin" $version_args 2>&1)" || die "installed $name does not run: $bin"
        [[ "$got" == "$version" || "$got" == "v$version" || "$got" == *" $version" || "$got" == *" v$version" ]] ||
            die "expected $name $version, got '$got'"
        touch "$stamp"
        log "installed $name $version"
    fi
    echo "$bin"
}
