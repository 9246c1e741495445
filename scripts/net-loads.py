#!/usr/bin/env python3
"""Instructions per frame in backend-net's data path, and the loads the store buffer cannot
forward, under the `net` benchmark's DPDK load (benches/README.md, "Loads that wait for stores").

Runs `target/release/net --load dpdk` once with backend-net under callgrind, then prints:
- instructions per frame by function (frames: the deferred copies `Copies::run` made);
- for the hot functions, each load from the stack, executed at least once per frame, whose
  bytes hot stores (at least 0.3 per frame) wrote only in narrower parts: more than one store,
  or part of one. Such a load cannot take its data from the store buffer; it waits until the
  stores reach the cache. A static check: it matches offsets of %rsp (and of registers set by
  `lea N(%rsp)`) in the function's whole disassembly, not along executed paths, so a flagged
  load is a candidate to read in `objdump`, not a proof.

Needs valgrind and binutils (objdump, nm), DPDK as `net` does, and a release build of
backend-net and pvio-benches. Usage, from the repository root:
    scripts/net-loads.py [--hugepages] [--backend-net PATH] [--function NAME ...]
"""

import argparse
import bisect
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile

HOT = [
    "backend_net::worker::Worker::take_all",
    "backend_net::port::RxQueue::offer",
    "backend_net::switch::Switch::forward",
    "backend_net::deferred::Copies::push",
    "backend_net::deferred::Copies::run",
]
FRAME_FUNCTION = "backend_net::deferred::Copies::run"
REG_SIZE = {}
for size, names in [
    (8, "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15"),
    (4, "eax ebx ecx edx esi edi ebp esp r8d r9d r10d r11d r12d r13d r14d r15d"),
    (2, "ax bx cx dx si di bp sp r8w r9w r10w r11w r12w r13w r14w r15w"),
    (1, "al bl cl dl sil dil bpl spl r8b r9b r10b r11b r12b r13b r14b r15b"),
]:
    REG_SIZE.update({r: size for r in names.split()})
EXTENDING_LOADS = {"movzbl": 1, "movzwl": 2, "movzbq": 1, "movzwq": 2, "movsbl": 1,
                   "movswl": 2, "movslq": 4, "movsbq": 1, "movswq": 2, "movzbw": 1}
XMM_PART = {"movq": 8, "vmovq": 8, "movd": 4, "vmovd": 4, "movss": 4, "movsd": 8,
            "movlps": 8, "movhps": 8}


def run_under_callgrind(args, out_dir):
    """Runs the benchmark once with backend-net wrapped in callgrind; returns the output files."""
    real = os.path.abspath(args.backend_net)
    wrap_dir = os.path.join(out_dir, "bin")
    os.makedirs(wrap_dir)
    wrapper = os.path.join(wrap_dir, "backend-net")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec valgrind --tool=callgrind --dump-instr=yes "
                f"--callgrind-out-file={out_dir}/callgrind.%p {real} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    cmd = ["target/release/net", "--load", "dpdk", "--traffic", "64",
           "--pairs", "1", "--seconds", "6", "--rounds", "1", "--bin-dir", wrap_dir]
    if args.hugepages:
        cmd.append("--hugepages")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return glob.glob(os.path.join(out_dir, "callgrind.*"))


def instruction_counts(files):
    """Executions per instruction address of backend-net, summed over callgrind's outputs."""
    counts = collections.Counter()
    cost = re.compile(r"^(0x[0-9a-f]+|\+\d+|-\d+|\*)\s+\S+\s+(\d+)")
    for name in files:
        objects, current, last, after_call = {}, "", 0, False
        for line in open(name):
            m = re.match(r"^c?ob=\((\d+)\)(?: (.*))?", line)
            if m:
                if m.group(2):
                    objects[m.group(1)] = m.group(2)
                if line.startswith("ob="):
                    current = objects.get(m.group(1), "")
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            m = cost.match(line)
            if not m:
                continue
            a = m.group(1)
            last = (int(a, 16) if a.startswith("0x") else
                    last + int(a) if a[0] in "+-" else last)
            if after_call:  # the call's inclusive cost, not this instruction's
                after_call = False
                continue
            if current.endswith("/backend-net"):
                counts[last] += int(m.group(2))
    return counts


def symbols(binary):
    """(address, demangled name) of the binary's functions, sorted."""
    out = subprocess.run(["nm", "-C", "--defined-only", binary], capture_output=True,
                         text=True, check=True).stdout
    syms = [(int(p[0], 16), p[2]) for p in (l.split(None, 2) for l in out.splitlines())
            if len(p) == 3 and p[1] in "tT"]
    return sorted(syms)


def function_range(syms, name):
    starts = [a for a, _ in syms]
    start = next(a for a, n in syms if n == name)
    return start, starts[bisect.bisect_right(starts, start)]


def access_size(mnemonic, register):
    if register.startswith("%xmm"):
        return XMM_PART.get(mnemonic, 16)
    if register.startswith("%ymm"):
        return 32
    if register.startswith("$"):
        return {"b": 1, "w": 2, "l": 4, "q": 8}.get(mnemonic[-1], 8)
    return REG_SIZE.get(register.lstrip("%"))


def stack_accesses(binary, start, end):
    """(address, 'load'|'store', offset from %rsp, bytes) of a function's moves."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}",
                          f"--stop-address={end:#x}", binary], capture_output=True, text=True,
                         check=True).stdout
    based, accesses = {}, []
    for line in out.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s*(\S+)\s*([^#<]*)", line)
        if not m:
            continue
        addr, mn, ops = int(m.group(1), 16), m.group(2), m.group(3).strip()
        lea = re.match(r"^(-?0x[0-9a-f]+|)\(%rsp\),%(\w+)$", ops)
        if mn == "lea" and lea:
            based[lea.group(2)] = int(lea.group(1) or "0", 16)
            continue
        if "," in ops and (mn.startswith(("mov", "vmov")) or mn in EXTENDING_LOADS):
            src, dst = ops.rsplit(",", 1)
            for operand, kind, other in ((dst, "store", src), (src, "load", dst)):
                mem = re.match(r"^(-?0x[0-9a-f]+|)\(%(\w+)\)$", operand)
                if not mem or (mem.group(2) != "rsp" and mem.group(2) not in based):
                    continue
                if kind == "store" and other.startswith("("):
                    continue
                size = EXTENDING_LOADS.get(mn) if kind == "load" else None
                size = size or access_size(mn, other)
                if size:
                    offset = int(mem.group(1) or "0", 16) + based.get(mem.group(2), 0)
                    accesses.append((addr, kind, offset, size))
        written = ops.rsplit(",", 1)[-1].lstrip("%") if "," in ops else None
        based.pop(written, None)
    return accesses


def unforwardable(accesses, counts, frames):
    """Hot loads that hot stores wrote only in narrower parts, with those stores."""
    stores = [(a, o, s) for a, k, o, s in accesses
              if k == "store" and counts.get(a, 0) / frames >= 0.3]
    for addr, kind, offset, size in accesses:
        if kind != "load" or counts.get(addr, 0) / frames < 1.0:
            continue
        over = [(a, o, s) for a, o, s in stores if o < offset + size and offset < o + s]
        if over and not any(o <= offset and offset + size <= o + s for _, o, s in over):
            yield addr, offset, size, over


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hugepages", action="store_true", help="DPDK on 2 MiB pages")
    p.add_argument("--backend-net", default="target/release/backend-net",
                   help="the build to measure (net runs from target/release)")
    p.add_argument("--function", action="append", help="functions to check (default: the hot "
                   "path's)")
    args = p.parse_args()
    binary = args.backend_net
    with tempfile.TemporaryDirectory(prefix="net-loads-") as out_dir:
        counts = instruction_counts(run_under_callgrind(args, out_dir))
    syms = symbols(binary)
    start, end = function_range(syms, FRAME_FUNCTION)
    frames = max((c for a, c in counts.items() if start <= a < end), default=0)
    if frames == 0:
        sys.exit("no frames were copied: did the benchmark run?")
    starts = [a for a, _ in syms]
    per_function = collections.Counter()
    for addr, c in counts.items():
        i = bisect.bisect_right(starts, addr) - 1
        per_function[syms[i][1] if i >= 0 else "?"] += c
    print(f"{frames} frames, {sum(counts.values()) / frames:.0f} instructions per frame")
    for name, c in per_function.most_common(12):
        print(f"{c / frames:8.1f}  {name}")
    for name in args.function or HOT:
        if not any(n == name for _, n in syms):
            print(f"\n{name}: inlined (no symbol)")
            continue
        found = list(unforwardable(stack_accesses(binary, *function_range(syms, name)),
                                   counts, frames))
        print(f"\n{name}: {sum(counts[a] for a, *_ in found) / frames:.1f} such loads per frame")
        for addr, offset, size, over in found:
            parts = " ".join(f"{a:x}:{s}@{o:#x}" for a, o, s in over)
            print(f"  {addr:x}: {size} bytes at {offset:#x}(%rsp) <- stores {parts}")


if __name__ == "__main__":
    main()
