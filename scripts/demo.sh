#!/usr/bin/env bash
# The local multi-cluster demo: two real clusters on this machine, meshlink's
# control plane, gateway and mirror in each, west calling a service exported in
# east, live until Ctrl-C (which removes everything it started).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$repo"
echo "==> building meshlink: the demo, harness-echo and the controller, proxy, gateway, mirror and meshlink binaries (the first build takes several minutes)" >&2
started=$(date +%s)
cargo build --locked -p multicluster-tests -p controller -p proxy -p gateway -p mirror -p link-cli --bins
echo "    built in $(( $(date +%s) - started )) s" >&2
exec "$CARGO_TARGET_DIR/debug/demo" "$@"
