#!/usr/bin/env bash
# Compares pvio's backend-blk with qemu-storage-daemon's vhost-user-blk export and raw io_uring
# (fio) on one machine: installs missing packages, builds the release binaries, runs the
# blk-compare matrix and writes target/bench/blk-report.md, blk-results.json and SVG plots.
# Arguments go to blk-compare, e.g. `scripts/bench.sh --runtime 5 --repeats 5`,
# `scripts/bench.sh --quick --runtime 0.5` (smoke), `--tmpfs-only`, `--image-mib 512`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p frontend-guest -p backend-blk -p pvio-benches
exec "$target/release/blk-compare" --out target/bench "$@"
