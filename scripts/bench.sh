#!/usr/bin/env bash
# Compares pvio's backend-blk with qemu-storage-daemon's vhost-user-blk export and raw io_uring
# (fio) on one machine: installs missing packages, builds the release binaries, runs the
# blk-compare matrix and writes target/bench/blk-report.md, blk-results.json and SVG plots.
# Arguments go to blk-compare, e.g. `scripts/bench.sh --runtime 5 --repeats 5`,
# `scripts/bench.sh --quick --runtime 0.5` (smoke), `--tmpfs-only`, `--image-mib 512`.
#
# `scripts/bench.sh --netdisk [ARGS]` runs only the network-disk rows instead (a few minutes):
# backend-blk on a Ceph RBD image (a single-host test cluster started for the run, or
# `--ceph-conf PATH`) and on an nbdkit memory export, against qemu-storage-daemon's rbd/nbd
# drivers and fio's rbd/nbd engines; writes target/bench/netdisk-report.md. Arguments go to
# netdisk-compare, e.g. `--runtime 3 --rounds 5`, `--only rbd`, `--depths 1,16,64`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
target="${CARGO_TARGET_DIR:-target}"
if [ "${1:-}" = --netdisk ]; then
    shift
    cargo build --release -p backend-blk --features rbd,nbd
    cargo build --release -p pvio-benches --bin netdisk-compare
    exec "$target/release/netdisk-compare" --out target/bench "$@"
fi
cargo build --release -p frontend-guest -p backend-blk -p pvio-benches
exec "$target/release/blk-compare" --out target/bench "$@"
