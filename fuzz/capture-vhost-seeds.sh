#!/usr/bin/env bash
# Captures a real front-end's vhost-user traffic as fuzz seeds: QEMU (tests' Linux guest,
# pvio-capture-guest: a vhost-user-blk-pci disk and a vhost-user netdev) talks to backend-blk and
# backend-net through fuzz/vhost-capture-proxy.py, which passes the SCM_RIGHTS descriptors on
# (socat cannot) and writes fuzz/seeds/vhost_user/qemu-{blk,net} and the guest's descriptor
# chains as fuzz/seeds/blk_request/qemu-* and fuzz/seeds/net_tx/qemu-*. QEMU keeps a vhost-user
# NIC's control queue to itself, so pvio's mock front-end (pvio-capture-guest --mock-net-socket)
# then sends control commands through the proxy to a second backend-net (as the fuzz target's):
# fuzz/seeds/net_ctrl/mock-*, fuzz/seeds/vhost_user/mock-net.
# Usage: fuzz/capture-vhost-seeds.sh   (from anywhere; needs QEMU and the tests' guest kernel)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seeds="$root/fuzz/seeds"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$root"
cargo build -q -p backend-blk -p backend-net -p pvio-tests --bin backend-blk --bin backend-net \
    --bin pvio-capture-guest
wait_socket() {
    for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
    echo "no socket $1" >&2
    return 1
}
rm -f "$seeds"/vhost_user/qemu-* "$seeds"/vhost_user/mock-* "$seeds"/blk_request/qemu-* \
    "$seeds"/net_tx/qemu-* "$seeds"/net_ctrl/mock-*
truncate -s 64M "$work/disk.raw"
target/debug/backend-blk --socket "$work/blk.sock" --image "$work/disk.raw" &
target/debug/backend-net --switch --socket "$work/net.sock" &
target/debug/backend-net --switch --socket "$work/mq.sock" &
wait_socket "$work/blk.sock"
wait_socket "$work/net.sock"
wait_socket "$work/mq.sock"
proxies=()
for dev in blk net; do
    python3 fuzz/vhost-capture-proxy.py --listen "$work/$dev-proxy.sock" \
        --backend "$work/$dev.sock" --device "$dev" --seeds "$seeds" &
    proxies+=($!)
    wait_socket "$work/$dev-proxy.sock"
done
target/debug/pvio-capture-guest --blk-socket "$work/blk-proxy.sock" --net-socket "$work/net-proxy.sock"
wait "${proxies[@]}"
python3 fuzz/vhost-capture-proxy.py --listen "$work/mq-proxy.sock" --backend "$work/mq.sock" \
    --device net --source mock --seeds "$seeds" &
mock=$!
wait_socket "$work/mq-proxy.sock"
target/debug/pvio-capture-guest --mock-net-socket "$work/mq-proxy.sock"
wait "$mock"
du -sh "$seeds"/vhost_user "$seeds"/blk_request "$seeds"/net_tx "$seeds"/net_ctrl
