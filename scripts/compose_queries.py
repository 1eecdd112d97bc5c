"""Checks a running mesh's dashboards and alerts from the outside, against its Prometheus and trace
API: called by scripts/compose_check.sh (the compose mesh) and tests/tests/dashboards.rs (a mesh of
processes).

Usage: compose_queries.py --prometheus URL --traces URL [--timeout S] [--started EPOCH]
                          [--service NAME] [--trace-through NAME] [--rate-interval D]

Waits until every panel query of every dashboard (Grafana's macros and the `$service` variable
substituted) returns data, checks that every alert rule in prometheus/alerts.yml is loaded and
evaluates, and that the trace API holds a trace through `--trace-through` crossing at least three
services. Prints how long after `--started` (default: now) the first panel query returned data.
"""

import argparse
import glob
import json
import os
import sys
import time
import urllib.parse
import urllib.request

args = argparse.ArgumentParser()
args.add_argument("--prometheus", required=True)
args.add_argument("--traces", required=True)
args.add_argument("--timeout", type=float, default=240)
args.add_argument("--started", type=float, default=None)
args.add_argument("--service", default="backend", help="value of the dashboards' $service variable")
args.add_argument("--trace-through", default="store", help="a service the multi-service trace passes")
args.add_argument("--rate-interval", default="1m", help="value of $__rate_interval")
args = args.parse_args()
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
started = args.started or time.time()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except Exception as e:  # noqa: BLE001 - any failure means "not yet"
        return {"error": str(e)}


def substitute(expr):
    return (expr.replace("$__rate_interval", args.rate_interval).replace("$__interval", "15s")
            .replace("$service", args.service))


queries = []
for path in sorted(glob.glob(os.path.join(root, "grafana", "dashboards", "*.json"))):
    board = json.load(open(path))
    panels = []
    for p in board["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))
    for p in panels:
        for t in p.get("targets", []):
            queries.append((board["uid"], p["title"], substitute(t["expr"])))
    for v in board.get("templating", {}).get("list", []):
        q = v["query"]["query"]
        queries.append((board["uid"], "variable " + v["name"], q[len("label_values("):].rsplit(",", 1)[0]))
if not queries:
    sys.exit("no panel queries found in grafana/dashboards")


def has_data(expr):
    r = get(f"{args.prometheus}/api/v1/query?query={urllib.parse.quote(expr)}")
    return r.get("status") == "success" and bool(r["data"]["result"])


first = None
while True:
    missing = [q for q in queries if not has_data(q[2])]
    if first is None and len(missing) < len(queries):
        first = time.time() - started
        print(f"first panel query returned data {first:.1f} s after up")
    if not missing:
        break
    if time.time() - started > args.timeout:
        for board, title, expr in missing:
            print(f"NO DATA: {board} / {title}: {expr}")
        sys.exit(f"{len(missing)} of {len(queries)} panel queries without data after {args.timeout:.0f} s")
    time.sleep(2)
print(f"all {len(queries)} panel queries returned data {time.time() - started:.1f} s after up")

defined = sum(1 for line in open(os.path.join(root, "prometheus", "alerts.yml")) if line.strip().startswith("- alert:"))
rules = [r for g in get(f"{args.prometheus}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
bad = [r["name"] for r in rules if r.get("health") != "ok"]
if len(rules) != defined or bad:
    sys.exit(f"{len(rules)} of {defined} alert rules loaded; not healthy: {bad}")
print(f"{len(rules)} alert rules loaded and evaluating")

while True:
    found = get(f"{args.traces}/api/v2/traces?serviceName={args.trace_through}&limit=20")
    services = [len({s["localEndpoint"]["serviceName"] for s in t}) for t in found] if isinstance(found, list) else []
    if max(services, default=0) >= 3:
        print(f"trace API: a trace crossing {max(services)} services")
        break
    if time.time() - started > args.timeout:
        sys.exit(f"no trace through {args.trace_through} crossing 3 services: {str(found)[:500]}")
    time.sleep(2)
