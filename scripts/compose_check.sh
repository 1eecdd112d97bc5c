#!/usr/bin/env bash
# Verifies `docker compose up` on this machine's Docker engine, as the README promises it:
#   1. Compose v2 (scripts/install-deps.sh installs it) validates compose.yaml;
#   2. where no registry is reachable, stand-ins for the base images are built from Debian
#      packages under the tags compose.yaml and the Dockerfile use (compose/standins/build.sh);
#   3. the images build from source, and the real compose.yaml comes up (with compose/ci.yaml,
#      which only leaves Grafana out: it cannot be built here), bounded in time;
#   4. every service is healthy (the bootstrap exited 0), the demo's calls flow over mTLS, etcd holds
#      the registrations, every dashboard panel query returns data from Prometheus, every alert
#      rule evaluates, and the trace API holds a trace across services;
#   5. a killed sidecar and a killed app each come back (`docker compose up -d` after
#      `docker kill`): the instance registers again and serves calls again within 10 rounds of
#      150 calls, none of which fails;
#      `docker compose run --rm meshctl services` works against the mesh as the README says;
#   6. `docker compose down -v` leaves no container, network or volume behind.
set -euo pipefail
cd "$(dirname "$0")/.."
TIMEOUT="${COMPOSE_CHECK_TIMEOUT:-240}"

docker compose version >/dev/null 2>&1 \
  || { echo "docker compose (Compose v2) is missing: scripts/install-deps.sh installs it" >&2; exit 1; }
docker compose version

echo "==> docker compose config"
docker compose config -q
compose=(docker compose -f compose.yaml -f compose/ci.yaml)

echo "==> base images"
compose/standins/build.sh

echo "==> docker compose build"
# (Without buildx, Compose prints a hint about Bake and falls back to its classic builder: harmless.)
"${compose[@]}" build --quiet 2> >(grep -v 'configured to build using Bake' >&2)

cleanup() {
  if [ "${1:-}" = failed ]; then
    "${compose[@]}" ps -a || true
    "${compose[@]}" logs --no-color --tail 40 || true
  fi
  "${compose[@]}" --progress quiet down -v --remove-orphans >/dev/null 2>&1 || true
}
trap 'cleanup failed' ERR
trap cleanup EXIT
fail() { echo "$1"; trap - ERR EXIT; cleanup failed; exit 1; }

echo "==> docker compose up"
started=$(date +%s)
up() { "${compose[@]}" --progress quiet up -d --pull never --wait --wait-timeout "$TIMEOUT"; }
up
echo "every service up and healthy after $(( $(date +%s) - started )) s"

echo "==> checks"
# Every container: running and healthy, or (the bootstrap) exited 0.
python3 - "$("${compose[@]}" ps -a --format json)" "$("${compose[@]}" config --services)" <<'PY'
import json, sys
raw, services = sys.argv[1].strip(), set(sys.argv[2].split())
rows = json.loads(raw) if raw.startswith("[") else [json.loads(l) for l in raw.splitlines() if l.strip()]
bad = []
for r in rows:
    name, state, health, code = r["Service"], r["State"], r.get("Health", ""), r.get("ExitCode", 0)
    ok = (state == "exited" and code == 0) if name == "mesh-bootstrap" else (state == "running" and health in ("healthy", ""))
    if not ok:
        bad.append(f"{name}: {state} {health} {code}")
missing = services - {r["Service"] for r in rows}
if missing:
    bad.append("no container for " + ", ".join(sorted(missing)))
print(f"{len(rows)} containers for {len(services)} services: " + ("all healthy" if not bad else "; ".join(bad)))
sys.exit(1 if bad else 0)
PY
# etcd holds every instance's registration.
keys="$("${compose[@]}" exec -T etcd etcdctl get --prefix /mesh/v1/services/ --keys-only)"
for id in frontend/instances/frontend-1 backend/instances/backend-1 backend/instances/backend-2 \
          backend/instances/backend-3 store/instances/store-1; do
  grep -q "/mesh/v1/services/$id" <<<"$keys" || { echo "etcd has no $id:"; echo "$keys"; exit 1; }
done
echo "etcd: frontend, backend x3 and store registered"
python3 scripts/compose_queries.py --prometheus http://127.0.0.1:9090 --traces http://127.0.0.1:9411 \
  --timeout "$TIMEOUT" --started "$started"
# The calls between proxies are mutual TLS, and the demo's calls reach the end of the chain.
q() { curl -fsG http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$1" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)'; }
tls=$(q 'sum(mesh_tls_handshakes_total{outcome="ok"})')
plain=$(q 'sum(mesh_tls_handshakes_total{outcome="failure"}) or vector(0)')
store=$(q 'sum(mesh_requests_total{direction="inbound",dst_service="store",src_service="backend",grpc_status="OK"})')
echo "mTLS handshakes ok: $tls, failed: $plain; calls backend -> store: $store"
python3 -c "import sys; sys.exit(0 if float('$tls') > 0 and float('$store') > 0 else 1)"

echo "==> the operator's CLI: docker compose run --rm meshctl services"
services="$("${compose[@]}" --progress quiet run --rm -T meshctl services)"
echo "$services"
grep -qE '^backend +3$' <<<"$services" || { echo "meshctl services does not list backend with 3 instances"; exit 1; }
echo "==> the demo's canary: docker compose run --rm meshctl status"
status="$("${compose[@]}" --progress quiet run --rm -T meshctl status)"
echo "$status"
# Version 1 (applied by mesh-bootstrap), run by every proxy: none behind, none rejecting.
grep -qE '^backend +1 +[0-9]+ +([0-9]+) +\1 +0 +0$' <<<"$status" || fail "not every proxy runs version 1 of backend's policy"

echo "==> the gateway from the host, as the README shows: the page, gRPC-Web with curl, gRPC with grpcio"
edge="$(mktemp -d)"
"${compose[@]}" cp gateway:/var/lib/mesh/edge/dev-ca.crt "$edge/dev-ca.crt"
curl -fsS --cacert "$edge/dev-ca.crt" https://localhost:8443/ | grep -q "Calling the mesh from a browser" \
  || fail "the gateway does not serve its page on https://localhost:8443/"
web="$(curl -fsS --cacert "$edge/dev-ca.crt" -H 'content-type: application/grpc-web-text' \
  --data 'AAAAAAcKBWhlbGxv' https://localhost:8443/mesh.demo.v1.Echo/Unary)"
python3 - "$web" <<'PY' || fail "gRPC-Web through the gateway: $web"
import base64, sys
text = sys.argv[1]
raw = b"".join(base64.b64decode(text[i:i + 4]) for i in range(0, len(text), 4))
assert b"hello" in raw and b"store-1" in raw and b"grpc-status: 0" in raw, raw
print("gRPC-Web over TLS: Echo/Unary answered by store-1")
PY
python3 - "$edge/dev-ca.crt" <<'PY' || fail "grpcio through the gateway"
import grpc, sys
creds = grpc.ssl_channel_credentials(open(sys.argv[1], "rb").read())
with grpc.secure_channel("localhost:8443", creds) as channel:
    echo = channel.unary_unary("/mesh.demo.v1.Echo/Unary")(b"\x0a\x05hello", timeout=10)
    hello = channel.unary_unary("/mesh.demo.v1.Frontend/Hello")(b"\x0a\x07outside", timeout=10)
assert b"store-1" in echo, echo
assert b"frontend-1" in hello and b"backend-" in hello, hello
print("grpcio over TLS: Echo/Unary and Frontend/Hello (frontend -> backend -> store) through the gateway")
PY
rm -rf "$edge"
# The visitors' calls, counted by route and logged one JSON line each.
visits=$(q 'sum(mesh_gateway_requests_total{route="frontend",outcome="success"})')
echo "gateway: $visits successful requests on route frontend"
python3 -c "import sys; sys.exit(0 if float('$visits') > 0 else 1)" || fail "no successful requests counted on the gateway's frontend route"
"${compose[@]}" logs --no-log-prefix gateway | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin if l.startswith("{\"time\"")]
assert any(l["route"] == "frontend" and l["grpc_status"] == "OK" and len(l["trace_id"]) == 32 for l in lines), lines[-3:]
print(f"gateway access log: {len(lines)} JSON lines")
' || fail "the gateway's access log has no line for a visitor's call"

# A pod outlives its containers: kill one, bring it back with `up -d`, and the instance serves again.
calls() { # 150 Hello calls from the traffic pod through its proxy, frontend -> backend x3 -> store
  "${compose[@]}" exec -T traffic-app mesh-demo hello --target http://127.0.0.1:4140 --authority frontend \
    --count 150 --quiet
}
revision() { # the etcd revision that last wrote instance $1's record, 0 if it has none
  "${compose[@]}" exec -T etcd etcdctl get -w json "/mesh/v1/services/$1" \
    | python3 -c 'import json,sys; print(max([kv["mod_revision"] for kv in json.load(sys.stdin).get("kvs", [])] or [0]))'
}
registered() { # waits until instance $1 is registered again: written after revision $2
  for _ in $(seq 1 60); do
    [ "$(revision "$1")" -gt "$2" ] && return 0
    sleep 1
  done
  echo "$1 did not register again"; return 1
}
for victim in backend-1-proxy backend-1-app; do
  echo "==> docker kill $victim, then docker compose up -d"
  # A killed proxy's record outlives it by its lease: wait for the new process's registration.
  # An app that is back within a second may never have been missed by its proxy (the record
  # stays), or be missed a moment later: wait for a record, then for calls to reach it.
  after=0
  [ "$victim" = backend-1-proxy ] && after="$(revision backend/instances/backend-1)"
  docker kill "$("${compose[@]}" ps -q "$victim")" >/dev/null
  up
  registered backend/instances/backend-1 "$after"
  served=""
  for _ in $(seq 1 10); do
    summary="$(calls | tail -1)"
    grep -qE '^calls=150 failed=0 ' <<<"$summary" || fail "calls failed after $victim came back: $summary"
    if grep -qE 'backend-1:[1-9]' <<<"$summary"; then served=1; break; fi
    sleep 2
  done
  echo "after $victim is back: $summary"
  [ -n "$served" ] || fail "backend-1 does not serve again within 10 rounds of calls after $victim came back"
done

echo "==> docker compose down -v"
trap - ERR EXIT
"${compose[@]}" --progress quiet down -v --remove-orphans
left="$(docker ps -aq --filter label=com.docker.compose.project=mesh; docker volume ls -q --filter label=com.docker.compose.project=mesh; docker network ls -q --filter label=com.docker.compose.project=mesh)"
[ -z "$left" ] || { echo "left behind after down -v: $left"; exit 1; }
echo "compose check passed"
