#!/usr/bin/env python3
"""A capturing vhost-user proxy (vhost-user.rst): listens where a front-end (QEMU) connects,
connects to the real back-end, and relays every message both ways with its SCM_RIGHTS file
descriptors (socket.recv_fds / send_fds). When the front-end leaves it writes fuzz seeds:

- the front-end's messages in the `vhost_user` target's input format (one device byte, then
  per message: descriptor byte, u16 length, the message; descriptor kinds 0 memory, 1 eventfd,
  2 /dev/null, 3 socket; count 15: the descriptor the back-end sent, handed back), to
  SEEDS/vhost_user/qemu-DEVICE;
- the descriptor chains the guest's driver made available, read from the shared guest memory
  (the proxy keeps the memory descriptors and the ring addresses it relays and polls the
  available rings): backend-blk request chains in the `blk_request` format, backend-net
  transmit chains (odd queues) in the `net_tx` format, control chains (even queues whose
  chains start with a readable descriptor: the receive queues' are all writable) in the
  `net_ctrl` format.

Usage: vhost-capture-proxy.py --listen PATH --backend PATH --device blk|net --seeds DIR
                              [--source NAME]   (seed file prefix, default qemu)
"""
import argparse
import mmap
import os
import socket
import struct
import threading
import time

HDR = 12
MAX_FDS = 32
# Front-end request codes (vhost-user.rst "Front-end message types").
SET_FEATURES, SET_MEM_TABLE, SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE = 2, 5, 8, 9, 10
ADD_MEM_REG, REM_MEM_REG = 37, 38
# Descriptor flags (virtio 1.2 §2.7.5).
NEXT, WRITE, INDIRECT = 1, 2, 4
# The blk_request target's guest memory layout (fuzz_targets/blk_request.rs).
BLK_SCRATCH, BLK_SCRATCH_LEN, BLK_TABLE, BLK_FREE, BLK_MEM = 0x10000, 0x2000, 0x40000, 0x50000, 0x100000


def fd_kind(fd):
    """The vhost_user target's descriptor kind for a received descriptor."""
    link = os.readlink(f"/proc/self/fd/{fd}")
    if "eventfd" in link:
        return 1
    if link == "/dev/null":
        return 2
    if link.startswith("socket:"):
        return 3
    return 0


def read_message(sock):
    """One message (header + payload bytes, descriptors) or None at the end of the stream."""
    data, fds = b"", []
    while len(data) < HDR:
        chunk, got, _, _ = socket.recv_fds(sock, HDR - len(data), MAX_FDS)
        if not chunk:
            for fd in got + fds:
                os.close(fd)
            return None
        data += chunk
        fds += got
    size = struct.unpack_from("<I", data, 8)[0]
    while len(data) < HDR + size:
        chunk = sock.recv(HDR + size - len(data))
        if not chunk:
            return None
        data += chunk
    return data, fds


class Guest:
    """The guest memory and rings the front-end described, read-only."""

    def __init__(self):
        self.regions = []  # (gpa, size, uaddr, mapping)
        self.rings = {}  # index -> dict(num, desc, avail, last)
        self.features = 0
        self.lock = threading.Lock()

    def add_region(self, gpa, size, uaddr, offset, fd):
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset)
        self.regions.append((gpa, size, uaddr, m))

    def read(self, gpa, n):
        for base, size, _, m in self.regions:
            if base <= gpa and gpa + n <= base + size:
                return m[gpa - base:gpa - base + n]
        return None

    def va_to_gpa(self, va):
        for base, size, uaddr, _ in self.regions:
            if uaddr <= va < uaddr + size:
                return va - uaddr + base
        return None

    def on_message(self, code, payload, fds):
        with self.lock:
            if code == SET_FEATURES:
                self.features = struct.unpack_from("<Q", payload)[0]
            elif code == SET_MEM_TABLE:
                n = struct.unpack_from("<I", payload, 0)[0]
                self.regions = []
                for i in range(min(n, len(fds))):
                    gpa, size, uaddr, off = struct.unpack_from("<QQQQ", payload, 8 + 32 * i)
                    self.add_region(gpa, size, uaddr, off, fds[i])
            elif code == ADD_MEM_REG and fds:
                gpa, size, uaddr, off = struct.unpack_from("<QQQQ", payload, 8)
                self.add_region(gpa, size, uaddr, off, fds[0])
            elif code == SET_VRING_NUM:
                i, num = struct.unpack_from("<II", payload)
                self.rings.setdefault(i, {})["num"] = num
            elif code == SET_VRING_BASE:
                i, base = struct.unpack_from("<II", payload)
                self.rings.setdefault(i, {})["last"] = base
            elif code == SET_VRING_ADDR:
                i, _, desc, _, avail, _ = struct.unpack_from("<IIQQQQ", payload)
                ring = self.rings.setdefault(i, {})
                ring["desc"], ring["avail"] = self.va_to_gpa(desc), self.va_to_gpa(avail)

    def descriptor(self, table, i):
        raw = self.read(table + 16 * i, 16)
        return struct.unpack("<QIHH", raw) if raw else None

    def chain(self, table, head, limit):
        """[(addr, len, flags, bytes or None)] of the chain at `head`, and whether indirect."""
        out, i = [], head
        while len(out) < limit:
            d = self.descriptor(table, i)
            if d is None:
                break
            addr, length, flags, nxt = d
            if flags & INDIRECT:
                inner, _ = self.chain(addr, 0, min(length // 16, 16))
                return inner, True
            data = None if flags & WRITE else self.read(addr, min(length, BLK_SCRATCH_LEN))
            out.append((addr, length, flags, data))
            if not flags & NEXT:
                break
            i = nxt
        return out, False

    def poll(self, queues):
        """New chains on `queues` since the last poll: [(queue, chain, indirect)]."""
        found = []
        with self.lock:
            for q, ring in self.rings.items():
                if q not in queues or not {"num", "desc", "avail"} <= ring.keys() or None in (ring["desc"], ring["avail"]):
                    continue
                raw = self.read(ring["avail"] + 2, 2)
                if raw is None:
                    continue
                idx = struct.unpack("<H", raw)[0]
                last = ring.get("last", 0)
                while last != idx:
                    head_raw = self.read(ring["avail"] + 4 + 2 * (last % ring["num"]), 2)
                    last = (last + 1) & 0xFFFF
                    if head_raw:
                        chain, indirect = self.chain(ring["desc"], struct.unpack("<H", head_raw)[0], 16)
                        found.append((q, chain, indirect))
                ring["last"] = last
        return found


def blk_seed(chain, indirect):
    """A chain in the blk_request target's format: its descriptors remapped into that target's
    guest memory (readable bytes in its scratch area, the rest in free zeroed memory)."""
    scratch, descs, free = b"", [], BLK_FREE
    for k, (_, length, flags, data) in enumerate(chain):
        if data is not None and len(scratch) + len(data) <= BLK_SCRATCH_LEN and len(data) == length:
            addr = BLK_SCRATCH + len(scratch)
            scratch += data
        else:
            addr = free % BLK_MEM
            free += length % 0x20000
        nxt = k + 1 if k + 1 < len(chain) else 0
        descs.append(struct.pack("<QIHB", addr, length % 0x20000, flags & (NEXT | WRITE), nxt))
    if indirect:
        head = struct.pack("<QIHB", BLK_TABLE, 16 * len(descs), INDIRECT, 0)
        ctl = bytes([0, len(descs), 0, 6])
        return ctl + head + b"".join(descs) + scratch
    ctl = bytes([len(descs) - 1, 0, 0, 6])
    return ctl + b"".join(descs) + scratch


def relay(src, dst, on_message):
    try:
        while True:
            m = read_message(src)
            if m is None:
                break
            data, fds = m
            on_message(data, fds)
            socket.send_fds(dst, [data], fds)
            for fd in fds:
                os.close(fd)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--device", choices=["blk", "net"], required=True)
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--source", default="qemu")
    a = ap.parse_args()
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(a.listen)
    lsock.listen(1)
    front, _ = lsock.accept()
    back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    back.connect(a.backend)
    guest, records, chains, returned = Guest(), [], [], set()

    def inode(fd):
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    def from_back(data, fds):
        returned.update(inode(fd) for fd in fds)

    def from_front(data, fds):
        kinds = [fd_kind(fd) for fd in fds] or [0]
        b = min(len(fds), 8) | (kinds[0] << 4) | (kinds[-1] << 6)
        if len(fds) == 1 and inode(fds[0]) in returned:
            b = 15  # the descriptor the back-end sent (its inflight area), handed back
        records.append(bytes([b]) + struct.pack("<H", len(data)) + data)
        guest.on_message(struct.unpack_from("<I", data)[0], data[HDR:], fds)

    up = threading.Thread(target=relay, args=(front, back, from_front))
    down = threading.Thread(target=relay, args=(back, front, from_back))
    up.start()
    down.start()
    while up.is_alive():
        chains += guest.poll(set(range(64)))
        time.sleep(0.002)
    down.join()
    write_seeds(a, records, chains, guest.features)


def write_seeds(a, records, chains, features):
    def put(target, name, data):
        os.makedirs(os.path.join(a.seeds, target), exist_ok=True)
        with open(os.path.join(a.seeds, target, name), "wb") as f:
            f.write(data)

    device = bytes([0 if a.device == "blk" else 1])
    put("vhost_user", f"{a.source}-{a.device}", device + b"".join(records))
    seen, count = {}, 0
    for q, chain, indirect in chains:
        if not chain or chain[0][3] is None:
            continue  # a receive chain (all writable)
        first = chain[0][3]
        if a.device == "blk":
            target = "blk_request"
            kind = (struct.unpack_from("<I", first)[0] if len(first) >= 4 else -1, len(chain), indirect)
            data = blk_seed(chain, indirect)
        elif q % 2:
            target = "net_tx"
            frame = b"".join(d for _, _, _, d in chain if d is not None)
            kind = (frame[12 + 12:12 + 14] if len(frame) >= 26 else b"", len(frame) // 64)
            data = bytes([7]) + frame
        else:
            # net_ctrl: acked features (u64), queue pairs (u16), then one command (length
            # byte, class, command, data): the ring index of the control queue is 2 * pairs.
            target = "net_ctrl"
            cmd = b"".join(d for _, _, _, d in chain if d is not None)[:255]
            kind = tuple(cmd[:2])
            data = struct.pack("<QH", features, max(q // 2, 1)) + bytes([len(cmd)]) + cmd
        if seen.get((target, kind), 0) < 2:
            seen[(target, kind)] = seen.get((target, kind), 0) + 1
            count += 1
            put(target, f"{a.source}-{count}", data)
    print(f"{a.source} {a.device}: {len(records)} messages, {len(chains)} chains, {count} chain seeds")


if __name__ == "__main__":
    main()
