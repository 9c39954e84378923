#!/usr/bin/env bash
# Regenerates manifests/install.yaml from the Helm chart (helm/streamscan) with
# manifests/values.yaml. Needs Python 3 with helm-sdkpy and PyYAML (scripts/test.sh installs them)
# and cargo (it renders by installing into the project's Kubernetes API simulator).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 helm/tests/render_manifests.py "$@"
