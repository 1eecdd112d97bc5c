"""Checks a running compose mesh from the outside (called by scripts/compose_check.sh).

Usage: compose_queries.py <prometheus-url> <trace-api-url> <timeout-seconds> [<up-started-epoch>]

Waits until every panel query of every dashboard (Grafana macros and variables substituted)
returns data from Prometheus, then checks every alert rule evaluates, and that the trace API holds
a trace crossing at least three services. Prints how long after `docker compose up` started (the
optional epoch) the first panel query returned data.
"""

import glob
import json
import os
import sys
import time
import urllib.parse
import urllib.request

prom, traces, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
started = float(sys.argv[4]) if len(sys.argv) > 4 else time.time()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except Exception as e:  # noqa: BLE001 - any failure means "not yet"
        return {"error": str(e)}


def substitute(expr):
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$service", "backend")


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


def has_data(expr):
    r = get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    return r.get("status") == "success" and bool(r["data"]["result"])


first = None
while True:
    missing = [q for q in queries if not has_data(q[2])]
    if first is None and len(missing) < len(queries):
        first = time.time() - started
        print(f"first panel query returned data {first:.1f} s after up")
    if not missing:
        break
    if time.time() - started > timeout:
        for board, title, expr in missing:
            print(f"NO DATA: {board} / {title}: {expr}")
        sys.exit(f"{len(missing)} of {len(queries)} panel queries without data after {timeout:.0f} s")
    time.sleep(3)
print(f"all {len(queries)} panel queries returned data {time.time() - started:.1f} s after up")

rules = [r for g in get(f"{prom}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
bad = [r["name"] for r in rules if r.get("health") != "ok"]
if not rules or bad:
    sys.exit(f"alert rules not healthy: {bad or 'none loaded'}")
print(f"{len(rules)} alert rules loaded and evaluating")

while True:
    found = get(f"{traces}/api/v2/traces?serviceName=store&limit=20")
    best = max((len({s["localEndpoint"]["serviceName"] for s in t}) for t in found if isinstance(found, list)) if isinstance(found, list) and found else [0])
    if best >= 3:
        print(f"trace API: a trace crossing {best} services")
        break
    if time.time() - started > timeout:
        sys.exit(f"no trace crossing 3 services in the trace API: {str(found)[:500]}")
    time.sleep(3)
