#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests run against (kube-apiserver,
# kube-controller-manager, etcd) and the real helm binary, from Go modules, pinned.
# Binaries are cached outside the repo, keyed by version, so only a new machine builds them.
# Prints the cache directory on stdout.
set -euo pipefail

K8S_VERSION="${STREAMSCAN_K8S_VERSION:-v1.33.13}"
ETCD_VERSION="${STREAMSCAN_ETCD_VERSION:-v3.5.21}"
HELM_VERSION="${STREAMSCAN_HELM_VERSION:-v3.18.6}"
CACHE="${STREAMSCAN_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamscan/real}"
BIN="$CACHE/bin"
mkdir -p "$BIN"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { echo "build-k8s: $*" >&2; }

# k8s.io/kubernetes requires its ~30 staging modules at v0.0.0 and replaces them with ./staging;
# a wrapper module of ours replaces each with the published v0.MINOR.PATCH instead.
build_kubernetes() {
  local want=("kube-apiserver" "kube-controller-manager")
  local missing=0
  for b in "${want[@]}"; do [ -x "$BIN/$b-$K8S_VERSION" ] || missing=1; done
  [ "$missing" = 0 ] && return 0
  local dir="$CACHE/src/kubernetes-$K8S_VERSION"
  mkdir -p "$dir"
  local staging="v0.${K8S_VERSION#v1.}"
  log "kubernetes $K8S_VERSION (staging modules at $staging)"
  (
    cd "$dir"
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    {
      echo "module streamscan.test/kubernetes"
      echo
      echo "go 1.24"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      grep -oE '^\s*k8s\.io/[a-z0-9-]+ v0\.0\.0\s*$' "$gomod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
    } > go.mod
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO
    go mod tidy >&2
    for b in "${want[@]}"; do
      log "go build $b"
      go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#v1.}" \
        -o "$BIN/$b-$K8S_VERSION.tmp" "k8s.io/kubernetes/cmd/$b" >&2
      mv "$BIN/$b-$K8S_VERSION.tmp" "$BIN/$b-$K8S_VERSION"
    done
  )
}

# etcd's server module has replace lines of its own, so it too is built from a wrapper.
build_etcd() {
  [ -x "$BIN/etcd-$ETCD_VERSION" ] && return 0
  local dir="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  log "etcd $ETCD_VERSION"
  (
    cd "$dir"
    cat > go.mod <<MOD
module streamscan.test/etcd

go 1.23

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
    cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
    go mod tidy >&2
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd-$ETCD_VERSION.tmp" go.etcd.io/etcd/server/v3 >&2
    mv "$BIN/etcd-$ETCD_VERSION.tmp" "$BIN/etcd-$ETCD_VERSION"
  )
}

build_helm() {
  [ -x "$BIN/helm-$HELM_VERSION" ] && return 0
  log "helm $HELM_VERSION"
  local gobin="$CACHE/src/helm-$HELM_VERSION"
  mkdir -p "$gobin"
  GOBIN="$gobin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  mv "$gobin/helm" "$BIN/helm-$HELM_VERSION"
}

case "${1:-all}" in
  etcd) build_etcd ;;
  kubernetes) build_kubernetes ;;
  helm) build_helm ;;
  all) build_etcd; build_kubernetes; build_helm ;;
  *) echo "usage: $0 [all|etcd|kubernetes|helm]" >&2; exit 2 ;;
esac
for b in etcd-"$ETCD_VERSION" kube-apiserver-"$K8S_VERSION" kube-controller-manager-"$K8S_VERSION" helm-"$HELM_VERSION"; do
  [ -x "$BIN/$b" ] && ln -sf "$b" "$BIN/${b%-v*}"
done
echo "$BIN"
