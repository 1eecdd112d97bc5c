#!/usr/bin/env bash
# Instructions per call in one proxy, counted by valgrind's callgrind: the same figure
# for the same binary and load whatever else the machine is doing, so it settles small A/B
# questions ("does this cost 3 %?") that throughput on a shared 2-core VM (+-10 % between rounds)
# cannot. The load is our own generator, N calls of 100-byte Echo/Unary over one connection, 4 in
# flight, through a client sidecar to a server sidecar and the echo app, both 1 worker; the client
# sidecar (outbound path) runs under callgrind, or the server sidecar (inbound path) with
# CALLCOST_SIDE=server.
# Counting starts after 500 warm-up calls and stops after N; startup is not counted.
#
#   scripts/callcost.sh                        # plain path and a 20-route policy, current build
#   CALLCOST_PROXY_BIN=/tmp/old/mesh-proxy scripts/callcost.sh   # another proxy binary, same load
#   CALLCOST_MODES=plain CALLCOST_CALLS=20000 scripts/callcost.sh
#   CALLCOST_SIDE=server scripts/callcost.sh   # count the server sidecar (inbound) instead
#
# Caveat: valgrind counts each byte that `rep movsb` moves as one instruction, and glibc's memcpy
# uses it for large copies (tokio moving a task's future into place): those copies weigh far more
# in this count than in time. Compare binaries with each other, not with the CPU figures of
# docs/benchmarks.md; the callgrind files are kept (see the last lines) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS="${CALLCOST_CALLS:-5000}"
MODES="${CALLCOST_MODES:-plain routes}"
SIDE="${CALLCOST_SIDE:-client}"
case "$SIDE" in client | server) ;; *) echo "CALLCOST_SIDE is client or server, not $SIDE" >&2; exit 2 ;; esac
scripts/install-deps.sh --bench
cargo build --release --locked -p mesh-proxy -p mesh-demo -p meshctl >&2
BIN="${CARGO_TARGET_DIR:-target}/release"
PROXY_BIN="${CALLCOST_PROXY_BIN:-$BIN/mesh-proxy}"
OUT="${CARGO_TARGET_DIR:-target}/callcost"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
pids=()
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 600); do curl -fs "http://$1/ready" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "proxy at $1 never ready" >&2; exit 1; }
proxy_args() { # service instance
  local i o a; i=$(port); o=$(port); a=$(port)
  echo "--service $1 --instance-id $2 --app-addr 127.0.0.1:$APP --inbound-addr 127.0.0.1:$i"
  echo "--outbound-addr 127.0.0.1:$o --admin-addr 127.0.0.1:$a --etcd-endpoints 127.0.0.1:$ETCD --workers 1"
}
flag() { sed -n "s/.*--$1 \([^ ]*\).*/\1/p" <<<"$2"; }

ETCD=$(port); PEER=$(port)
etcd --name callcost --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD" \
  --advertise-client-urls "http://127.0.0.1:$ETCD" --listen-peer-urls "http://127.0.0.1:$PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER" --initial-cluster "callcost=http://127.0.0.1:$PEER" \
  --unsafe-no-fsync --log-level error >"$WORK/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$ETCD") 2>/dev/null && break; sleep 0.1; done
APP=$(port)
MESH_LOG=warn "$BIN/mesh-demo" echo --listen "127.0.0.1:$APP" --instance-id callcost --echo-metadata false >"$WORK/app.log" 2>&1 &
pids+=($!)
# The same 20-route policy as the benchmark's hop2routes target: 19 routes the calls do not take
# (a method prefix and a regex on content-type each), then one that splits over a subset.
python3 scripts/routes_policy.py "$WORK/routes.json"
"$BIN/meshctl" --etcd-endpoints "127.0.0.1:$ETCD" apply echo-routes -f "$WORK/routes.json" --allow-empty-subsets >/dev/null

for mode in $MODES; do
  server=$(proxy_args "echo-$mode" "server-$mode"); client=$(proxy_args "client-$mode" "client-$mode")
  rm -f "$OUT/$mode.$SIDE.callgrind"*
  for role in server client; do
    args=$([ "$role" = server ] && echo "$server --labels version=v1" || echo "$client")
    run=("$BIN/mesh-proxy")
    [ "$role" = "$SIDE" ] && run=(valgrind --tool=callgrind --callgrind-out-file="$OUT/$mode.$SIDE.callgrind" "$PROXY_BIN")
    # shellcheck disable=SC2086 # the argument list is split on purpose
    MESH_LOG=warn "${run[@]}" $args >"$WORK/$role-$mode.log" 2>&1 &
    pids+=($!); [ "$role" = "$SIDE" ] && pid=$!
    wait_ready "$(flag admin-addr "$args")"
  done
  load=(--target "http://$(flag outbound-addr "$client")" --authority "echo-$mode" --warmup 0 --connections 1 --streams 4)
  MESH_LOG=error "$BIN/mesh-demo" load "${load[@]}" --requests 500 >/dev/null
  callgrind_control -z "$pid" >/dev/null
  MESH_LOG=error "$BIN/mesh-demo" load "${load[@]}" --requests "$CALLS" --json "$WORK/load-$mode.json" >/dev/null
  callgrind_control -d "$pid" >/dev/null
  for _ in $(seq 50); do [ -s "$OUT/$mode.$SIDE.callgrind.1" ] && break; sleep 0.2; done
  ok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ok'])" "$WORK/load-$mode.json")
  [ "$ok" = "$CALLS" ] || { echo "$mode: only $ok of $CALLS calls succeeded" >&2; exit 1; }
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$OUT/$mode.$SIDE.callgrind.1")
  echo "$mode, $SIDE sidecar: $((total / CALLS)) instructions per call ($CALLS calls, $PROXY_BIN; $OUT/$mode.$SIDE.callgrind.1)"
  # Allocations: every call made to malloc, calloc or realloc (callgrind's `calls=` lines under a
  # `cfn=` naming one; names are given once, then referred to by number).
  python3 - "$OUT/$mode.$SIDE.callgrind.1" "$CALLS" <<'PY'
import re, sys
names, target, allocs = {}, None, 0
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("fn="):  # a name may be given first where it is the current function
        m = re.match(r"fn=\((\d+)\) (.*)", line.strip())
        if m:
            names[m.group(1)] = m.group(2)
    elif line.startswith("cfn="):
        m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.strip())
        if m and m.group(2):
            names[m.group(1)] = m.group(2)
        target = names.get(m.group(1), "") if m else ""
    elif line.startswith("calls=") and target is not None:
        if target in ("malloc", "calloc", "realloc", "__libc_malloc", "__libc_calloc", "__libc_realloc"):
            allocs += int(line.split("=")[1].split()[0])
        target = None
print(f"  allocations (malloc, calloc, realloc): {allocs / int(sys.argv[2]):.1f} per call")
PY
done
