#!/usr/bin/env bash
# A disk's life in the split-driver control plane on the built-in defaults, with a `pvctl list` transcript at
# each step: the evtchn broker, xenstore-lite serving guests over xenstore rings, backend-blk
# in store mode (one daemon for every disk), pvctl as the toolstack, and pvio's own guest in
# pvio's VMM (`pvctl domain start`, needs /dev/kvm) as domain 1, speaking XenBus over its
# ring: attach, handshake and verified I/O, hot-unplug while running, re-plug (the next boot
# finds the data), destroy, and a check that no socket, node or process is left. Disks only
# for now.
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
echo "stack-vmm-demo: building evtchn-broker, xenstore-lite, backend-blk, pvctl, vmm and its guest"
cargo build --quiet -p evtchn -p xenstore-lite -p backend-blk -p pvctl -p vmm \
    --bin evtchn-broker --bin xenstore-lite --bin backend-blk --bin pvctl --bin vmm
payload=$(cargo run --quiet -p vmm --example guest-path)
bin=$PWD/target/debug
demo=stack-vmm-demo
list_filter="s|$payload|pvio-guest|"
# shellcheck source=scripts/stack-common.sh
source scripts/stack-common.sh
# Starts domain 1's VMM with guest arguments "$@" and waits for the guest's verified I/O.
guest() {
    say pvctl domain start 1 --evtchn-broker evtchn.sock --console guest.out -- "$@"
    guest_pid=$(pvctl domain start 1 --evtchn-broker "$work/evtchn.sock" \
        --console "$work/guest.out" -- "$@")
    wait_for grep -q 'blk verify ok' "$work/guest.out"
    show_guest
}
show_guest() { sed "s|^pvio-guest: |  guest: |" "$work/guest.out"; }

"$bin/evtchn-broker" --socket "$work/evtchn.sock" 2>"$work/broker.log" &
pids+=($!)
wait_for test -S "$work/evtchn.sock"
"$bin/xenstore-lite" serve --socket "$work/xs.sock" --evtchn-broker "$work/evtchn.sock" \
    2>"$work/xenstore.log" &
pids+=($!)
wait_for pvctl list
RUST_LOG=warn "$bin/backend-blk" --xenstore "$work/xs.sock" --run-dir "$work/run" \
    2>"$work/backend-blk.log" &
backend=$!
pids+=("$backend")
truncate -s 64M "$work/disk.raw"

say pvctl domain create --name demo --mem 64 --guest pvio-guest
pvctl domain create --name demo --mem 64 --guest "$payload"
say pvctl disk attach 1 --image disk.raw
(cd "$work" && pvctl disk attach 1 --image disk.raw)
wait_for sh -c "\"$bin/pvctl\" list | grep -q 'back InitWait'"
list

# The guest: Initialised, Connected, writes and verifies 1 MiB, then waits for an unplug.
guest write=7@0+1M verify=7@0+1M unplug-wait
list

say "pvctl disk detach 1 0   # the guest sees Closing: Closing, Closed, and exits"
pvctl disk detach 1 0
wait_for grep -q 'all jobs passed' "$work/guest.out"
show_guest | tail -3
list

say pvctl disk attach 1 --image disk.raw
(cd "$work" && pvctl disk attach 1 --image disk.raw)
wait_for sh -c "\"$bin/pvctl\" list | grep -q 'back InitWait'"
# A new boot of the guest finds the data the first one wrote.
guest verify=7@0+1M unplug-wait
list

say "pvctl domain destroy 1   # closes the disk through the guest, stops the VMM"
pvctl domain destroy 1
list
# Gone, or a zombie its new parent has not reaped yet.
if [ -e "/proc/$guest_pid" ] && [ "$(sed 's/.*) //' "/proc/$guest_pid/stat" | cut -c1)" != Z ]; then
    echo "stack-vmm-demo: the VMM (pid $guest_pid) still runs after destroy" >&2
    exit 1
fi

left=$(find "$work/run" -name '*.sock' | wc -l)
nodes=0
for path in /local/domain/1 /local/domain/0/backend/vbd/1; do
    if "$bin/xenstore-lite" exists "$path"; then nodes=$((nodes + 1)); fi
done
kill "$backend"
wait "$backend" && status=0 || status=$?
pids=("${pids[@]:0:2}")
echo
echo "stack-vmm-demo: sockets left: $left, domain 1 directories left: $nodes, backend-blk exit status: $status"
[ "$left" = 0 ] && [ "$nodes" = 0 ] && [ "$status" = 0 ]
