#!/usr/bin/env bash
# The README's main job: installs what is missing, builds backend-blk and the demo in release
# mode, then runs the demo: a sparse 1 GiB image served by backend-blk, a Linux guest booted
# under QEMU on it as a vhost-user-blk disk, a short I/O workload in the guest, a data check on
# both sides, and the throughput. Options go to the demo (scripts/demo.sh --help); the demo
# removes its temporary files and stops the back-end at the end, on failure, and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if ! command -v cargo >/dev/null; then
    echo "demo: cargo not found: install a Rust toolchain (1.85 or newer), e.g. with rustup" >&2
    exit 1
fi
echo "demo: building backend-blk and pvio-demo (release)"
cargo build --release -p backend-blk -p pvio-tests --bin backend-blk --bin pvio-demo
exec cargo run --release --quiet -p pvio-tests --bin pvio-demo -- "$@"
