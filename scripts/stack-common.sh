# Shared by scripts/stack-demo.sh and scripts/stack-vmm-demo.sh (sourced, not run): a work
# directory removed on exit with every process the demo started (KEEP=1 keeps the directory),
# the `pvctl` wrapper on the demo's store, transcript helpers and a bounded wait.
# Expects: $demo (the script's name for messages), $bin (the built binaries); optional
# $list_filter (extra sed expressions for `pvctl list` lines).
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
list() { say pvctl list; pvctl list | sed "s|$work/||g${list_filter:+; $list_filter}"; }
# Waits (up to 30 s) until command "$@" succeeds.
wait_for() {
    for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "$demo: timed out waiting for: $*" >&2
    exit 1
}
