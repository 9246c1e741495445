#!/usr/bin/env bash
# The split-driver control plane on the built-in defaults, with a `pvctl list` transcript at
# each step: xenstore-lite, backend-blk in store mode (one daemon for every disk), pvctl as the
# toolstack, and the mock front end (pvio-mock-guest) playing guest domain 1 over its own store
# socket: attach, handshake and verified I/O, hot-unplug while connected, re-plug, destroy, and
# a check that no socket, node or process is left. Disks only for now: NICs come with
# backend-net's store mode, a real guest with the vmm crate.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "stack-demo: cargo not found: install a Rust toolchain (1.85 or newer)" >&2
    exit 1
fi
echo "stack-demo: building xenstore-lite, backend-blk, pvctl, pvio-mock-guest"
cargo build --quiet -p xenstore-lite -p backend-blk -p pvctl -p pvio-tests \
    --bin xenstore-lite --bin backend-blk --bin pvctl --bin pvio-mock-guest
bin=$PWD/target/debug
work=$(mktemp -d -t pvio-stack-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT INT TERM

export XENSTORED_PATH=$work/xs.sock
pvctl() { "$bin/pvctl" "$@"; }
say() { printf '\n$ %s\n' "$*"; }
list() { say pvctl list; pvctl list | sed "s|$work/||g"; }
# Waits (up to 30 s) until command "$@" succeeds.
wait_for() {
    for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "stack-demo: timed out waiting for: $*" >&2
    exit 1
}
guest() {
    "$bin/pvio-mock-guest" --xenstore "$work/dom1.sock" --domid 1 >"$work/guest.out" 2>&1 &
    guest_pid=$!
    wait_for grep -q 'verified I/O done' "$work/guest.out"
    sed "s|$work/||g; s|^|  guest: |" "$work/guest.out"
}

"$bin/xenstore-lite" serve --socket "$work/xs.sock" --domain-socket "1:$work/dom1.sock" \
    2>"$work/xenstore.log" &
pids+=($!)
wait_for pvctl list
RUST_LOG=warn "$bin/backend-blk" --xenstore "$work/xs.sock" --run-dir "$work/run" \
    2>"$work/backend-blk.log" &
backend=$!
pids+=("$backend")
truncate -s 64M "$work/disk.raw"
: >"$work/guest.bin" # a placeholder payload: no VMM boots it yet

say pvctl domain create --name demo --mem 256 --guest guest.bin
(cd "$work" && pvctl domain create --name demo --mem 256 --guest guest.bin)
say pvctl disk attach 1 --image disk.raw
(cd "$work" && pvctl disk attach 1 --image disk.raw)
wait_for sh -c "\"$bin/pvctl\" list | grep -q 'back InitWait'"
list

say "pvio-mock-guest --domid 1   # the guest: Initialised, connects, Connected, I/O"
guest
list

say pvctl disk detach 1 0
pvctl disk detach 1 0
wait "$guest_pid"
sed -n 's/^vbd\/1\/0: unplugged/  guest: unplugged/p' "$work/guest.out"
list

say pvctl disk attach 1 --image disk.raw
(cd "$work" && pvctl disk attach 1 --image disk.raw)
say "pvio-mock-guest --domid 1"
guest
list

say pvctl domain destroy 1
pvctl domain destroy 1
wait "$guest_pid"
list

left=$(find "$work/run" -name '*.sock' | wc -l)
nodes=0
for path in /local/domain/1 /local/domain/0/backend/vbd/1; do
    if "$bin/xenstore-lite" exists "$path"; then nodes=$((nodes + 1)); fi
done
kill "$backend"
wait "$backend" && status=0 || status=$?
pids=("${pids[@]:0:1}")
echo
echo "stack-demo: sockets left: $left, domain 1 directories left: $nodes, backend-blk exit status: $status"
[ "$left" = 0 ] && [ "$nodes" = 0 ] && [ "$status" = 0 ]
