#!/usr/bin/env bash
# Runs every Streamscan test. Installs what the tests need when it can (apt-get as root); otherwise
# stops at once and says exactly what to install. A test never skips because a service is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# System packages the tests use: name of the command -> Debian package.
declare -A packages=(
  # helm/tests/run.sh: the chart, manifest, Dockerfile and kind-script checks.
  [python3]=python3 [pip3]=python3-pip [shellcheck]=shellcheck
)
# rdkafka's bundled librdkafka with TLS and SASL (worker, gateway) builds against OpenSSL.
packages[pkg-config]=pkg-config
# The gateway's tests start a real Redis server.
packages[redis-server]=redis-server
# scripts/real/: the real kube-apiserver's readiness probe and service-account key.
packages[curl]=curl
packages[openssl]=openssl
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("${packages[$cmd]}")
done

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test dependencies: ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
  else
    echo "error: the tests need these packages, which are missing: ${need_apt[*]}" >&2
    echo "install them (Debian/Ubuntu: sudo apt-get install -y ${need_apt[*]}) and run again" >&2
    exit 2
  fi
fi

# worker/tests/cli.rs checks the CycloneDX SBOM against the official 1.5 schema with
# cyclonedx-python-lib's strict validator (the schema ships in that package).
if ! python3 -c 'import cyclonedx.validation.json, jsonschema' 2>/dev/null; then
  echo "installing cyclonedx-python-lib[json-validation] (the SBOM test's schema validator)" >&2
  pip_install=(python3 -m pip install --quiet --disable-pip-version-check "cyclonedx-python-lib[json-validation]==11.12.0")
  # Debian's system Python is "externally managed": fall back to --break-system-packages there.
  "${pip_install[@]}" || "${pip_install[@]}" --break-system-packages
fi

# kubectl is not a Debian package: the Kubernetes API simulator's tests (e2e/) drive the real binary.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "error: the tests need kubectl (v1.32 or newer) on PATH, for testing/kube-sim/tests/sim_kubectl.rs" >&2
  echo "install it from https://kubernetes.io/docs/tasks/tools/ (it is not a Debian package) and run again" >&2
  exit 2
fi

# The real servers (scripts/real/): kube-apiserver, kube-controller-manager and etcd built from Go
# modules, helm, and Apache Kafka from Maven Central; pinned and cached in ~/.cache/streamscan/real
# by version, so only a new machine builds them (about 6 minutes on 2 cores).
for tool in go java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: the tests need $tool (Go 1.24+, Java 17+ with Maven) to build and run the real" >&2
    echo "kube-apiserver, etcd and Apache Kafka they test against (scripts/real/)" >&2
    exit 2
  fi
done
STREAMSCAN_REAL_BIN="$(scripts/real/build-k8s.sh all)"
STREAMSCAN_KAFKA_LIBS="$(scripts/real/fetch-kafka.sh)"
export STREAMSCAN_REAL_BIN STREAMSCAN_KAFKA_LIBS

# The scenario suite writes its closing table here; print it after each run (cargo captures the
# output of passing tests). The workspace run takes the suite on the real servers; with no
# arguments it then runs again on the simulator and the mock cluster, so both devstack backends
# stay proven.
table="${CARGO_TARGET_DIR:-target}/tmp/scenarios-table.txt"
print_table() {
  if [ -f "$table" ]; then
    echo
    echo "scenario suite (e2e/tests/scenarios.rs), closing table:"
    cat "$table"
    rm -f "$table"
  fi
}
rm -f "$table"
STREAMSCAN_E2E_BACKEND=real cargo test --workspace --locked "$@"
print_table
if [ $# -eq 0 ]; then
  # `--workspace --test NAME` keeps the workspace run's features, so nothing is rebuilt.
  STREAMSCAN_E2E_BACKEND=sim cargo test --workspace --test scenarios --locked
  print_table
  # The controller's and the worker's integration tests run on the simulator in the workspace
  # run (fast, fault injection); here once more on a real kube-apiserver each.
  STREAMSCAN_TEST_KUBE=real cargo test --locked --workspace --test controller
  STREAMSCAN_TEST_KUBE=real cargo test --locked --workspace --test runtime
  # The gateway's tests run on the mock cluster in the workspace run; here on Apache Kafka.
  STREAMSCAN_TEST_KAFKA=real cargo test --locked --workspace --test gateway
fi

# The Helm chart, manifests/, the Dockerfile and e2e/kind/ (installs its Python packages itself).
if [ $# -eq 0 ]; then
  helm/tests/run.sh
fi
