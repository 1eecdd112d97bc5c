"""The 20-route policy the benchmarks put on the path (scripts/bench.sh, scripts/callcost.sh).

19 routes the benchmark's calls do not take, each a method prefix and a regex on content-type (so
19 regexes run against every call's header), then one that splits over a subset by label.
Usage: routes_policy.py OUT.json
"""
import json
import sys

routes = [{"name": f"tenant-{i}", "match": {"method": "/mesh.demo.v1.Echo/*",
           "headers": [{"name": "content-type", "regex": f"application/grpc\\+proto-v{i}[0-9]*"}]},
           "split": [{"subset": "v1", "weight": 100}]} for i in range(19)]
routes.append({"name": "default", "split": [{"subset": "v1", "weight": 100}]})
json.dump({"version": "v1", "subsets": {"v1": {"version": "v1"}}, "routes": routes}, open(sys.argv[1], "w"))
