#!/usr/bin/env bash
# The split-driver control plane with pvio's real guest on the built-in defaults, with a
# `pvctl list` transcript at each step: the evtchn broker, xenstore-lite serving guests over
# xenstore rings, backend-blk and backend-net in store mode (one daemon for every disk, one
# for every NIC), pvctl as the toolstack, and pvio's own guest in pvio's VMM (`pvctl domain
# start`, needs /dev/kvm) as domains 1 and 2, speaking XenBus over their rings. Domain 1 has a
# disk and a NIC, domain 2 a NIC on the same switch: handshake, verified disk I/O, checked
# frames between the guests, the disk hot-unplugged while domain 1 runs and hot-plugged again
# (the guest finds its data), destroy, and a check that no socket, node or process is left.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "stack-vmm-demo: cargo not found: install a Rust toolchain (1.85 or newer)" >&2
    exit 1
fi
if [ ! -w /dev/kvm ]; then
    echo "stack-vmm-demo: /dev/kvm is missing or not writable: the guest needs KVM" >&2
    exit 1
fi
echo "stack-vmm-demo: building evtchn-broker, xenstore-lite, backend-blk, backend-net, pvctl, vmm and its guest"
cargo build --quiet -p evtchn -p xenstore-lite -p backend-blk -p backend-net -p pvctl -p vmm \
    --bin evtchn-broker --bin xenstore-lite --bin backend-blk --bin backend-net --bin pvctl --bin vmm
payload=$(cargo run --quiet -p vmm --example guest-path)
bin=$PWD/target/debug
demo=stack-vmm-demo
list_filter="s|$payload|pvio-guest|"
# shellcheck source=scripts/stack-common.sh
source scripts/stack-common.sh
# Starts domain $1's VMM with guest arguments "${@:2}", console in guest-$1.out; prints the
# VMM's pid.
start() {
    local domid=$1
    shift
    say pvctl domain start "$domid" --evtchn-broker evtchn.sock --console "guest-$domid.out" -- "$@" >&2
    pvctl domain start "$domid" --evtchn-broker "$work/evtchn.sock" \
        --console "$work/guest-$domid.out" -- "$@"
}
# Shows domain $1's console so far (lines $2.. with a start line).
show_guest() { tail -n "+${2:-1}" "$work/guest-$1.out" | sed "s|^pvio-guest: |  guest $1: |"; }
# Waits until domain $1's console holds $2 at least $3 (default 1) times.
wait_console() { wait_for sh -c "[ \$(grep -c '$2' '$work/guest-$1.out') -ge ${3:-1} ]"; }
# Gone, or a zombie its new parent has not reaped yet.
gone() { [ ! -e "/proc/$1" ] || [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" = Z ]; }
slots() {
    say "xenstore-lite ls -f /local/domain | grep virtio-mmio-slot"
    "$bin/xenstore-lite" ls -f /local/domain | grep virtio-mmio-slot || echo "(none)"
}

"$bin/evtchn-broker" --socket "$work/evtchn.sock" 2>"$work/broker.log" &
pids+=($!)
wait_for test -S "$work/evtchn.sock"
"$bin/xenstore-lite" serve --socket "$work/xs.sock" --evtchn-broker "$work/evtchn.sock" \
    2>"$work/xenstore.log" &
pids+=($!)
wait_for pvctl list
daemons=()
for kind in blk net; do
    RUST_LOG=warn "$bin/backend-$kind" --xenstore "$work/xs.sock" --run-dir "$work/run" \
        2>"$work/backend-$kind.log" &
    daemons+=($!)
    pids+=($!)
done
truncate -s 64M "$work/disk.raw"

say pvctl domain create --name demo --mem 64 --guest pvio-guest
pvctl domain create --name demo --mem 64 --guest "$payload"
say pvctl domain create --name peer --mem 64 --guest pvio-guest
pvctl domain create --name peer --mem 64 --guest "$payload"
say pvctl disk attach 1 --image disk.raw
(cd "$work" && pvctl disk attach 1 --image disk.raw)
say "pvctl nic attach 1; pvctl nic attach 2   # both on switch pvio0"
pvctl nic attach 1 >/dev/null
pvctl nic attach 2 >/dev/null
wait_for sh -c "[ \$(\"$bin/pvctl\" list | grep -c 'back InitWait') = 3 ]"
list

# Domain 2 checks and acknowledges 8 frames; domain 1 writes and verifies 1 MiB, sends the
# frames, then lets its disk go, waits for it to come back and verifies the data again.
pid2=$(start 2 net-recv=8 unplug-wait)
pid1=$(start 1 write=7@0+1M verify=7@0+1M net-send=8 unplug-wait=vbd plug-wait=vbd \
    verify=7@0+1M unplug-wait)
wait_console 1 'net send ok'
wait_console 2 'net recv ok'
show_guest 1
show_guest 2
list
slots

say "pvctl disk detach 1 0   # the guest sees Closing: Closing, Closed; the VMM empties the slot"
pvctl disk detach 1 0
wait_console 1 'vbd/0 state 6'
show_guest 1 | tail -2
list
slots

say "pvctl disk attach 1 --image disk.raw   # the VMM hot-plugs it, the guest connects it"
mark=$(($(wc -l <"$work/guest-1.out") + 1))
(cd "$work" && pvctl disk attach 1 --image disk.raw)
wait_console 1 'blk verify ok' 2
show_guest 1 "$mark"
list
slots

say "pvctl domain destroy 1; pvctl domain destroy 2   # the guests close every device and exit"
pvctl domain destroy 1
pvctl domain destroy 2
show_guest 1 | tail -4
list
for pid in "$pid1" "$pid2"; do
    if ! gone "$pid"; then
        echo "stack-vmm-demo: a VMM (pid $pid) still runs after destroy" >&2
        exit 1
    fi
done

left=$(find "$work/run" -name '*.sock' | wc -l)
nodes=0
for path in /local/domain/1 /local/domain/2 /local/domain/0/backend/vbd/1 \
    /local/domain/0/backend/vif/1 /local/domain/0/backend/vif/2; do
    if "$bin/xenstore-lite" exists "$path"; then nodes=$((nodes + 1)); fi
done
status=0
for pid in "${daemons[@]}"; do
    kill "$pid"
    wait "$pid" || status=$?
done
pids=("${pids[@]:0:2}")
echo
echo "stack-vmm-demo: sockets left: $left, domain directories left: $nodes, back-end exit status: $status"
[ "$left" = 0 ] && [ "$nodes" = 0 ] && [ "$status" = 0 ]
