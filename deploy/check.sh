#!/usr/bin/env bash
# Offline checks of the deployment artefacts (deploy/check.py): kustomize overlays, Compose
# files, Envoy configs. Installs the pinned kustomize and promtool first when they are missing.
#   deploy/check.sh [kubernetes] [compose] [envoy]
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory -f deploy/deploy.mk tools-kustomize tools-promtool >&2
exec .venv/bin/python -m deploy.check "$@"
