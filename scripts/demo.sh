#!/usr/bin/env bash
# The local multi-cluster demo: real clusters on this machine, until Ctrl-C.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$repo"
echo "==> building meshlink" >&2
cargo build --locked -p multicluster-tests --bins
exec "$CARGO_TARGET_DIR/debug/demo" "$@"
