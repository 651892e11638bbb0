#!/usr/bin/env bash
# Install helm (the chart in helm/ is linted and rendered with it) into the psvis cache.
# Prints the path of the helm binary on stdout.
set -euo pipefail

HELM_VERSION=3.17.3

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

go_install_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" "version --short"
