#!/usr/bin/env bash
# Sourced by the other scripts: installs what meshlink's tests and demo need on a
# fresh machine (as root), builds the harness's Kubernetes binaries once, and
# points cargo at a target directory outside the clone so it survives re-clones.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export MESHLINK_CACHE=${MESHLINK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshlink}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MESHLINK_CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# CI builds once per run: incremental state would only cost disk.
[ "${CI:-}" = true ] && export CARGO_INCREMENTAL=0

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
for tool in cargo go; do
  command -v $tool >/dev/null || { echo "error: '$tool' is not installed; this machine kind ships it" >&2; exit 1; }
done

echo "==> Kubernetes binaries (built from Go modules once, then cached)" >&2
MESHLINK_K8S_BIN=$("$repo/multicluster-tests/go/build.sh")
export MESHLINK_K8S_BIN
echo "    $MESHLINK_K8S_BIN" >&2
