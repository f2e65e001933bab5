#!/usr/bin/env bash
# Builds the harness's Kubernetes binaries (kube-apiserver, kube-controller-manager,
# etcd) from the Go modules pinned beside this script, into a cache outside the
# repo keyed by version, and prints the directory holding them. A second run with
# the same versions builds nothing.
#
#   build.sh            -> prints e.g. /root/.cache/meshlink/bin/k8s-v1.34.4-etcd-v3.6.16
#   build.sh helm       -> builds only helm (module helm/, its own dependency graph)
#                          and prints e.g. /root/.cache/meshlink/bin/helm-v3.21.4/helm
#
# Set MESHLINK_CACHE to move the cache (default: $XDG_CACHE_HOME or ~/.cache, /meshlink).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kube_v=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/kube/go.mod")
etcd_v=$(awk '$1=="require" && $2=="go.etcd.io/etcd/server/v3" {print $3}' "$here/etcd/go.mod")
helm_v=$(awk '$1=="require" && $2=="helm.sh/helm/v3" {print $3}' "$here/helm/go.mod")
minor=${kube_v#v1.}; minor=${minor%%.*}
cache=${MESHLINK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshlink}

export CGO_ENABLED=0 GOFLAGS=-trimpath
build() { # name, module dir, package, extra flags...
  local name=$1 dir=$2 pkg=$3; shift 3
  [ -x "$out/$name" ] && return 0
  echo "building $name (first run only; several minutes on 2 cores)..." >&2
  local start=$SECONDS
  (cd "$dir" && go build "$@" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "built $name in $((SECONDS - start)) s" >&2
}

# helm is keyed by its own version so bumping it never rebuilds the apiserver.
if [ "${1:-}" = helm ]; then
  out="$cache/bin/helm-$helm_v"; mkdir -p "$out"
  build helm "$here/helm" helm.sh/helm/v3/cmd/helm -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_v"
  echo "$out/helm"
  exit 0
fi

out="$cache/bin/k8s-$kube_v-etcd-$etcd_v"
mkdir -p "$out"

ver="-X k8s.io/component-base/version.gitVersion=$kube_v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
ver="$ver -X k8s.io/client-go/pkg/version.gitVersion=$kube_v -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
build etcd "$here/etcd" . -ldflags "-s -w"
build kube-apiserver "$here/kube" k8s.io/kubernetes/cmd/kube-apiserver -tags selinux,notest,grpcnotrace -ldflags "-s -w $ver"
build kube-controller-manager "$here/kube" k8s.io/kubernetes/cmd/kube-controller-manager -tags selinux,notest,grpcnotrace -ldflags "-s -w $ver"
echo "$out"
