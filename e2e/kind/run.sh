#!/usr/bin/env bash
# End-to-end on a real cluster: kind + Docker. Creates a kind cluster (Kubernetes 1.33), builds
# the two images from the repository's Dockerfile and loads them, installs Kafka (KRaft), Redis
# and a file server from e2e/kind/deps.yaml, installs Streamscan (Helm chart, or the plain
# manifests with INSTALL_WITH=kubectl), runs the README's install steps and sample, then the same
# scenario suite the simulator runs (cargo test -p streamscan-e2e --test scenarios) against it.
# On failure it collects logs and objects into $ARTIFACTS.
#
# Needs: docker, kind, kubectl, helm (unless INSTALL_WITH=kubectl), openssl, cargo.
# Cannot run on the project's CI machines (no Docker engine): see e2e/README.md.
#
# Environment:
#   CLUSTER=streamscan-e2e   kind cluster name
#   INSTALL_WITH=helm        helm | kubectl
#   KEEP_CLUSTER=0           1: leave the cluster running afterwards
#   ARTIFACTS=target/e2e-kind  where logs go on failure
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-streamscan-e2e}"
INSTALL_WITH="${INSTALL_WITH:-helm}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
ARTIFACTS="${ARTIFACTS:-target/e2e-kind}"
NS=streamscan
# The chart's appVersion: the images are tagged with it so the chart's and install.yaml's
# default image references work unchanged.
VERSION="$(awk -F'"' '/^appVersion:/ {print $2}' helm/streamscan/Chart.yaml)"
WORK="$(mktemp -d)"
KUBECONFIG_FILE="$WORK/kubeconfig"
PORT_FORWARD_PID=""

log() { printf '\n=== %s\n' "$*" >&2; }

for tool in docker kind kubectl openssl cargo; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is required" >&2; exit 2; }
done
if [ "$INSTALL_WITH" = helm ] && ! command -v helm >/dev/null 2>&1; then
  echo "error: helm is required (or run with INSTALL_WITH=kubectl)" >&2
  exit 2
fi

collect() {
  local dir
  dir="$ARTIFACTS/$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$dir"
  echo "collecting logs into $dir" >&2
  kubectl get all,aj,pvc,events -A -o wide >"$dir/objects.txt" 2>&1 || true
  kubectl get aj -A -o yaml >"$dir/analysisjobs.yaml" 2>&1 || true
  kubectl -n "$NS" describe pods >"$dir/pods-describe.txt" 2>&1 || true
  local pod
  for pod in $(kubectl -n "$NS" get pods -o name 2>/dev/null); do
    kubectl -n "$NS" logs "$pod" --all-containers --prefix >"$dir/${pod#pod/}.log" 2>&1 || true
    kubectl -n "$NS" logs "$pod" --all-containers --prefix --previous >"$dir/${pod#pod/}.previous.log" 2>/dev/null || true
  done
  kind export logs "$dir/kind" --name "$CLUSTER" >/dev/null 2>&1 || true
}

cleanup() {
  local status=$?
  if [ -n "$PORT_FORWARD_PID" ]; then kill "$PORT_FORWARD_PID" 2>/dev/null || true; fi
  if [ "$status" -ne 0 ]; then collect; fi
  if [ "$KEEP_CLUSTER" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  else
    echo "cluster kept: export KUBECONFIG=$KUBECONFIG_FILE" >&2
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

log "kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --config e2e/kind/kind-config.yaml --kubeconfig "$KUBECONFIG_FILE" --wait 120s
export KUBECONFIG="$KUBECONFIG_FILE"

log "images streamscan/operator:$VERSION and streamscan/worker:$VERSION"
docker build --target operator -t "streamscan/operator:$VERSION" .
docker build --target worker -t "streamscan/worker:$VERSION" .
kind load docker-image --name "$CLUSTER" "streamscan/operator:$VERSION" "streamscan/worker:$VERSION"

log "Kafka (KRaft), Redis and the file server"
kubectl create namespace streamscan
kubectl apply -f e2e/kind/deps.yaml
if [ -d e2e/fixtures/demo ]; then
  kubectl -n "$NS" create configmap e2e-files --from-file=e2e/fixtures/demo
fi
kubectl -n "$NS" rollout status statefulset/kafka --timeout=300s
kubectl -n "$NS" rollout status deployment/redis --timeout=180s
kubectl -n "$NS" rollout status deployment/files --timeout=180s
kubectl -n "$NS" exec kafka-0 -- /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 \
  --create --if-not-exists --topic streamscan.progress --partitions 3 --replication-factor 1

log "Streamscan ($INSTALL_WITH), as in README.md 'Install on a cluster'"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/jwt-private.pem" 2>/dev/null
openssl pkey -in "$WORK/jwt-private.pem" -pubout -out "$WORK/jwt-public.pem"
(
  cd "$WORK"
  kubectl -n streamscan create secret generic streamscan-internal-token --from-literal=token="$(openssl rand -hex 32)"
  kubectl -n streamscan create secret generic streamscan-gateway-jwt --from-file=key=jwt-public.pem
)
# The issuer and audience manifests/values.yaml renders install.yaml with, and the Helm install
# below sets (as the README does); the suite's tokens carry them.
JWT_ISSUER=https://auth.example.com
JWT_AUDIENCE=streamscan
if [ "$INSTALL_WITH" = helm ]; then
  helm install streamscan helm/streamscan -n streamscan --set kafka.bootstrap=kafka.streamscan.svc:9092 --set redis.url=redis://redis.streamscan.svc:6379 --set internalToken.existingSecret=streamscan-internal-token \
  --set gateway.auth.jwtIssuer=https://auth.example.com --set gateway.auth.jwtAudience=streamscan
else
  kubectl apply -f manifests/install.yaml
fi
# The suite's url sources are on the in-cluster file server (a private address, which the
# workers' egress policy denies unless allowed): allow that one host.
kubectl -n "$NS" set env statefulset/streamscan-worker STREAMSCAN_EGRESS_ALLOW_HOSTS=files.streamscan.svc
kubectl -n "$NS" rollout status deployment/streamscan-controller --timeout=300s
kubectl -n "$NS" rollout status deployment/streamscan-gateway --timeout=300s
kubectl -n "$NS" rollout status statefulset/streamscan-worker --timeout=300s
kubectl -n streamscan get pods -l app.kubernetes.io/component=worker -L streamscan.io/server-id

log "every worker pod carries its serverId label (= its ordinal)"
for i in 0 1 2; do
  id="$(kubectl -n "$NS" get pod "streamscan-worker-$i" -o jsonpath='{.metadata.labels.streamscan\.io/server-id}')"
  [ "$id" = "$i" ] || { echo "streamscan-worker-$i has server-id '$id', want $i" >&2; exit 1; }
done

log "the README's sample"
kubectl -n streamscan apply -f manifests/samples/url-job.yaml
# The sample's URL is not reachable from kind: it ends Failed (after its retries) or Succeeded;
# either way it must reach a terminal phase, and the watch shows the transitions.
timeout 120 kubectl -n streamscan get aj -w || true
phase="$(kubectl -n "$NS" get aj firmware-from-url -o jsonpath='{.status.phase}')"
case "$phase" in
  Pending|"") echo "the sample job was never scheduled (phase '$phase')" >&2; exit 1 ;;
  *) echo "sample job phase: $phase" >&2 ;;
esac
kubectl -n "$NS" delete aj firmware-from-url --wait=true --timeout=120s

log "gateway on 127.0.0.1:28080"
kubectl -n "$NS" port-forward svc/streamscan-gateway 28080:80 >"$WORK/port-forward.log" 2>&1 &
PORT_FORWARD_PID=$!
sleep 2

log "scenario suite against the cluster"
STREAMSCAN_E2E_BACKEND=kind \
STREAMSCAN_E2E_KUBECONFIG="$KUBECONFIG_FILE" \
STREAMSCAN_E2E_NAMESPACE="$NS" \
STREAMSCAN_E2E_KAFKA=127.0.0.1:29092 \
STREAMSCAN_E2E_TOPIC=streamscan.progress \
STREAMSCAN_E2E_GATEWAY=http://127.0.0.1:28080 \
STREAMSCAN_E2E_JWT_KEY="$WORK/jwt-private.pem" \
STREAMSCAN_E2E_JWT_ISSUER="$JWT_ISSUER" \
STREAMSCAN_E2E_JWT_AUDIENCE="$JWT_AUDIENCE" \
STREAMSCAN_E2E_FILES_URL=http://files.streamscan.svc:8080 \
  cargo test --locked -p streamscan-e2e --test scenarios -- --test-threads=1

log "passed"
