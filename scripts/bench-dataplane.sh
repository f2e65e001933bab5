#!/usr/bin/env bash
# The data-plane benchmark (issue 4): direct vs meshlink (proxy → gateway → proxy,
# mTLS) vs nginx (the same hops, mTLS) vs plaintext TCP relays (HAProxy, the same
# hops) at 1,000 and 5,000 HTTP/1 rps and at maximum throughput. Installs nginx
# and haproxy (Debian packages) if missing, builds the
# release binaries, runs the benchmark and prints a Markdown table ready to paste
# into docs/benchmarks.md. Usage: scripts/bench-dataplane.sh [SECONDS per path and phase]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MESHLINK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshlink}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
cd "$repo"

if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  echo "==> installing nginx and haproxy (Debian packages)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx haproxy >&2
fi
echo "==> building release binaries: proxy, gateway, harness-echo, bench-dataplane" >&2
cargo build --release --locked -p proxy -p gateway -p multicluster-tests \
  --bin proxy --bin gateway --bin harness-echo --bin bench-dataplane
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%d), $(nginx -v 2>&1 | sed 's/^nginx version: //')"
exec "$CARGO_TARGET_DIR/release/bench-dataplane" "$@"
