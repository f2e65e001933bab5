#!/usr/bin/env bash
# Runs every meshlink test: lints, unit tests, in-process proxy tests and the
# multi-cluster integration tests on real kube-apiservers in network namespaces.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$repo"

# The chart tests compare `meshlink install` with `helm template`: build helm once
# here (cached like the Kubernetes binaries) rather than racing in parallel tests.
echo "==> helm (built from Go modules once, then cached)" >&2
MESHLINK_HELM=$("$repo/multicluster-tests/go/build.sh" helm)
export MESHLINK_HELM
echo "    $MESHLINK_HELM" >&2

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy (warnings are errors)" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
# Integration tests start meshlink's binaries (controller, proxy, gateway, mirror,
# meshlink, demo) as processes; cargo builds a package's binaries only for that
# package's own integration tests, so build them all first.
echo "==> cargo build --bins" >&2
cargo build --workspace --bins --locked
echo "==> cargo test" >&2
cargo test --workspace --locked --no-fail-fast

# Bounded fuzzing of the wire parsers (transport header, protocol detection).
# cargo-fuzz needs a nightly toolchain; this machine kind ships one.
if cargo +nightly --version >/dev/null 2>&1; then
  command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked -q
  echo "==> fuzzing each target for ${FUZZ_SECONDS:=30} s" >&2
  CARGO_TARGET_DIR=$MESHLINK_CACHE/target-fuzz FUZZ_SECONDS=$FUZZ_SECONDS bash fuzz/run.sh
else
  echo "==> fuzzing skipped: no nightly toolchain (cargo +nightly)" >&2
fi

leftover=$(ip netns list 2>/dev/null | grep -c '^mlh[0-9]' || true)
if [ "$leftover" != 0 ]; then
  echo "error: $leftover harness network namespace(s) left behind:" >&2
  ip netns list | grep '^mlh[0-9]' >&2
  exit 1
fi
