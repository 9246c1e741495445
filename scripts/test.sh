#!/usr/bin/env bash
# The README's test command (and CI's, via .ci/run): installs missing test dependencies, then
# checks formatting, runs clippy with warnings as errors, and runs every test of the workspace
# with cargo-nextest (unit, protocol, real-client and QEMU-guest tests). Exits non-zero if any
# step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

step() {
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@"
    echo "== $name: done in $((SECONDS - start)) s"
}

step deps scripts/install-deps.sh
if ! cargo nextest --version >/dev/null 2>&1; then
    step nextest cargo install --locked cargo-nextest
fi
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step tests cargo nextest run --workspace --no-fail-fast
