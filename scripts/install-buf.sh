#!/usr/bin/env bash
# Install buf (protobuf lint/generate tool) into the psvis cache.
# Prints the path of the buf binary on stdout.
set -euo pipefail

BUF_VERSION=1.47.2

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

go_install_tool buf "$BUF_VERSION" github.com/bufbuild/buf/cmd/buf
