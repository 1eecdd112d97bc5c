"""Turns the benchmark's JSON results into docs/benchmarks.md (called by scripts/bench.sh).

Usage: bench_report.py <results-dir> <rounds> <seconds-per-run> <rate>
"""

import glob
import json
import os
import statistics
import subprocess
import sys

results, rounds, seconds, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ORDER = ["direct", "hop1-w1", "hop2-w1", "hop2routes-w1", "hop2tls-w1", "hop1-w2", "hop2-w2", "hop2tls-w2", "hop2otel-w2", "hop2otel100-w2",
         "nginx", "haproxy"]
LABEL = {
    "direct": "direct (no proxy)",
    "hop1-w1": "mesh-proxy, 1 hop, 1 worker",
    "hop2-w1": "mesh-proxy, 2 hops (mesh path), 1 worker each",
    "hop2routes-w1": "mesh-proxy, 2 hops, a policy of 20 routes (19 regexes evaluated per call), 1 worker each",
    "hop1-w2": "mesh-proxy, 1 hop, default 2 workers",
    "hop2-w2": "mesh-proxy, 2 hops, default 2 workers each",
    "hop2tls-w1": "mesh-proxy, 2 hops over mTLS, 1 worker each",
    "hop2tls-w2": "mesh-proxy, 2 hops over mTLS, default 2 workers each",
    "hop2otel-w2": "mesh-proxy, 2 hops, telemetry on (default: 10 % sampling), 2 workers each",
    "hop2otel100-w2": "mesh-proxy, 2 hops, telemetry at 100 % sampling, 2 workers each",
    "nginx": "nginx grpc_pass, 1 worker",
    "haproxy": "HAProxy h2, nbthread 1",
    "haproxy2": "HAProxy h2, two chained hops (a process each), nbthread 1 each",
}
WIDE = ["direct", "hop2-w1", "haproxy2"]


def runs(name, load):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(results, f"{name}.{load}.*.json")))]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(name, load):
    rs = runs(name, load)
    if not rs:
        return None
    calls = sum(r["calls"] for r in rs)
    cpu = [r["proxy_cpu_ms"] / r["calls"] * 1000 / r["proxy_processes"] for r in rs if "proxy_cpu_ms" in r and r["calls"]]
    return {
        "rps": med([r["throughput_rps"] for r in rs]),
        "p50": med([r["latency_us"]["p50"] for r in rs]),
        "p99": med([r["latency_us"]["p99"] for r in rs]),
        "p999": med([r["latency_us"]["p999"] for r in rs]),
        "errors": sum(sum(r["errors"].values()) + r.get("overloaded", 0) for r in rs),
        "calls": calls,
        "cpu_per_1k_per_proxy": med(cpu),
        "rss_mib": max((r.get("proxy_rss_kib", 0) for r in rs), default=0) / 1024 or None,
    }


S = {(n, l): summary(n, l) for n in ORDER for l in ("closed", "open")}
S.update({(n, "wide"): summary(n, "wide") for n in WIDE})
H2 = {}
for n in ORDER:
    p = os.path.join(results, f"{n}.h2load.json")
    if os.path.exists(p):
        H2[n] = json.load(open(p))


def fmt(v, spec="{:.0f}", none="-"):
    return none if v is None else spec.format(v)


def ms(us):
    return None if us is None else us / 1000


direct_c, direct_o = S[("direct", "closed")], S[("direct", "open")]
if not direct_c and not direct_o:
    sys.exit("no results for the direct target: nothing to compare with")
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()

out = []
w = out.append
w("# Benchmarks\n")
w("Produced by `scripts/bench.sh` (this file is its output; rerun it to refresh). Loopback, release builds,")
w(f"one run at commit `{rev}` on {os.cpu_count()} cores ({cpu}). Load: `mesh-demo load`, 100-byte")
w(f"`Echo/Unary`, every reply's `grpc-status` checked. Medians of {rounds} round(s) of {seconds} s per")
w("target and load. The load generator, the echo app and the proxies share the same 2 cores, as a sidecar")
w("shares its host; absolute numbers are this machine's, the ratios are the point.\n")
w("- **hop1**: load -> server sidecar's inbound listener -> app (one proxy).")
w("- **hop2**: load -> client sidecar's outbound listener -> server sidecar's inbound listener -> app: the")
w("  real mesh path (discovery, per-request balancing, two proxies).")
w("- **CPU** is the proxy processes' user+system time per 1000 calls, divided by the number of proxies in")
w("  the path (per hop). **RSS** is the largest resident set of one proxy after a run.\n")

w(f"## Closed loop: 4 connections x 12 streams\n")
w("| target | calls/s | x direct | p50 ms | p99 ms | p99.9 ms | CPU ms / 1k calls / hop | RSS MiB | errors |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for n in ORDER:
    s = S[(n, "closed")]
    if not s:
        continue
    ratio = s["rps"] / direct_c["rps"] if direct_c and direct_c["rps"] else None
    w(f"| {LABEL[n]} | {fmt(s['rps'])} | {fmt(ratio, '{:.2f}')} | {fmt(ms(s['p50']), '{:.2f}')} | {fmt(ms(s['p99']), '{:.2f}')} | "
      f"{fmt(ms(s['p999']), '{:.2f}')} | {fmt(s['cpu_per_1k_per_proxy'], '{:.1f}')} | {fmt(s['rss_mib'], '{:.1f}')} | {s['errors']} |")

w(f"\n## Open loop: {rate} calls/s\n")
w("Latency measured from each call's scheduled send time. *Added* is the difference to direct, per hop.\n")
w("| target | calls/s | p50 ms | p99 ms | p99.9 ms | added p50 ms / hop | added p99 ms / hop | CPU ms / 1k calls / hop | RSS MiB | errors |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for n in ORDER:
    s = S[(n, "open")]
    if not s:
        continue
    hops = 2 if n.startswith("hop2") else 1  # hop2 and hop2tls
    add50 = (s["p50"] - direct_o["p50"]) / hops / 1000 if n != "direct" else None
    add99 = (s["p99"] - direct_o["p99"]) / hops / 1000 if n != "direct" else None
    w(f"| {LABEL[n]} | {fmt(s['rps'])} | {fmt(ms(s['p50']), '{:.2f}')} | {fmt(ms(s['p99']), '{:.2f}')} | {fmt(ms(s['p999']), '{:.2f}')} | "
      f"{fmt(add50, '{:.3f}')} | {fmt(add99, '{:.3f}')} | {fmt(s['cpu_per_1k_per_proxy'], '{:.1f}')} | {fmt(s['rss_mib'], '{:.1f}')} | {s['errors']} |")

if any(S[(n, "wide")] for n in WIDE):
    w("\n## The tail at 200 calls in flight: closed loop, 4 connections x 50 streams\n")
    w("The mesh path (two sidecars, 1 worker each) beside two chained HAProxy processes (1 thread each).\n")
    w("| target | calls/s | p50 ms | p99 ms | p99.9 ms | CPU ms / 1k calls / hop | errors |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in WIDE:
        s = S[(n, "wide")]
        if s:
            w(f"| {LABEL[n]} | {fmt(s['rps'])} | {fmt(ms(s['p50']), '{:.2f}')} | {fmt(ms(s['p99']), '{:.2f}')} | "
              f"{fmt(ms(s['p999']), '{:.2f}')} | {fmt(s['cpu_per_1k_per_proxy'], '{:.1f}')} | {s['errors']} |")

if H2:
    w("\n## Cross-check with h2load (closed loop, 4 connections x 12 streams, 40 000 calls)\n")
    w("`h2load` counts HTTP 2xx only (it does not read `grpc-status`).\n")
    w("| target | h2load calls/s | x direct | 2xx |")
    w("| --- | ---: | ---: | ---: |")
    d = H2.get("direct", {}).get("rps")
    for n in ORDER:
        h = H2.get(n)
        if h:
            w(f"| {LABEL[n]} | {fmt(h['rps'])} | {fmt(h['rps'] / d if d and h['rps'] else None, '{:.2f}')} | {fmt(h['ok_2xx'])} |")

EDGE = {}
for n in ("gateway", "haproxy"):
    rs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(results, f"edge-{n}.*.json")))]
    rs = [r for r in rs if r.get("rps") and r.get("ok_2xx")]
    if rs:
        EDGE[n] = {
            "rps": med([r["rps"] for r in rs]),
            "cpu": med([r["cpu_ms"] / r["ok_2xx"] * 1000 for r in rs]),
            "ok": sum(r["ok_2xx"] for r in rs),
            "rss_mib": max(r["rss_kib"] for r in rs) / 1024,
            "mean": rs[len(rs) // 2].get("mean_request"),
            "tls": rs[0].get("tls"),
        }
if EDGE:
    w("\n## The edge: TLS termination (h2load over TLS, 4 connections x 12 streams, 40 000 calls)\n")
    w("The same certificate (ECDSA P-256, from `mesh-registry dev-cert`) and request, one thread each. The gateway")
    w("(`mesh-proxy --gateway`, 1 worker) routes to the mesh service `echo-w1`, so its calls cross one more proxy")
    w("(the server sidecar) than HAProxy's, which go straight to the app; CPU is the terminating process's")
    w("alone, per 1000 calls. Medians of the rounds.\n")
    w("| target | TLS | calls/s | x HAProxy | mean request | CPU ms / 1k calls | RSS MiB | 2xx |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = EDGE.get("haproxy")
    for n, label in (("gateway", "mesh-proxy --gateway, 1 worker"), ("haproxy", "HAProxy, nbthread 1")):
        e = EDGE.get(n)
        if e:
            ratio = e["rps"] / base["rps"] if base else None
            w(f"| {label} | {e['tls'] or '-'} | {fmt(e['rps'])} | {fmt(ratio, '{:.2f}')} | {e['mean'] or '-'} | "
              f"{fmt(e['cpu'], '{:.1f}')} | {fmt(e['rss_mib'], '{:.1f}')} | {e['ok']} |")


def check(name, ok, detail):
    w(f"| {name} | {'met' if ok else '**missed**'} | {detail} |")


def check_share_of_direct(name, s, floor):
    """A closed-loop target's throughput against direct's, if both ran."""
    if s and direct_c:
        r = s["rps"] / direct_c["rps"]
        check(name, r >= floor, f"{r:.2f} x")


w("\n## Against the targets\n")
w("| target | result | measured |")
w("| --- | --- | --- |")
h1c, h2c, h1o = S[("hop1-w1", "closed")], S[("hop2-w1", "closed")], S[("hop1-w1", "open")]
check_share_of_direct("one hop >= 0.55 x direct throughput (1 worker)", h1c, 0.55)
check_share_of_direct("two hops >= 0.33 x direct throughput (1 worker)", h2c, 0.33)
if h1o and direct_o:
    a50 = (h1o["p50"] - direct_o["p50"]) / 1000
    a99 = (h1o["p99"] - direct_o["p99"]) / 1000
    check(f"added p50 <= 0.2 ms per hop at {rate}/s", a50 <= 0.2, f"{a50:.3f} ms")
    check(f"added p99 <= 0.5 ms per hop at {rate}/s", a99 <= 0.5, f"{a99:.3f} ms")
    c = h1o["cpu_per_1k_per_proxy"]
    if c is not None:
        check(f"<= 10 ms CPU per 1k calls per hop at {rate}/s", c <= 10, f"{c:.1f} ms")
    rss = max((S[(n, l)] or {}).get("rss_mib") or 0 for n in ("hop1-w1", "hop2-w1") for l in ("closed", "open"))
    check("<= 10 MB RSS per proxy under that load", rss <= 10, f"{rss:.1f} MiB")
plain_c, tls_c = S[("hop2-w1", "closed")], S[("hop2tls-w1", "closed")]
plain_o, tls_o = S[("hop2-w1", "open")], S[("hop2tls-w1", "open")]
if plain_c and tls_c:
    cost = 1 - tls_c["rps"] / plain_c["rps"]
    check("mTLS costs <= 15 % of the plaintext mesh path's throughput", cost <= 0.15, f"{cost * 100:.1f} %")
if plain_o and tls_o:
    added = (tls_o["p50"] - plain_o["p50"]) / 1000
    check(f"mTLS adds <= 0.1 ms p50 to the mesh path at {rate}/s", added <= 0.1, f"{added:.3f} ms")
base_c, base_o = S[("hop2-w2", "closed")], S[("hop2-w2", "open")]
for name, label in (("hop2otel-w2", "default settings"), ("hop2otel100-w2", "100 % sampling")):
    oc, oo = S[(name, "closed")], S[(name, "open")]
    if base_c and oc:
        cost = 1 - oc["rps"] / base_c["rps"]
        check(f"telemetry at {label} costs <= 10 % of the mesh path's throughput (2 workers)", cost <= 0.10, f"{cost * 100:.1f} %")
    if base_o and oo:
        added = (oo["p50"] - base_o["p50"]) / 1000
        check(f"telemetry at {label} adds <= 0.05 ms p50 at {rate}/s", added <= 0.05, f"{added:.3f} ms")
# Issue 15's goals: one hop against HAProxy, the mesh path against direct and two HAProxy hops.
hac, hao = S[("haproxy", "closed")], S[("haproxy", "open")]
if h1c and hac:
    check("one hop's throughput >= HAProxy's (closed loop)", h1c["rps"] >= hac["rps"],
          f"{h1c['rps']:.0f} vs {hac['rps']:.0f} calls/s")
    c1, ch = h1c["cpu_per_1k_per_proxy"], hac["cpu_per_1k_per_proxy"]
    if c1 and ch:
        check("one hop's CPU per 1k calls <= HAProxy's x 1.2 (closed loop)", c1 <= ch * 1.2,
              f"{c1:.1f} vs {ch:.1f} ms ({c1 / ch:.2f} x)")
if h1o and hao and direct_o:
    a1, ah = (h1o["p50"] - direct_o["p50"]) / 1000, (hao["p50"] - direct_o["p50"]) / 1000
    check(f"one hop's added p50 at {rate}/s within 0.05 ms of HAProxy's", a1 - ah <= 0.05, f"{a1:.3f} vs {ah:.3f} ms")
check_share_of_direct("the mesh path >= 0.30 x direct throughput (1 worker each)", h2c, 0.30)
check_share_of_direct("the mesh path over mTLS >= 0.30 x direct throughput (1 worker each)", tls_c, 0.30)
mw, hw = S[("hop2-w1", "wide")], S[("haproxy2", "wide")]
if mw and hw:
    check("the mesh path's p99 at 200 in flight <= 2 x two chained HAProxy hops'", mw["p99"] <= 2 * hw["p99"],
          f"{mw['p99'] / 1000:.2f} vs {hw['p99'] / 1000:.2f} ms ({mw['p99'] / hw['p99']:.2f} x)")
if "gateway" in EDGE and "haproxy" in EDGE:
    g, h = EDGE["gateway"], EDGE["haproxy"]
    check("gateway TLS throughput >= HAProxy's", g["rps"] >= h["rps"], f"{g['rps']:.0f} vs {h['rps']:.0f} calls/s")
    check("gateway CPU per 1k calls <= HAProxy's x 1.2", g["cpu"] <= h["cpu"] * 1.2,
          f"{g['cpu']:.1f} vs {h['cpu']:.1f} ms ({g['cpu'] / h['cpu']:.2f} x)")
collector = os.path.join(results, "collector.txt")
if os.path.exists(collector):
    w("\nThe collector after the run (everything the telemetry paths exported; `mesh_collector_*`):\n")
    w("```")
    w(open(collector).read().strip())
    w("```")
w("""
## Reading these numbers

- **This machine is a small VM (a Firecracker guest, 2 vCPUs) shared by the load generator, the app and
  every proxy.** Waking another process costs far more here than on bare metal: even a direct call to the
  echo app takes over a millisecond at p50, and every proxy, HAProxy and nginx included, spends well
  over 100 ms of CPU per 1000 calls at 2000 calls/s (the issue's reference figures, 13-17 ms for HAProxy,
  were evidently taken where wakeups are cheap). Compare rows with each other, not with those figures.
  Run-to-run spread is large: rerun before reading a 0.2 ms difference as real.
- **Where the proxy's CPU goes** (`perf record` on a 1-worker proxy at 2000 calls/s): about 54 % in the
  kernel, most of it waking the peer's thread on a socket write (`sock_def_readable` ->
  `_raw_spin_unlock_irqrestore`, the paravirtualised wakeup) and context switches; syscalls per call
  are about two `writev` and two `recvfrom` with batched `epoll_wait`; HTTP/2 framing, HPACK and
  allocation are a few percent each. At the same load HAProxy used about 10 % less CPU than the proxy.
- **Telemetry's cost** (the `hop2otel` rows against `hop2-w2`): the collector runs on the same two
  cores, so at 100 % sampling its work (every call's two spans, about 12 000 spans/s in the closed
  loop) is in those figures too. With tracing on but sampling 0 the difference to no tracing is within
  noise (measured separately): starting a span is two random ids and a timestamp, and a span that is
  not exported allocates nothing. The one per-call cost that remains is the `traceparent` header on
  each hop (never HPACK-indexed: a unique value would churn the dynamic table). The echo app runs
  with `--echo-metadata false`: by default it copies every request header into its reply (for the
  tests), and then one added header grew every reply; that alone cost 12 % of throughput.
- **What would close the gaps**: fewer wakeups per call (coalescing the response's HEADERS, DATA and
  trailers into one write; hyper runs each stream as its own task); a measurement on bare metal to
  separate the VM's cost from ours. A current-thread runtime for `--workers 1` was tried: no measurable
  latency gain, and noisier per-instance balancing, so it was not kept.
""")
print("\n".join(out))
