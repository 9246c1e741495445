#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz + libFuzzer, nightly toolchain) for SECONDS each
# (default 30) on its committed seeds (fuzz/seeds/<target>) and its working corpus
# (fuzz/corpus/<target>, not committed). Crashes land in fuzz/artifacts/<target>; the script
# fails if any target finds one (a crash, a leak, or a hang: one input running over 30 s).
# Installs the nightly toolchain and cargo-fuzz when missing.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-30}
shift || true
cd "$root/fuzz"
rustup toolchain list | grep '^nightly' >/dev/null || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build -O
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== $t: ${secs}s"
    if ! cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=30 -print_final_stats=1 2>&1 | tail -n 25 | grep -E 'stat::|DONE|ERROR|panicked|SUMMARY|Test unit'; then
        status=1
    fi
    if ls "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* >/dev/null 2>&1; then
        echo "!! $t: findings in fuzz/artifacts/$t"
        status=1
    fi
done
exit $status
