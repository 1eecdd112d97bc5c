"""The mesh's Grafana dashboards, as code: writes grafana/dashboards/*.json.

Usage: scripts/dashboards.py           # (re)write the JSON files
       scripts/dashboards.py --check   # exit 1 if the committed files differ from what this makes

Every panel queries the Prometheus data source (uid `prometheus`), which scrapes mesh-collector;
series carry the sender's `service` and `instance` labels. Latency panels link to traces in the
Zipkin data source (uid `traces`, the collector's trace API).
"""

import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "grafana", "dashboards")

PROM = {"type": "prometheus", "uid": "prometheus"}
TRACES = {"type": "zipkin", "uid": "traces"}
RATE = "[$__rate_interval]"
IN = 'direction="inbound"'

# Explore, opened on the trace data source: pick a service and a trace there.
TRACE_LINK = {
    "title": "Traces (Explore)",
    "url": "/explore?schemaVersion=1&panes=%7B%22t%22%3A%7B%22datasource%22%3A%22traces%22%2C%22queries%22%3A%5B%7B%22refId%22%3A%22A%22%2C%22datasource%22%3A%7B%22type%22%3A%22zipkin%22%2C%22uid%22%3A%22traces%22%7D%2C%22queryType%22%3A%22traceID%22%7D%5D%2C%22range%22%3A%7B%22from%22%3A%22now-15m%22%2C%22to%22%3A%22now%22%7D%7D%7D",
    "targetBlank": False,
}


class Board:
    def __init__(self, uid, title, description, tags=("mesh",)):
        self.uid, self.title, self.description, self.tags = uid, title, description, list(tags)
        self.panels, self.variables, self.next_id, self.x, self.y, self.row_h = [], [], 1, 0, 0, 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append({"type": "row", "id": self.next_id, "title": title, "collapsed": False,
                            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []})
        self.next_id += 1
        self.y += 1

    def panel(self, kind, title, targets, w=12, h=8, unit=None, description="", links=None, options=None,
              min_=None, max_=None, datasource=PROM):
        defaults = {}
        if unit:
            defaults["unit"] = unit
        if min_ is not None:
            defaults["min"] = min_
        if max_ is not None:
            defaults["max"] = max_
        if links:
            defaults["links"] = links
        p = {
            "type": kind,
            "id": self.next_id,
            "title": title,
            "description": description,
            "datasource": datasource,
            "gridPos": self._place(w, h),
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": datasource, "expr": expr, "legendFormat": legend,
                 **({"instant": True, "format": "table"} if kind in ("table", "nodeGraph") else {})}
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options or {},
        }
        self.next_id += 1
        self.panels.append(p)
        return p

    def timeseries(self, title, targets, **kw):
        kw.setdefault("options", {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                  "tooltip": {"mode": "multi", "sort": "desc"}})
        return self.panel("timeseries", title, targets, **kw)

    def stat(self, title, expr, unit=None, w=6, h=4, **kw):
        kw.setdefault("options", {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                  "colorMode": "value", "graphMode": "area", "textMode": "auto"})
        return self.panel("stat", title, [(expr, "")], w=w, h=h, unit=unit, **kw)

    def variable(self, name, label, query):
        self.variables.append({
            "name": name, "label": label, "type": "query", "datasource": PROM,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "sort": 1, "includeAll": False, "multi": False,
            "current": {"text": "frontend", "value": "frontend"}, "options": [], "hide": 0,
        })

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": self.tags,
            "editable": True,
            "graphTooltip": 1,
            "refresh": "10s",
            "schemaVersion": 41,
            "time": {"from": "now-15m", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "version": 1,
            "links": [
                {"title": "Mesh dashboards", "type": "dashboards", "tags": ["mesh"], "asDropdown": True,
                 "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False,
                 "tooltip": "", "url": ""},
                {"title": "Traces", "type": "link", "url": TRACE_LINK["url"], "icon": "external link",
                 "tags": [], "asDropdown": False, "includeVars": False, "keepTime": True, "targetBlank": False,
                 "tooltip": "Search traces in the collector (Zipkin data source)"},
            ],
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "panels": self.panels,
        }


def quantiles(selector, by):
    """p50, p95 and p99 of mesh_request_duration_seconds for `selector`, grouped by `by`."""
    group = ", ".join(["le"] + ([by] if by else []))
    label = "{{" + by + "}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate(mesh_request_duration_seconds_bucket{{{selector}}}{RATE})))",
         f"{label}p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]


def success(selector, by):
    return (f'sum by ({by}) (rate(mesh_requests_total{{{selector},grpc_status="OK"}}{RATE}))'
            f" / sum by ({by}) (rate(mesh_requests_total{{{selector}}}{RATE}))")


def overview():
    b = Board("mesh-overview", "Mesh overview",
              "Golden signals of every meshed service: requests, success rate, latency. Start here.")
    b.stat("Services", "count(count by (dst_service) (mesh_requests_total{" + IN + "}))")
    b.stat("Requests / s", f"sum(rate(mesh_requests_total{{{IN}}}{RATE}))", unit="reqps")
    b.stat("Success rate", f'sum(rate(mesh_requests_total{{{IN},grpc_status="OK"}}{RATE})) / '
                           f"sum(rate(mesh_requests_total{{{IN}}}{RATE}))", unit="percentunit")
    b.stat("p99 latency", f"histogram_quantile(0.99, sum by (le) (rate(mesh_request_duration_seconds_bucket{{{IN}}}{RATE})))",
           unit="s", links=[TRACE_LINK])
    b.row("Per service (as each service's inbound proxy sees it)")
    b.timeseries("Request rate", [(f"sum by (dst_service) (rate(mesh_requests_total{{{IN}}}{RATE}))", "{{dst_service}}")],
                 unit="reqps")
    b.timeseries("Success rate", [(success(IN, "dst_service"), "{{dst_service}}")], unit="percentunit", max_=1)
    b.timeseries("Latency p50 / p95 / p99", quantiles(IN, "dst_service"), w=24, unit="s", links=[TRACE_LINK],
                 description="Click a point to open the traces.")
    b.timeseries("Errors by status", [(f'sum by (dst_service, grpc_status) (rate(mesh_requests_total{{{IN},grpc_status!="OK"}}{RATE})) or vector(0)',
                                       "{{dst_service}} {{grpc_status}}")], unit="reqps")
    b.timeseries("Calls the proxies answered themselves", [(f"sum by (reason) (rate(mesh_proxy_errors_total{RATE})) or vector(0)", "{{reason}}")],
                 unit="reqps", description="no_endpoints, deadline_exceeded, not_authorized ...: the mesh-error reason.")
    return b


def service():
    b = Board("mesh-service", "Service detail", "One service: who calls it, which methods, statuses, instances, and whom it calls.")
    b.variable("service", "Service", "label_values(mesh_requests_total{" + IN + "}, dst_service)")
    sel = f'{IN},dst_service="$service"'
    b.stat("Requests / s", f"sum(rate(mesh_requests_total{{{sel}}}{RATE}))", unit="reqps")
    b.stat("Success rate", success(sel, "dst_service"), unit="percentunit")
    b.stat("p99 latency", f"histogram_quantile(0.99, sum by (le) (rate(mesh_request_duration_seconds_bucket{{{sel}}}{RATE})))",
           unit="s", links=[TRACE_LINK])
    b.stat("Instances", f'count(count by (instance) (mesh_requests_total{{{IN},service="$service"}}))')
    b.row("Inbound")
    b.timeseries("Requests by caller", [(f"sum by (src_service) (rate(mesh_requests_total{{{sel}}}{RATE}))", "{{src_service}}")], w=8, unit="reqps")
    b.timeseries("Requests by method", [(f"sum by (grpc_method) (rate(mesh_requests_total{{{sel}}}{RATE}))", "{{grpc_method}}")], w=8, unit="reqps")
    b.timeseries("Requests by status", [(f"sum by (grpc_status) (rate(mesh_requests_total{{{sel}}}{RATE}))", "{{grpc_status}}")], w=8, unit="reqps")
    b.timeseries("Requests by instance", [(f'sum by (instance) (rate(mesh_requests_total{{{IN},service="$service"}}{RATE}))', "{{instance}}")],
                 w=8, unit="reqps")
    b.timeseries("Latency p50 / p95 / p99", quantiles(sel, ""), w=8, unit="s", links=[TRACE_LINK])
    b.timeseries("p99 by method", [(f"histogram_quantile(0.99, sum by (le, grpc_method) (rate(mesh_request_duration_seconds_bucket{{{sel}}}{RATE})))",
                                    "{{grpc_method}}")], w=8, unit="s", links=[TRACE_LINK])
    b.row("Outbound (calls this service makes)")
    out = 'direction="outbound",src_service="$service"'
    b.timeseries("Requests by destination", [(f"sum by (dst_service) (rate(mesh_requests_total{{{out}}}{RATE})) or vector(0)", "{{dst_service}}")],
                 w=8, unit="reqps")
    b.timeseries("Success rate by destination", [(success(out, "dst_service") + " or vector(1)", "{{dst_service}}")], w=8,
                 unit="percentunit", max_=1)
    b.timeseries("Balancer picks by endpoint", [(f'sum by (dst_service, endpoint) (rate(mesh_balancer_picks_total{{service="$service"}}{RATE})) or vector(0)',
                                                 "{{dst_service}} {{endpoint}}")], w=8, unit="reqps")
    b.timeseries("Bytes", [(f'sum(rate(mesh_request_bytes_total{{service="$service"}}{RATE}))', "request"),
                           (f'sum(rate(mesh_response_bytes_total{{service="$service"}}{RATE}))', "response")], w=8, unit="Bps")
    b.timeseries("Proxy-made errors", [(f'sum by (reason) (rate(mesh_proxy_errors_total{{service="$service"}}{RATE})) or vector(0)', "{{reason}}")],
                 w=8, unit="reqps")
    b.timeseries("Endpoints known", [(f'max by (dst_service) (mesh_endpoints{{service="$service"}})', "{{dst_service}}")], w=8)
    # Each destination's resilience series start at 0 when the proxy first calls it, so these
    # answer as soon as the service makes calls.
    b.row("Resilience (calls this service makes)")
    b.timeseries("Retries by reason", [(f'sum by (dst_service, reason) (rate(mesh_retries_total{{service="$service"}}{RATE}))',
                                        "{{dst_service}} {{reason}}")], w=8, unit="reqps",
                 description="Attempts sent again: not_processed (never reached an app), status (an idempotent call answered a "
                             "retry_on status), per_try_timeout, connection_failed.")
    b.timeseries("Retries refused", [(f'sum by (dst_service, reason) (rate(mesh_retries_refused_total{{service="$service"}}{RATE}))',
                                      "{{dst_service}} {{reason}}")], w=8, unit="reqps",
                 description="Retries calls qualified for but did not get; `budget` means the destination's retry budget is spent.")
    b.timeseries("Outlier ejections (5 min)", [(f'sum by (dst_service) (increase(mesh_outlier_ejections_total{{service="$service"}}[5m]))',
                                                "{{dst_service}} ejected"),
                                               (f'sum by (dst_service) (increase(mesh_outlier_returns_total{{service="$service"}}[5m]))',
                                                "{{dst_service}} returned")], w=8,
                 description="Endpoints taken out of this service's balancers after 5 failures in a row, and those back after a probe.")
    b.timeseries("Shed by the circuit breaker", [(f'sum by (dst_service) (rate(mesh_circuit_breaker_shed_total{{service="$service"}}{RATE}))',
                                                  "{{dst_service}}")], w=8, unit="reqps",
                 description="Calls failed at once (mesh-error: overloaded) because the destination's slots and waiting line were full.")
    b.timeseries("Hedges", [(f'sum by (dst_service) (rate(mesh_hedges_total{{service="$service"}}{RATE}))', "{{dst_service}} sent"),
                            (f'sum by (dst_service) (rate(mesh_hedges_won_total{{service="$service"}}{RATE}))', "{{dst_service}} won")],
                 w=12, unit="reqps",
                 description="Second attempts of hedged methods whose first attempt was late, and those that answered first.")
    b.timeseries("Inbound concurrency limit (this service's apps)",
                 [(f'min(mesh_inbound_concurrency_limit{{service="$service"}})', "lowest limit"),
                  (f'sum(rate(mesh_proxy_errors_total{{service="$service", direction="inbound", reason="app_overloaded"}}{RATE})) or vector(0)',
                   "refused /s")], w=12,
                 description="The adaptive limit in front of each app (it refuses only while the app queues) and the calls it "
                             "refused with RESOURCE_EXHAUSTED (mesh-error: app_overloaded).")
    b.row("Traffic policy (calls to this service)")
    b.timeseries("Requests by route and subset",
                 [(f'sum by (route, subset) (rate(mesh_route_requests_total{{dst_service="$service"}}{RATE}))',
                   "{{route}} -> {{subset}}")], w=8, unit="reqps",
                 description="Callers' calls to this service that took a route of its policy, by route and the subset its "
                             "split drew (all: every instance): a canary's share.")
    b.timeseries("Success rate by subset",
                 [(f'sum by (subset) (rate(mesh_route_requests_total{{dst_service="$service", grpc_status="OK"}}{RATE})) '
                   f'/ sum by (subset) (rate(mesh_route_requests_total{{dst_service="$service"}}{RATE}))', "{{subset}}")],
                 w=8, unit="percentunit",
                 description="The share of routed calls answered OK, per subset: compare the canary with the stable version.")
    b.timeseries("Policy revision per proxy",
                 [('max by (service, instance) (mesh_policy_revision{dst_service="$service", state="in_force"})',
                   "{{service}}/{{instance}}")], w=8,
                 description="The etcd revision of this service's policy each caller's proxy runs: after a change, every line "
                             "moves to the new revision within a second (meshctl status names the versions).")
    b.timeseries("Rate-limited calls (this service's proxies)",
                 [(f'sum by (limit) (rate(mesh_rate_limited_total{{service="$service"}}{RATE})) or vector(0)', "{{limit}}")],
                 w=12, unit="reqps",
                 description="Calls to this service refused by its policy's rate limits (RESOURCE_EXHAUSTED, "
                             "mesh-error: rate_limited), by limit.")
    b.timeseries("Mirrored calls",
                 [(f'sum by (service, outcome) (rate(mesh_mirrored_total{{dst_service="$service"}}{RATE})) or vector(0)',
                   "from {{service}}: {{outcome}}")], w=12, unit="reqps",
                 description="Copies of callers' calls sent to this service as a shadow: answered, failed, or skipped (body over "
                             "64 KiB, too many in flight). The callers never see them.")
    return b


def graph():
    b = Board("mesh-service-graph", "Service graph", "Who calls whom, from the traces: calls, failures and latency per edge.")
    nodes = b.panel("nodeGraph", "Service graph", [
        ("sum by (client, server) (rate(mesh_service_graph_requests_total[5m]))", ""),
        ("sum by (client, server) (rate(mesh_service_graph_request_failed_total[5m])) or sum by (client, server) (rate(mesh_service_graph_requests_total[5m])) * 0", ""),
    ], w=24, h=14, description="Edges from spans (mesh_service_graph_*); `user` is traffic from outside the mesh.", options={
        "nodes": {"mainStatUnit": "reqps"}, "edges": {"mainStatUnit": "reqps"}})
    # Nodes and edges frames for the node graph, built from the edge series.
    nodes["transformations"] = [
        {"id": "merge", "options": {}},
        {"id": "calculateField", "options": {"mode": "binary", "alias": "id",
                                             "binary": {"left": "client", "operator": "+", "right": "server"}}},
        {"id": "organize", "options": {"renameByName": {"client": "source", "server": "target",
                                                         "Value #A": "mainstat", "Value #B": "secondarystat"}}},
    ]
    b.timeseries("Calls per edge", [("sum by (client, server) (rate(mesh_service_graph_requests_total[$__rate_interval]))", "{{client}} -> {{server}}")],
                 unit="reqps")
    b.timeseries("Failed calls per edge", [("sum by (client, server) (rate(mesh_service_graph_request_failed_total[$__rate_interval])) or vector(0)",
                                            "{{client}} -> {{server}}")], unit="reqps")
    b.timeseries("p95 latency per edge", [("histogram_quantile(0.95, sum by (le, client, server) (rate(mesh_service_graph_request_duration_seconds_bucket[$__rate_interval])))",
                                           "{{client}} -> {{server}}")], w=24, unit="s", links=[TRACE_LINK])
    return b


def security():
    b = Board("mesh-security", "Security", "Mutual TLS between proxies, authorization decisions, certificate lifetimes.")
    b.stat("mTLS handshakes / s", f'sum(rate(mesh_tls_handshakes_total{{outcome="ok"}}{RATE}))', unit="ops")
    b.stat("Handshake failures / s", f'sum(rate(mesh_tls_handshakes_total{{outcome="failure"}}{RATE})) or vector(0)', unit="ops")
    b.stat("Denied calls / s", f'sum(rate(mesh_authz_decisions_total{{result="deny"}}{RATE})) or vector(0)', unit="reqps")
    b.stat("Soonest certificate expiry", "min(mesh_identity_expiry_timestamp_seconds > 0) - time()", unit="s")
    b.timeseries("Handshakes by outcome and reason", [(f"sum by (direction, outcome, reason) (rate(mesh_tls_handshakes_total{RATE}))",
                                                      "{{direction}} {{outcome}} {{reason}}")], unit="ops")
    b.timeseries("Authorization decisions", [(f"sum by (service, result) (rate(mesh_authz_decisions_total{RATE}))", "{{service}} {{result}}")],
                 unit="reqps")
    b.timeseries("Certificate time left, per proxy", [("min by (service, instance) (mesh_identity_expiry_timestamp_seconds > 0) - time()",
                                                        "{{service}} {{instance}}")], unit="s")
    b.timeseries("Certificate requests by outcome", [(f"sum by (outcome) (increase(mesh_identity_renewals_total{RATE}))", "{{outcome}}")])
    b.timeseries("Inbound calls by verified caller", [(f"sum by (src_service, dst_service) (rate(mesh_requests_total{{{IN}}}{RATE}))",
                                                       "{{src_service}} -> {{dst_service}}")], w=24, unit="reqps")
    return b


def proxies():
    b = Board("mesh-proxies", "Proxies", "The sidecars themselves: CPU, memory, connections, runtime busyness, telemetry export.")
    b.timeseries("CPU per proxy", [(f'rate(process_cpu_seconds_total{{service!=""}}{RATE})', "{{service}} {{instance}}")], w=8, unit="percentunit")
    b.timeseries("Memory (RSS) per proxy", [('process_resident_memory_bytes{service!=""}', "{{service}} {{instance}}")], w=8, unit="bytes")
    b.timeseries("Runtime busy ratio", [("mesh_runtime_busy_ratio", "{{service}} {{instance}}")], w=8, unit="percentunit", max_=1)
    b.timeseries("Open connections", [("sum by (service, direction) (mesh_open_connections)", "{{service}} {{direction}}")], w=8)
    b.timeseries("Open streams", [("sum by (service, direction) (mesh_open_streams)", "{{service}} {{direction}}")], w=8)
    b.timeseries("Connection errors", [(f"sum by (service, reason) (rate(mesh_connection_errors_total{RATE})) or vector(0)", "{{service}} {{reason}}")],
                 w=8, unit="ops")
    b.timeseries("Task poll time per poll", [(f"sum by (service, task) (rate(mesh_task_poll_seconds_total{RATE})) / sum by (service, task) (rate(mesh_task_polls_total{RATE}))",
                                              "{{service}} {{task}}")], w=8, unit="s")
    b.timeseries("Run-queue delay per poll", [(f"sum by (service, task) (rate(mesh_task_scheduled_seconds_total{RATE})) / sum by (service, task) (rate(mesh_task_polls_total{RATE}))",
                                               "{{service}} {{task}}")], w=8, unit="s")
    b.timeseries("Limits hit", [(f"sum by (service, limit) (rate(mesh_limit_hits_total{RATE})) or vector(0)", "{{service}} {{limit}}")], w=8, unit="ops")
    b.timeseries("Telemetry exported", [(f"sum by (signal) (rate(mesh_telemetry_exported_total{RATE}))", "{{signal}}")], w=12, unit="ops")
    b.timeseries("Telemetry dropped", [(f"sum by (signal, reason) (rate(mesh_telemetry_dropped_total{RATE})) or vector(0)", "{{signal}} {{reason}}")],
                 w=12, unit="ops")
    return b


def registry():
    b = Board("mesh-registry", "Registry", "Service discovery through etcd: instances per service, registrations, re-lists, etcd reachability.")
    b.timeseries("Instances per service (as callers see them)", [("max by (dst_service) (mesh_endpoints)", "{{dst_service}}")], w=12)
    b.timeseries("Registered proxies per service", [("count by (service) (mesh_registry_registrations_total)", "{{service}}")], w=12)
    b.timeseries("Registrations by outcome", [(f"sum by (outcome) (increase(mesh_registry_registrations_total{RATE}))", "{{outcome}}")], w=8)
    b.timeseries("Re-lists by reason", [(f"sum by (reason) (increase(mesh_registry_relists_total{RATE}))", "{{reason}}")], w=8)
    b.timeseries("Watch errors and lost leases", [(f"sum(increase(mesh_registry_watch_errors_total{RATE}))", "watch errors"),
                                                   (f"sum(increase(mesh_registry_leases_lost_total{RATE}))", "leases lost")], w=8)
    b.timeseries("etcd reachability: stale views", [("sum by (service) (mesh_registry_views_stale)", "{{service}}")], w=8,
                 description="Views serving their last known endpoints because etcd is unreachable (0 is healthy).")
    b.timeseries("Keepalive failures", [(f"sum by (service) (increase(mesh_registry_keepalive_failures_total{RATE}))", "{{service}}")], w=8)
    b.timeseries("Malformed records skipped", [(f"sum by (reason) (increase(mesh_registry_malformed_records_total{RATE})) or vector(0)", "{{reason}}")], w=8)
    return b


def collector():
    b = Board("mesh-collector", "Collector", "The telemetry pipeline: what the collector received, dropped, stored and forwarded.")
    b.stat("Spans / s", f'sum(rate(mesh_collector_received_total{{signal="spans"}}{RATE}))', unit="ops")
    b.stat("Metric points / s", f'sum(rate(mesh_collector_received_total{{signal="metric_points"}}{RATE}))', unit="ops")
    b.stat("Spans stored", 'mesh_collector_stored{unit="spans"}')
    b.stat("Series", "mesh_collector_series")
    b.timeseries("Received", [(f"sum by (signal) (rate(mesh_collector_received_total{RATE}))", "{{signal}}")], w=8, unit="ops")
    b.timeseries("Dropped", [(f"sum by (signal, reason) (rate(mesh_collector_dropped_total{RATE})) or vector(0)", "{{signal}} {{reason}}")], w=8, unit="ops")
    b.timeseries("Forwarded", [(f"sum by (signal) (rate(mesh_collector_forwarded_total{RATE}))", "{{signal}}")], w=8, unit="ops")
    b.timeseries("Trace store", [('mesh_collector_stored{unit="bytes"}', "bytes")], w=8, unit="bytes")
    b.timeseries("Evicted spans", [(f"rate(mesh_collector_evicted_spans_total{RATE})", "evicted")], w=8, unit="ops")
    b.timeseries("Collector memory", [('process_resident_memory_bytes{job="mesh-collector",service=""}', "RSS")], w=8, unit="bytes")
    return b


def gateway():
    b = Board("mesh-gateway", "Gateway",
              "The ingress gateway: outside requests by route (failures, latency), TLS at the edge, refusals, certificates.")
    req = "mesh_gateway_requests_total"
    failed = f'{req}{{outcome="server_error"}}'
    b.stat("Requests / s", f"sum(rate({req}{RATE}))", unit="reqps")
    b.stat("Server errors", f"(sum(rate({failed}{RATE})) or vector(0)) / sum(rate({req}{RATE}))", unit="percentunit")
    b.stat("p99 latency", f"histogram_quantile(0.99, sum by (le) (rate(mesh_gateway_request_duration_seconds_bucket{RATE})))",
           unit="s")
    b.stat("Soonest certificate expiry", "min(mesh_gateway_certificate_expiry_timestamp_seconds) - time()", unit="s")
    b.timeseries("Requests by route", [(f"sum by (route) (rate({req}{RATE}))", "{{route}}")], w=8, unit="reqps")
    b.timeseries("Server errors by route and status", [(f"sum by (route, code, grpc_status) (rate({failed}{RATE})) or vector(0)",
                                                   "{{route}} {{code}} {{grpc_status}}")], w=8, unit="reqps")
    b.timeseries("Requests by protocol", [(f"sum by (protocol) (rate({req}{RATE}))", "{{protocol}}")], w=8, unit="reqps")
    b.timeseries("Latency by route", [
        (f"histogram_quantile({q}, sum by (le, route) (rate(mesh_gateway_request_duration_seconds_bucket{RATE})))",
         f"{{{{route}}}} p{int(q * 100)}") for q in (0.5, 0.99)], w=12, unit="s", links=[TRACE_LINK])
    b.timeseries("TLS handshakes at the edge", [
        (f'sum by (outcome, reason) (rate(mesh_tls_handshakes_total{{direction="gateway"}}{RATE}))', "{{outcome}} {{reason}}")],
        w=12, unit="ops")
    b.timeseries("Refused at the edge, by reason", [
        (f"sum by (limit) (rate(mesh_gateway_limited_total{RATE})) or vector(0)", "limit {{limit}}"),
        (f"sum by (reason) (rate(mesh_gateway_auth_refused_total{RATE})) or vector(0)", "token {{reason}}"),
        (f'sum(rate({req}{{route="unrouted"}}{RATE})) or vector(0)', "no route")], w=12, unit="reqps")
    b.timeseries("Certificate time left", [("min by (name) (mesh_gateway_certificate_expiry_timestamp_seconds) - time()",
                                            "{{name}}")], w=12, unit="s")
    return b


BOARDS = [overview, service, graph, security, proxies, registry, collector, gateway]


def render():
    return {f"{b.uid}.json": json.dumps(b.json(), indent=2, sort_keys=False) + "\n" for b in (f() for f in BOARDS)}


def main():
    files = render()
    if "--check" in sys.argv:
        stale = [name for name, text in files.items()
                 if not os.path.exists(os.path.join(OUT, name)) or open(os.path.join(OUT, name)).read() != text]
        extra = sorted(set(os.listdir(OUT)) - set(files)) if os.path.isdir(OUT) else []
        if stale or extra:
            print(f"dashboards out of date: {stale + extra}; run scripts/dashboards.py", file=sys.stderr)
            sys.exit(1)
        return
    os.makedirs(OUT, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(OUT, name), "w") as f:
            f.write(text)
    print(f"wrote {len(files)} dashboards to {OUT}")


if __name__ == "__main__":
    main()
