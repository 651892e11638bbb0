#!/usr/bin/env bash
# Install grpcurl (a generic gRPC client; the e2e tests call the platform with it through
# server reflection) into the psvis cache. Prints the path of the grpcurl binary on stdout.
set -euo pipefail

GRPCURL_VERSION=1.9.3

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

go_install_tool grpcurl "$GRPCURL_VERSION" github.com/fullstorydev/grpcurl/cmd/grpcurl \
    "-X main.version=v$GRPCURL_VERSION"
