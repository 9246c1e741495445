#!/usr/bin/env bash
# A single-host Ceph cluster for tests and trials: one monitor and one BlueStore OSD on a
# sparse file, everything on loopback (127.0.0.1), no manager, pool "rbd" with one replica.
#   scripts/ceph-test-cluster.sh start DIR [PORT]   # bring it up in DIR (about 15 s), the
#                                                 # monitor on PORT (msgr2, default 3300) and
#                                                 # PORT+1 (msgr1); prints the conf's path
#   scripts/ceph-test-cluster.sh stop DIR    # stop the daemons by their pid files
# Clients use DIR/ceph.conf (which names DIR/keyring, client.admin): e.g.
#   rbd -c DIR/ceph.conf create --size 1G rbd/img
#   backend-blk --socket S --image rbd:rbd/img:conf=DIR/ceph.conf
# Needs ceph-mon, ceph-osd and ceph-common (scripts/install-deps.sh).
set -euo pipefail

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || [ $# -eq 3 ] || usage
cmd=$1
dir=$(realpath -m "$2")
port=${3:-3300}
mon_addr="[v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]"
conf=$dir/ceph.conf

stop() {
    for pidfile in "$dir"/run/osd.0.pid "$dir"/run/mon.a.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

start() {
    rm -rf "$dir"/mon "$dir"/osd "$dir"/run "$dir"/log
    mkdir -p "$dir"/run "$dir"/log "$dir"/mon/a "$dir"/osd/0
    cat >"$conf" <<CONF
[global]
fsid = $(cat /proc/sys/kernel/random/uuid)
mon host = $mon_addr
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
run dir = $dir/run
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
mon data = $dir/mon/\$id
osd data = $dir/osd/\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 4294967296
osd memory target = 536870912
bluestore cache autotune = false
bluestore cache size = 134217728
mon warn on pool no redundancy = false
[client]
keyring = $dir/keyring
[osd]
keyring = $dir/osd/\$id/keyring
CONF
    local keyring=$dir/keyring
    ceph-authtool --create-keyring "$keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
        --cap mgr 'allow *' >/dev/null
    monmaptool --create --clobber --addv a "$mon_addr" \
        --fsid "$(sed -n 's/^fsid = //p' "$conf")" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" --keyring "$keyring"
    ceph-mon -c "$conf" -i a
    local uuid
    uuid=$(cat /proc/sys/kernel/random/uuid)
    ceph --connect-timeout 60 -c "$conf" osd new "$uuid" >/dev/null
    ceph-osd -c "$conf" -i 0 --no-mon-config --mkfs --mkkey --osd-uuid "$uuid" \
        >"$dir/log/osd-mkfs.log" 2>&1
    ceph --connect-timeout 60 -c "$conf" auth add osd.0 osd 'allow *' mon 'allow profile osd' \
        -i "$dir/osd/0/keyring" >/dev/null 2>&1
    ceph-osd -c "$conf" -i 0 2>/dev/null
    ceph --connect-timeout 60 -c "$conf" osd pool create rbd 8 8 >/dev/null 2>&1
    rbd -c "$conf" pool init rbd
    echo "$conf"
}

case $cmd in
start)
    stop
    start || {
        stop
        exit 1
    }
    ;;
stop) stop ;;
*) usage ;;
esac
