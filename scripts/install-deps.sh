#!/usr/bin/env bash
# Installs the Debian packages pvio's tests and demo use, only those that are missing:
# QEMU (qemu-system-x86_64, qemu-storage-daemon), a Linux kernel with its modules and a static
# busybox for the test guests, fio, the xenstore tools, socat, DPDK's testpmd, iproute2, binutils,
# ACPICA's iasl, and for backend-blk's storage drivers libnbd, librbd/librados, clang/libclang
# (bindgen), nbdkit, qemu-nbd and a Ceph monitor and OSD. Idempotent; uses sudo when not
# run as root. Debian 12 (bookworm) or later.
set -euo pipefail

packages=(
    qemu-system-x86   # qemu-system-x86_64 and qemu-storage-daemon
    qemu-block-extra  # qemu-storage-daemon's rbd driver (block-rbd.so), for the RBD benchmark rows
    linux-image-amd64 # the guest kernel (/boot/vmlinuz-*) and its virtio modules
    kmod              # modinfo, to find the modules
    xz-utils          # .ko.xz modules
    busybox-static    # the guest's userspace
    fio
    xenstore-utils
    socat
    dpdk-dev          # dpdk-testpmd: net_virtio_user / net_vhost, a real vhost-user-net peer
    iproute2          # ip netns, for the network tests' own namespaces
    binutils          # objdump: vmm's test that pvio's guest has no instruction KVM's CPL0 emulator rejects
    acpica-tools      # iasl: vmm's test that disassembles the ACPI tables it gives Linux
    nbdkit            # NBD test server (memory plugin) for backend-blk's nbd driver
    qemu-utils        # qemu-nbd, a second NBD test server
    libnbd-dev        # backend-blk's nbd driver links libnbd
    clang             # bindgen (backend-blk's nbd feature) needs clang's headers
    libclang-dev      # and libclang
    librbd-dev        # backend-blk's rbd driver links librbd
    librados-dev      # and librados
    ceph-mon          # the single-host test cluster of scripts/ceph-test-cluster.sh
    ceph-osd
    ceph-common       # ceph, rbd, ceph-authtool, monmaptool
)

# The packages above that are not installed, one per line.
missing_packages() {
    for p in "${packages[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            echo "$p"
        fi
    done
}

mapfile -t missing < <(missing_packages)
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all packages present"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    fi
    sudo=(sudo)
fi
install() {
    echo "install-deps: installing $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@"
}
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
install "${missing[@]}"
# Installing can remove a listed package that was already present: a machine with qemu-utils
# from bookworm-backports loses it when qemu-block-extra 7.2 comes in (they must be one QEMU
# version). Install what is missing again, now from the same release as the rest.
mapfile -t missing < <(missing_packages)
if [ ${#missing[@]} -ne 0 ]; then
    install "${missing[@]}"
fi
mapfile -t missing < <(missing_packages)
if [ ${#missing[@]} -ne 0 ]; then
    echo "install-deps: still missing after installing: ${missing[*]}" >&2
    exit 1
fi
