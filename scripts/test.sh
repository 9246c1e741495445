#!/usr/bin/env bash
# The README's test command (and CI's, via .ci/run): installs missing test dependencies, then
# checks formatting, runs clippy with warnings as errors, and runs every test of the workspace
# with cargo-nextest (unit, protocol, real-client and QEMU-guest tests), with backend-blk's
# optional storage drivers (cargo features: nbd, rbd) built, linted and tested too, the RBD
# tests on a single-host Ceph cluster started here (scripts/ceph-test-cluster.sh) and stopped at
# the end, and finally runs every fuzz target (fuzz/, nightly toolchain) for 20 s on its seeds
# and corpus (scripts/fuzz.sh), failing on any crash, leak or hang. Exits non-zero if any step
# fails.
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
# backend-blk's optional storage drivers; the tests crate's features build backend-blk with them.
drivers=(nbd rbd)
# "PACKAGE/feature" for each driver, comma-separated.
features() {
    local list=("${drivers[@]/#/$1/}")
    local IFS=,
    echo "${list[*]}"
}
step clippy-drivers cargo clippy -p backend-blk -p pvio-tests --all-targets \
    --features "$(features backend-blk),$(features pvio-tests)" -- -D warnings
step build-drivers cargo build -p backend-blk --features "$(features backend-blk)"
ceph_dir=$PWD/target/ceph-test-cluster
trap 'scripts/ceph-test-cluster.sh stop "$ceph_dir"' EXIT
step ceph-cluster scripts/ceph-test-cluster.sh start "$ceph_dir"
export PVIO_CEPH_CONF=$ceph_dir/ceph.conf
# No backtraces: a failing test's own last lines (its panic message) end the log
# (.config/nextest.toml prints failures again at the end); the panic names its file and line.
RUST_BACKTRACE=0 step tests cargo nextest run --workspace --no-fail-fast --features "$(features pvio-tests)"
# Short coverage-guided fuzz runs: every target for a fixed 20 s (fuzz/README.md, "CI").
step fuzz scripts/fuzz.sh 20
