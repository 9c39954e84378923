#!/usr/bin/env bash
# A real Kubernetes control plane for the tests, on loopback: etcd, kube-apiserver (RBAC on,
# token authentication, service-account tokens) and kube-controller-manager with the garbage
# collector and namespace controllers. No kubelet: a test plays kubelet (creates Pods and patches
# pods/status), as kwok does. Flags follow controller-runtime's envtest.
#
#   kube.sh start DIR PORT   start everything, wait until /readyz; prints DIR/kubeconfig (admin,
#                            system:masters). Pids in DIR/*.pid; logs in DIR/*.log.
#   kube.sh stop DIR [apiserver]   stop everything (or only the API server, for a restart).
#   kube.sh start-apiserver DIR    start the API server again on the same port and etcd.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

cmd="${1:-}"; dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then echo "usage: $0 start DIR PORT | stop DIR [apiserver] | start-apiserver DIR" >&2; exit 2; fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }
# SIGTERM, then SIGKILL after 5 s (kube-apiserver's graceful shutdown can hang on its quota
# evaluator for much longer); returns once the process is gone, so a start can follow at once.
stop_one() {
  alive "$1" || return 0
  local pid; pid="$(cat "$dir/$1.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "kube.sh: $1 (pid $pid) still running after SIGKILL" >&2
  return 1
}
wait_for() { # name, seconds, command...
  local name="$1" secs="$2"; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$name" || { echo "kube.sh: $name exited; its log:" >&2; tail -40 "$dir/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "kube.sh: $name not ready within $secs s; its log:" >&2; tail -40 "$dir/$name.log" >&2; exit 1
}

start_apiserver() {
  local port; port="$(cat "$dir/port")"
  nohup "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$((port + 1))" \
    --bind-address=127.0.0.1 --secure-port="$port" --cert-dir="$dir/certs" \
    --token-auth-file="$dir/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-key-file="$dir/sa.key" --service-account-signing-key-file="$dir/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --api-audiences=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.0.0.0/24 \
    --disable-admission-plugins=ServiceAccount \
    --allow-privileged=true \
    --enable-priority-and-fairness=false \
    --profiling=false \
    >>"$dir/apiserver.log" 2>&1 &
  echo $! > "$dir/apiserver.pid"
  wait_for apiserver 90 curl -skf -H "Authorization: Bearer $(cat "$dir/admin.token")" "https://127.0.0.1:$port/readyz"
}

case "$cmd" in
start)
  port="${3:?port}"
  bin="${STREAMSCAN_REAL_BIN:-$("$here/build-k8s.sh" all)}"
  echo "$bin" > "$dir/bin"
  echo "$port" > "$dir/port"
  for p in etcd apiserver controller-manager; do
    if alive "$p"; then echo "kube.sh: $p already runs from $dir" >&2; exit 1; fi
  done
  [ -f "$dir/sa.key" ] || openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  [ -f "$dir/admin.token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/admin.token"
  echo "$(cat "$dir/admin.token"),admin,admin-uid,system:masters" > "$dir/tokens.csv"

  nohup "$bin/etcd" --data-dir="$dir/etcd" \
    --listen-client-urls="http://127.0.0.1:$((port + 1))" --advertise-client-urls="http://127.0.0.1:$((port + 1))" \
    --listen-peer-urls="http://127.0.0.1:$((port + 2))" --initial-advertise-peer-urls="http://127.0.0.1:$((port + 2))" \
    --initial-cluster="default=http://127.0.0.1:$((port + 2))" \
    --unsafe-no-fsync --quota-backend-bytes=2147483648 \
    >>"$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"
  wait_for etcd 30 curl -sf "http://127.0.0.1:$((port + 1))/health"

  start_apiserver
  # Nothing here outlives its test: stopped when the process that started it is gone (its
  # STREAMSCAN_REAL_OWNER_PID, or this script's parent).
  nohup "$here/watchdog.sh" "${STREAMSCAN_REAL_OWNER_PID:-$PPID}" "$dir" "$here/kube.sh" stop "$dir" \
    </dev/null >/dev/null 2>&1 &
  echo $! > "$dir/watchdog.pid"

  cat > "$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: real
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $dir/certs/apiserver.crt
users:
- name: admin
  user:
    token: $(cat "$dir/admin.token")
contexts:
- name: real
  context: {cluster: real, user: admin, namespace: default}
current-context: real
KC
  nohup "$bin/kube-controller-manager" \
    --kubeconfig="$dir/kubeconfig" \
    --controllers=garbage-collector-controller,namespace-controller,serviceaccount-token-controller \
    --service-account-private-key-file="$dir/sa.key" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port="$((port + 3))" \
    --concurrent-gc-syncs=5 \
    >>"$dir/controller-manager.log" 2>&1 &
  echo $! > "$dir/controller-manager.pid"
  wait_for controller-manager 60 curl -skf "https://127.0.0.1:$((port + 3))/healthz"
  echo "$dir/kubeconfig"
  ;;
start-apiserver)
  bin="$(cat "$dir/bin")"
  alive apiserver || start_apiserver
  ;;
stop)
  if [ "${3:-}" = apiserver ]; then stop_one apiserver; exit 0; fi
  [ "$(cat "$dir/watchdog.pid" 2>/dev/null)" = "${WATCHDOG_PID:-}" ] || stop_one watchdog
  stop_one controller-manager; stop_one apiserver; stop_one etcd
  ;;
*) echo "usage: $0 start DIR PORT | stop DIR [apiserver] | start-apiserver DIR" >&2; exit 2 ;;
esac
