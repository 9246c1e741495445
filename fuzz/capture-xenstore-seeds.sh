#!/usr/bin/env bash
# Captures what Debian's xenstore-utils send (real clients' xs_wire requests) through a socat
# proxy in front of xenstore-lite, and writes them as seeds of the xs_store fuzz target:
# input format = repeated (connection selector byte, length byte, that many bytes).
# Usage: fuzz/capture-xenstore-seeds.sh   (from the repository root; needs socat, xenstore-utils)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/fuzz/seeds/xs_store"
mkdir -p "$out"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build -q -p xenstore-lite --manifest-path "$root/Cargo.toml"
"$root/target/debug/xenstore-lite" serve --socket "$work/xs.sock" &
for _ in $(seq 100); do [ -S "$work/xs.sock" ] && break; sleep 0.1; done
n=0
capture() {
    n=$((n + 1))
    socat -r "$work/req$n" UNIX-LISTEN:"$work/proxy$n" UNIX-CONNECT:"$work/xs.sock" &
    for _ in $(seq 100); do [ -S "$work/proxy$n" ] && break; sleep 0.05; done
    XENSTORED_PATH="$work/proxy$n" timeout 5 "$@" >/dev/null 2>&1 || true
    wait "$!" 2>/dev/null || true
}
capture xenstore-write /local/domain/0/name Domain-0 /local/domain/5/device/vbd/51712/state 1
capture xenstore-read /local/domain/0/name
capture xenstore-ls /local
capture xenstore-list /local/domain
capture xenstore-exists /local/domain/5
capture xenstore-chmod /local/domain/5 n5 r0
capture xenstore-watch -n 2 /local/domain/5
capture xenstore-rm /local/domain/5/device
python3 - "$work" "$out" "$n" <<'PY'
import sys, os
work, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(1, n + 1):
    data = open(os.path.join(work, f"req{i}"), "rb").read()
    for sel in (0, 1):  # as dom0, and as guest domain 5
        seed = bytearray()
        for k in range(0, len(data), 255):
            chunk = data[k:k + 255]
            seed += bytes([sel, len(chunk)]) + chunk
        open(os.path.join(out, f"xsutils-{i}-conn{sel}"), "wb").write(seed)
PY
ls -l "$out"
