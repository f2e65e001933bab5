#!/usr/bin/env bash
# Runs every meshlink test: lints, unit tests, in-process proxy tests and the
# multi-cluster integration tests on real kube-apiservers in network namespaces.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$repo"

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy (warnings are errors)" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test" >&2
cargo test --workspace --locked --no-fail-fast

leftover=$(ip netns list 2>/dev/null | grep -c '^ml-' || true)
if [ "$leftover" != 0 ]; then
  echo "error: $leftover harness network namespace(s) left behind:" >&2
  ip netns list | grep '^ml-' >&2
  exit 1
fi
