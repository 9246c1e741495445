#!/usr/bin/env bash
# The split-driver control plane on the built-in defaults, with a `pvctl list` transcript at
# each step: xenstore-lite, backend-blk and backend-net in store mode (one daemon for every
# disk, one for every NIC), pvctl as the toolstack, and the mock front end (pvio-mock-guest)
# playing guest domains 1 and 2 over their own store sockets: a disk's attach, handshake and
# verified I/O, hot-unplug while connected, re-plug; a NIC for each domain on switch pvio0,
# pings between them, domain 2's NIC unplugged and plugged again while domain 1's runs;
# destroy, and a check that no socket, node or process is left. A real guest comes with the
# vmm crate.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "stack-demo: cargo not found: install a Rust toolchain (1.85 or newer)" >&2
    exit 1
fi
echo "stack-demo: building xenstore-lite, backend-blk, backend-net, pvctl, pvio-mock-guest"
cargo build --quiet -p xenstore-lite -p backend-blk -p backend-net -p pvctl -p pvio-tests \
    --bin xenstore-lite --bin backend-blk --bin backend-net --bin pvctl --bin pvio-mock-guest
bin=$PWD/target/debug
demo=stack-demo
# shellcheck source=scripts/stack-common.sh
source scripts/stack-common.sh
guest() {
    "$bin/pvio-mock-guest" --xenstore "$work/dom1.sock" --domid 1 >"$work/guest.out" 2>&1 &
    guest_pid=$!
    wait_for grep -q 'verified I/O done' "$work/guest.out"
    sed "s|$work/||g; s|^|  guest: |" "$work/guest.out"
}
# nic_guest DOMID OUT [ARGS...]: domain DOMID's NIC 0 in the background until its unplug;
# returns once it answers pings (after its own pings, if ARGS asks for some).
nic_guest() {
    local domid=$1 out=$work/$2
    shift 2
    "$bin/pvio-mock-guest" --xenstore "$work/dom$domid.sock" --domid "$domid" --nic "$@" \
        >"$out" 2>&1 &
    nic_pid=$!
    wait_for grep -q 'answering pings' "$out"
    sed "s|$work/||g; s|^|  guest $domid: |" "$out"
}

"$bin/xenstore-lite" serve --socket "$work/xs.sock" --domain-socket "1:$work/dom1.sock" \
    --domain-socket "2:$work/dom2.sock" 2>"$work/xenstore.log" &
pids+=($!)
wait_for pvctl list
RUST_LOG=warn "$bin/backend-blk" --xenstore "$work/xs.sock" --run-dir "$work/run" \
    2>"$work/backend-blk.log" &
backend=$!
pids+=("$backend")
RUST_LOG=warn "$bin/backend-net" --xenstore "$work/xs.sock" --run-dir "$work/run" \
    2>"$work/backend-net.log" &
backend_net=$!
pids+=("$backend_net")
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

say pvctl domain create --name peer --mem 128 --guest guest.bin
(cd "$work" && pvctl domain create --name peer --mem 128 --guest guest.bin)
say pvctl nic attach 1   # the default: switch pvio0, MAC 00:16:3e:00:01:00
pvctl nic attach 1
say pvctl nic attach 2
pvctl nic attach 2
wait_for sh -c "[ \$(\"$bin/pvctl\" list | grep -c 'vif.*back InitWait') = 2 ]"
list

say "pvio-mock-guest --domid 2 --nic &   # answers pings"
nic_guest 2 nic2.out
nic2_pid=$nic_pid
say "pvio-mock-guest --domid 1 --nic --ping 00:16:3e:00:02:00 &"
nic_guest 1 nic1.out --ping 00:16:3e:00:02:00
nic1_pid=$nic_pid
list

say pvctl nic detach 2 0   # domain 1's NIC stays on the switch
pvctl nic detach 2 0
wait "$nic2_pid"
sed -n "s|^\(vif/2/0: unplugged.*\)|  guest 2: \1|p" "$work/nic2.out"
list

say pvctl nic attach 2
pvctl nic attach 2
say "pvio-mock-guest --domid 2 --nic --ping 00:16:3e:00:01:00 &   # domain 1 still answers"
nic_guest 2 nic2.out --ping 00:16:3e:00:01:00
nic2_pid=$nic_pid
list

say pvctl domain destroy 1
pvctl domain destroy 1
wait "$guest_pid" "$nic1_pid"
say pvctl domain destroy 2
pvctl domain destroy 2
wait "$nic2_pid"
sed -n "s|^\(vif/1/0: unplugged.*\)|  guest 1: \1|p" "$work/nic1.out"
list

left=$(find "$work/run" -name '*.sock' | wc -l)
nodes=0
for path in /local/domain/1 /local/domain/2 /local/domain/0/backend/vbd/1 \
    /local/domain/0/backend/vif/1 /local/domain/0/backend/vif/2; do
    if "$bin/xenstore-lite" exists "$path"; then nodes=$((nodes + 1)); fi
done
kill "$backend" "$backend_net"
wait "$backend" && status=0 || status=$?
wait "$backend_net" && net_status=0 || net_status=$?
pids=("${pids[@]:0:1}")
echo
echo "stack-demo: sockets left: $left, domain directories left: $nodes," \
    "backend-blk exit status: $status, backend-net exit status: $net_status"
[ "$left" = 0 ] && [ "$nodes" = 0 ] && [ "$status" = 0 ] && [ "$net_status" = 0 ]
