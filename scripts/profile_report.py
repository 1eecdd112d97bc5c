"""Summarises one path of scripts/profile.sh: where the sampled CPU time is (by the leaf frame's
component), syscalls per call (from `strace -c -f`), and context switches per call.

Usage: profile_report.py --path NAME --folded FILE --strace FILE --calls N --switches VOL INVOL
"""

import argparse
import re
from collections import Counter

args = argparse.ArgumentParser()
args.add_argument("--path", required=True)
args.add_argument("--folded", required=True)
args.add_argument("--strace", required=True)
args.add_argument("--calls", type=int, required=True)
args.add_argument("--switches", type=int, nargs=2, required=True)
args = args.parse_args()

# A leaf frame's component, first match wins (Rust symbols are demangled paths).
COMPONENTS = [
    ("clock reads (clock_gettime)", re.compile(r"clock_gettime")),
    ("kernel (syscalls, TCP, scheduler)", re.compile(r"_\[k\]$")),
    ("allocator (malloc, free)", re.compile(r"malloc|free|_int_|cfree|realloc|calloc|tcache|arena|unlink_chunk")),
    ("memcpy, memmove, memset", re.compile(r"mem(cpy|move|set)|__memcpy|__memmove")),
    ("hpack (header compression)", re.compile(r"hpack")),
    ("h2 (HTTP/2 framing, streams; its slab and codec)", re.compile(r"\bh2::|\bslab::|tokio_util::codec")),
    ("hyper, hyper-util", re.compile(r"\bhyper(_util)?::")),
    ("rustls, ring", re.compile(r"\b(rustls|ring)::|ring_core")),
    ("tokio (runtime, I/O driver, timers)", re.compile(r"\btokio::|mio::")),
    ("http, bytes, headers", re.compile(r"\b(http|bytes|http_body|http_body_util)::")),
    ("prometheus, telemetry", re.compile(r"\bprometheus::|mesh_proxy::telemetry")),
    ("mesh-proxy (our code)", re.compile(r"\bmesh_proxy::|mesh_registry::|mesh_common::")),
    ("libc, other", re.compile(r".")),
]

leaf, frames_self, total, ours_inclusive = Counter(), Counter(), 0, 0
for line in open(args.folded):
    stack, _, count = line.rstrip().rpartition(" ")
    if not stack:
        continue
    n = int(count)
    total += n
    frames = stack.split(";")
    name = next(c for c, pattern in COMPONENTS if pattern.search(frames[-1]))
    frames_self[re.sub(r"<[^<>]*>", "<..>", frames[-1])] += n
    leaf[name] += n
    if any("mesh_proxy::" in f for f in frames):
        ours_inclusive += n

print(f"### {args.path}: where the CPU goes (perf at 499 Hz, weighted by cycles; by the sampled frame's component)\n")
print("| component | share of CPU time |")
print("| --- | --- |")
for name, n in leaf.most_common():
    print(f"| {name} | {100 * n / max(total, 1):.1f} % |")
print(f"\nStacks through mesh-proxy's own functions (inclusive): {100 * ours_inclusive / max(total, 1):.1f} %.\n")
print("Hottest frames:\n")
print("| frame | share |")
print("| --- | --- |")
for frame, n in frames_self.most_common(15):
    print(f"| `{frame[:90]}` | {100 * n / max(total, 1):.1f} % |")
print()

calls = {}
for line in open(args.strace):
    parts = line.split()
    if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] not in ("total",):
        calls[parts[-1]] = int(parts[3])
total_calls = sum(calls.values())
print(f"### {args.path}: syscalls per call ({args.calls} calls under strace -c -f)\n")
print("| syscall | per call |")
print("| --- | --- |")
for name, n in sorted(calls.items(), key=lambda kv: -kv[1])[:8]:
    print(f"| {name} | {n / args.calls:.2f} |")
print(f"| **all** | **{total_calls / args.calls:.2f}** |\n")
vol, invol = args.switches
print(f"Context switches per call (all threads): {vol / args.calls:.3f} voluntary, {invol / args.calls:.3f} involuntary.\n")
