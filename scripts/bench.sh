#!/usr/bin/env bash
# The benchmark behind docs/benchmarks.md. One run on loopback puts the same load on:
#   direct      the echo app itself
#   hop1        one mesh-proxy hop   (load -> server sidecar inbound -> app)
#   hop2        the real mesh path   (load -> client sidecar outbound -> server sidecar inbound -> app)
#   hop2tls     the same with identities from the control plane and mutual TLS between the proxies
#   hop2otel    the mesh path exporting telemetry to mesh-collector at the default settings
#               (10 % head sampling, metrics every 10 s); hop2otel100 at 100 % sampling
#   nginx       nginx grpc_pass, one worker           (single-hop peer)
#   haproxy     HAProxy in HTTP/2 mode, nbthread 1     (single-hop peer)
# and, at the edge, TLS terminated by the gateway (mesh-proxy --gateway, 1 worker) and by HAProxy
# (nbthread 1) with the same certificate, loaded by h2load over TLS (BENCH_SKIP_EDGE=1 skips it).
# with the proxy at 1 worker thread (like for like) and at its default (2). Loads: 100-byte unary,
# closed loop 4 connections x 12 streams, and open loop at 2000 calls/s; and for the tail, 200 calls
# in flight (4 x 50) through direct, the mesh path and two chained HAProxy processes (haproxy2;
# BENCH_SKIP_WIDE=1 skips it). Medians of BENCH_ROUNDS
# rounds. Proxy CPU (ms per 1k calls) and RSS come from /proc. Release builds. h2load
# cross-checks closed-loop throughput once per target.
#
#   scripts/bench.sh                   # writes docs/benchmarks.md and target/bench/results.json
#   BENCH_ROUNDS=1 BENCH_SECONDS=3 scripts/bench.sh   # a quick look
#   BENCH_TARGETS="direct hop1-w1" BENCH_LOADS=open BENCH_REPORT=- scripts/bench.sh   # a subset, report to stdout
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${BENCH_ROUNDS:-3}"
SECONDS_PER_RUN="${BENCH_SECONDS:-8}"
RATE="${BENCH_RATE:-2000}"

scripts/install-deps.sh --bench

cargo build --release --locked -p mesh-proxy -p mesh-demo -p meshctl -p mesh-registry -p mesh-collector
BIN="${CARGO_TARGET_DIR:-target}/release"
# BENCH_PROXY_BIN=path runs that mesh-proxy binary instead (e.g. one built with another profile),
# with everything else, the load generator included, unchanged.
PROXY_BIN="${BENCH_PROXY_BIN:-$BIN/mesh-proxy}"
OUT="${CARGO_TARGET_DIR:-target}/bench"
WORK="$(mktemp -d)"; echo "work dir: $WORK" >&2
mkdir -p "$OUT"
rm -f "$OUT"/*.json
pids=()
# Stop in reverse order of start (proxies deregister while etcd still runs).
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
wait_ready() { for _ in $(seq 150); do curl -fs "http://$1/ready" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "proxy at $1 never ready" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

ETCD=$(port); ETCD_PEER=$(port)
etcd --name bench --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD" \
  --advertise-client-urls "http://127.0.0.1:$ETCD" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" \
  --unsafe-no-fsync --logger zap --log-level error >"$WORK/etcd.log" 2>&1 &
pids+=($!); wait_port "$ETCD"

APP=$(port)
# --echo-metadata false: by default the echo app copies every request header into its reply (for
# the tests); here a header a hop adds (traceparent) would then grow every reply.
MESH_LOG=warn "$BIN/mesh-demo" echo --listen "127.0.0.1:$APP" --instance-id bench-echo --echo-metadata false >"$WORK/app.log" 2>&1 &
pids+=($!); wait_port "$APP"

# The control plane's CA, for the mTLS mesh path.
CA=$(port)
"$BIN/mesh-registry" init --ca-dir "$WORK/ca" >/dev/null
MESH_LOG=warn "$BIN/mesh-registry" serve --ca-dir "$WORK/ca" --listen "127.0.0.1:$CA" --etcd-endpoints "127.0.0.1:$ETCD" >"$WORK/ca.log" 2>&1 &
pids+=($!); wait_port "$CA"

# The telemetry collector, for the hop2otel paths.
OTLP=$(port); COLLECTOR_METRICS=$(port); COLLECTOR_QUERY=$(port)
MESH_LOG=warn "$BIN/mesh-collector" --otlp-addr "127.0.0.1:$OTLP" --metrics-addr "127.0.0.1:$COLLECTOR_METRICS" \
  --query-addr "127.0.0.1:$COLLECTOR_QUERY" >"$WORK/collector.log" 2>&1 &
pids+=($!); COLLECTOR_PID=$!; wait_port "$OTLP"

# Proxies: for each worker count (and plaintext, mTLS, or exporting telemetry), a server sidecar
# and a client sidecar. Telemetry runs at the default worker count only.
declare -A PROXY_PID HOP1_ADDR HOP2_ADDR
# The "routes" pair runs with a service policy of 20 routes on the path: 19 that the benchmark's
# calls do not take (a method prefix and a regex on content-type each, evaluated for every call),
# then one that splits over a subset by label.
ROUTES_POLICY="$WORK/routes-policy.json"
python3 scripts/routes_policy.py "$ROUTES_POLICY"
"$BIN/meshctl" --etcd-endpoints "127.0.0.1:$ETCD" apply echo-routes-w1 -f "$ROUTES_POLICY" --allow-empty-subsets >/dev/null
for mode in plain tls otel otel100 routes; do
  for workers in 1 2; do
    case "$mode" in otel*) [ "$workers" = 2 ] || continue ;; routes) [ "$workers" = 1 ] || continue ;; esac
    for role in server client; do
      in=$(port); out=$(port); admin=$(port)
      suffix=$([ "$mode" = plain ] && echo "w$workers" || echo "$mode-w$workers")
      service=$([ "$role" = server ] && echo "echo-$suffix" || echo "client-$suffix")
      identity=()
      if [ "$mode" = tls ]; then
        token=$("$BIN/meshctl" --etcd-endpoints "127.0.0.1:$ETCD" token create "$service" --ttl 2h 2>/dev/null)
        identity=(--identity-ca-addr "https://127.0.0.1:$CA" --identity-ca-name localhost
          --identity-trust-bundle "$WORK/ca/bundle.pem" --identity-token "$token")
      fi
      [ "$mode" = otel ] && identity=(--collector-endpoint "http://127.0.0.1:$OTLP")
      [ "$mode" = otel100 ] && identity=(--collector-endpoint "http://127.0.0.1:$OTLP" --trace-sampling 1)
      [ "$mode" = routes ] && identity=(--labels version=v1)
      MESH_LOG=warn "$PROXY_BIN" --service "$service" --instance-id "$role-$suffix" --app-addr "127.0.0.1:$APP" \
        --inbound-addr "127.0.0.1:$in" --outbound-addr "127.0.0.1:$out" --admin-addr "127.0.0.1:$admin" \
        --etcd-endpoints "127.0.0.1:$ETCD" --workers "$workers" "${identity[@]}" >"$WORK/$role-$suffix.log" 2>&1 &
      pids+=($!); PROXY_PID[$role-$suffix]=$!
      wait_ready "127.0.0.1:$admin"
      [ "$role" = server ] && HOP1_ADDR[$suffix]="127.0.0.1:$in"
      [ "$role" = client ] && HOP2_ADDR[$suffix]="127.0.0.1:$out"
    done
  done
done

NGINX=$(port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
error_log $WORK/nginx/error.log error;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  upstream app { server 127.0.0.1:$APP; keepalive 16; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$NGINX http2;
    http2_max_concurrent_streams 1000;
    keepalive_requests 100000000;
    location / { grpc_pass grpc://app; }
  }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -g 'daemon off;' &
pids+=($!); wait_port "$NGINX"
NGINX_WORKER=$(pgrep -P "$!" | head -1)

# An HAProxy configuration: one thread, HTTP/2 in and out, listening on $1 and forwarding to $2.
haproxy_config() { # listen-port upstream-port
  cat <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$1 proto h2
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$2 proto h2
CONF
}
HAPROXY=$(port)
haproxy_config "$HAPROXY" "$APP" >"$WORK/haproxy.cfg"
# The edge: one certificate (from `mesh-registry dev-cert`) for the gateway and for HAProxy.
EDGE="$WORK/edge"; HAPROXY_TLS=$(port); GATEWAY_TLS=$(port)
"$BIN/mesh-registry" dev-cert --out "$EDGE" --name localhost,127.0.0.1 >/dev/null
cat "$EDGE/gateway.crt" "$EDGE/gateway.key" >"$EDGE/haproxy.pem"
cat >>"$WORK/haproxy.cfg" <<CONF
frontend fe_tls
  bind 127.0.0.1:$HAPROXY_TLS ssl crt $EDGE/haproxy.pem alpn h2
  default_backend be
CONF
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
pids+=($!); HAPROXY_PID=$!; wait_port "$HAPROXY"
# Two chained HAProxy hops, one process each (as the mesh path's two sidecars): a second HAProxy
# in front of the first.
HAPROXY2=$(port)
haproxy_config "$HAPROXY2" "$HAPROXY" >"$WORK/haproxy2.cfg"
haproxy -f "$WORK/haproxy2.cfg" -db >"$WORK/haproxy2.log" 2>&1 &
pids+=($!); HAPROXY2_PID=$!; wait_port "$HAPROXY2"

# The gateway routes Echo to echo-w1: its calls take one more hop than HAProxy's (the server
# sidecar, then the app); its CPU is the gateway process's alone, as HAProxy's is.
cat >"$EDGE/gateway.yaml" <<DOC
certificates:
  - { cert: $EDGE/gateway.crt, key: $EDGE/gateway.key }
routes:
  - { name: echo, grpc_service: mesh.demo.v1.Echo, service: echo-w1 }
DOC
GATEWAY_ADMIN=$(port)
MESH_LOG=warn "$PROXY_BIN" --service bench-gateway --instance-id gateway-1 --app-addr none \
  --outbound-addr "127.0.0.1:$(port)" --admin-addr "127.0.0.1:$GATEWAY_ADMIN" --etcd-endpoints "127.0.0.1:$ETCD" \
  --workers 1 --gateway "$EDGE/gateway.yaml" --gateway-tls-addr "127.0.0.1:$GATEWAY_TLS" >"$WORK/gateway.log" 2>&1 &
pids+=($!); GATEWAY_PID=$!
wait_ready "127.0.0.1:$GATEWAY_ADMIN"

# target name -> "address authority pids-to-measure"
declare -A TARGETS=(
  [direct]="127.0.0.1:$APP echo -"
  [hop1-w1]="${HOP1_ADDR[w1]} echo ${PROXY_PID[server-w1]}"
  [hop2-w1]="${HOP2_ADDR[w1]} echo-w1 ${PROXY_PID[client-w1]},${PROXY_PID[server-w1]}"
  [hop1-w2]="${HOP1_ADDR[w2]} echo ${PROXY_PID[server-w2]}"
  [hop2-w2]="${HOP2_ADDR[w2]} echo-w2 ${PROXY_PID[client-w2]},${PROXY_PID[server-w2]}"
  [hop2tls-w1]="${HOP2_ADDR[tls-w1]} echo-tls-w1 ${PROXY_PID[client-tls-w1]},${PROXY_PID[server-tls-w1]}"
  [hop2tls-w2]="${HOP2_ADDR[tls-w2]} echo-tls-w2 ${PROXY_PID[client-tls-w2]},${PROXY_PID[server-tls-w2]}"
  [hop2otel-w2]="${HOP2_ADDR[otel-w2]} echo-otel-w2 ${PROXY_PID[client-otel-w2]},${PROXY_PID[server-otel-w2]}"
  [hop2otel100-w2]="${HOP2_ADDR[otel100-w2]} echo-otel100-w2 ${PROXY_PID[client-otel100-w2]},${PROXY_PID[server-otel100-w2]}"
  [hop2routes-w1]="${HOP2_ADDR[routes-w1]} echo-routes-w1 ${PROXY_PID[client-routes-w1]},${PROXY_PID[server-routes-w1]}"
  [nginx]="127.0.0.1:$NGINX echo $NGINX_WORKER"
  [haproxy]="127.0.0.1:$HAPROXY echo $HAPROXY_PID"
  [haproxy2]="127.0.0.1:$HAPROXY2 echo $HAPROXY2_PID,$HAPROXY_PID"
)
ORDER=(direct hop1-w1 hop2-w1 hop2routes-w1 hop2tls-w1 hop1-w2 hop2-w2 hop2tls-w2 hop2otel-w2 hop2otel100-w2 nginx haproxy)
# BENCH_TARGETS="direct hop1-w1" runs a subset (for quick looks; docs/benchmarks.md wants all).
[ -n "${BENCH_TARGETS:-}" ] && read -r -a ORDER <<<"$BENCH_TARGETS"

run_one() { # name load round
  local name=$1 load=$2 round=$3
  read -r addr authority pids_csv <<<"${TARGETS[$name]}"
  local extra=(); [ "$load" = open ] && extra=(--rate "$RATE")
  # wide: the closed loop with 200 calls in flight (4 connections x 50 streams), for the tail.
  local streams=12; [ "$load" = wide ] && streams=50
  local before=0 p
  if [ "$pids_csv" != - ]; then for p in ${pids_csv//,/ }; do before=$((before + $(cpu_ticks "$p"))); done; fi
  MESH_LOG=error "$BIN/mesh-demo" load --target "http://$addr" --authority "$authority" --duration "${SECONDS_PER_RUN}s" \
    --connections 4 --streams "$streams" --payload 100 "${extra[@]}" --json "$OUT/$name.$load.$round.json" >/dev/null
  if [ "$pids_csv" != - ]; then
    local after=0 rss=0
    for p in ${pids_csv//,/ }; do after=$((after + $(cpu_ticks "$p"))); rss=$(( $(rss_kib "$p") > rss ? $(rss_kib "$p") : rss )); done
    python3 - "$OUT/$name.$load.$round.json" "$((after - before))" "$(getconf CLK_TCK)" "$rss" "$pids_csv" <<'PY'
import json, sys
path, ticks, hz, rss, pids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = json.load(open(path))
r["proxy_cpu_ms"] = ticks * 1000 / hz
r["proxy_processes"] = len(pids.split(","))
r["proxy_rss_kib"] = rss
json.dump(r, open(path, "w"))
PY
  fi
}

for round in $(seq "$ROUNDS"); do
  for name in "${ORDER[@]}"; do
    for load in ${BENCH_LOADS:-closed open}; do
      echo "round $round: $name $load" >&2
      run_one "$name" "$load" "$round"
    done
  done
done
# The tail at 200 in flight: the mesh path beside two chained HAProxy hops. After every other
# round, so that the proxies' RSS in the tables above is not this load's.
if [ -z "${BENCH_SKIP_WIDE:-}" ]; then
  for round in $(seq "$ROUNDS"); do
    for name in direct hop2-w1 haproxy2; do
      echo "round $round: $name wide" >&2
      run_one "$name" wide "$round"
    done
  done
fi

# h2load cross-check of closed-loop throughput: the same 100-byte unary request, raw HTTP/2.
python3 -c 'import sys; m=b"\x0a\x64"+b"x"*100; sys.stdout.buffer.write(b"\x00"+len(m).to_bytes(4,"big")+m)' >"$WORK/req.bin"
[ -n "${BENCH_SKIP_H2LOAD:-}" ] && ORDER=()
for name in "${ORDER[@]}"; do
  read -r addr authority _ <<<"${TARGETS[$name]}"
  h2load -n 40000 -c 4 -m 12 -d "$WORK/req.bin" -H "content-type: application/grpc" -H "te: trailers" \
    -H ":authority: $authority" "http://$addr/mesh.demo.v1.Echo/Unary" 2>&1 \
    | python3 -c '
import json, re, sys
text = sys.stdin.read()
rps = re.search(r"finished in .*?, ([0-9.]+) req/s", text)
ok = re.search(r"status codes: (\d+) 2xx", text)
json.dump({"rps": float(rps.group(1)) if rps else None, "ok_2xx": int(ok.group(1)) if ok else None}, sys.stdout)' >"$OUT/$name.h2load.json"
done

# The edge: h2load over TLS (ALPN h2), 4 connections x 12 streams, the same request; the
# terminating process's CPU per 1000 calls from /proc.
edge_one() { # name port pid round
  local before after
  before=$(cpu_ticks "$3")
  h2load -n 40000 -c 4 -m 12 -d "$WORK/req.bin" -H "content-type: application/grpc" -H "te: trailers" \
    "https://127.0.0.1:$2/mesh.demo.v1.Echo/Unary" >"$WORK/edge.txt" 2>&1 || true
  after=$(cpu_ticks "$3")
  python3 - "$WORK/edge.txt" "$((after - before))" "$(getconf CLK_TCK)" "$(rss_kib "$3")" >"$OUT/edge-$1.$4.json" <<'PY'
import json, re, sys
text, ticks, hz, rss = open(sys.argv[1]).read(), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rps = re.search(r"finished in .*?, ([0-9.]+) req/s", text)
ok = re.search(r"status codes: (\d+) 2xx", text)
mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text)
tls = re.search(r"TLS Protocol: (\S+)", text)
json.dump({"rps": float(rps.group(1)) if rps else None, "ok_2xx": int(ok.group(1)) if ok else None,
           "cpu_ms": ticks * 1000 / hz, "rss_kib": rss, "mean_request": mean.group(1) if mean else None,
           "tls": tls.group(1) if tls else None}, sys.stdout)
PY
}
if [ -z "${BENCH_SKIP_EDGE:-}" ]; then
  for round in $(seq "$ROUNDS"); do
    echo "round $round: edge (gateway, haproxy over TLS)" >&2
    edge_one gateway "$GATEWAY_TLS" "$GATEWAY_PID" "$round"
    edge_one haproxy "$HAPROXY_TLS" "$HAPROXY_PID" "$round"
  done
fi

# What the collector received and dropped, and its memory, for the report.
curl -fs "http://127.0.0.1:$COLLECTOR_METRICS/metrics" | grep -E '^mesh_collector_(received|dropped|stored)' >"$OUT/collector.txt" || true
echo "collector_rss_kib $(rss_kib "$COLLECTOR_PID")" >>"$OUT/collector.txt"

REPORT="${BENCH_REPORT:-docs/benchmarks.md}"
if [ "$REPORT" = - ]; then
  python3 scripts/bench_report.py "$OUT" "$ROUNDS" "$SECONDS_PER_RUN" "$RATE"
else
  python3 scripts/bench_report.py "$OUT" "$ROUNDS" "$SECONDS_PER_RUN" "$RATE" >"$REPORT"
  echo "wrote $REPORT" >&2
fi
