#!/usr/bin/env bash
# Chart, manifests, Dockerfile and kind-script checks (helm/tests/check_chart.py), after installing
# the Python packages they need. Called by scripts/test.sh; needs python3, kubectl, shellcheck, cargo.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! python3 -c 'import helm_sdkpy, kubernetes_validate, jsonschema, yaml' 2>/dev/null || ! command -v hadolint >/dev/null 2>&1; then
  echo "installing the chart checks' Python packages (helm/tests/requirements.txt)" >&2
  pip_install=(python3 -m pip install --quiet --disable-pip-version-check --ignore-requires-python -r helm/tests/requirements.txt)
  # Debian's system Python is "externally managed": fall back to --break-system-packages there.
  "${pip_install[@]}" || "${pip_install[@]}" --break-system-packages
  hash -r
fi
exec env HELM_DRIVER=memory python3 helm/tests/check_chart.py
