#!/usr/bin/env bash
# Where a proxy's CPU goes per call (issue 15's profile). On loopback, 100-byte Echo/Unary as
# raw HTTP/2 from h2load (closed loop, 4 connections x 12 streams), one release proxy with 1
# worker thread, either
#   hop1   h2load -> server sidecar (inbound) -> echo app        (the profiled proxy: the sidecar)
#   hop2   h2load -> client sidecar (outbound) -> server sidecar -> app   (profiled: the client)
# and for each:
#   1. perf record (sampling, DWARF call graphs) for PROFILE_SECONDS under load -> a flame graph
#      (inferno, installed with cargo if missing) and the share of samples by where the leaf
#      frame is (kernel, h2/hpack, hyper, tokio, rustls, allocator, memcpy, our code ...);
#   2. a fixed number of calls (PROFILE_CALLS) under `strace -c -f`: syscalls per call by name;
#   3. the same number of calls, counting the process's context switches (all threads, from
#      /proc): voluntary and involuntary switches per call.
# Allocations per call come from scripts/callcost.sh (callgrind counts every call to malloc).
#
#   scripts/profile.sh                       # both paths; SVGs and tables in target/profile/
#   PROFILE_PATHS=hop1 PROFILE_SECONDS=5 scripts/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${PROFILE_SECONDS:-10}"
CALLS="${PROFILE_CALLS:-20000}"
PATHS="${PROFILE_PATHS:-hop1 hop2}"
scripts/install-deps.sh --bench
command -v inferno-flamegraph >/dev/null || cargo install --locked inferno@0.12.3 >&2
cargo build --release --locked -p mesh-proxy -p mesh-demo >&2
BIN="${CARGO_TARGET_DIR:-target}/release"
OUT="${CARGO_TARGET_DIR:-target}/profile"
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
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; exit 1; }
wait_ready() { for _ in $(seq 300); do curl -fs "http://$1/ready" >/dev/null 2>&1 && return 0; sleep 0.1; done; exit 1; }
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n[$1] += $2} END {print n["voluntary_ctxt_switches:"], n["nonvoluntary_ctxt_switches:"]}'; }

ETCD=$(port); PEER=$(port)
etcd --name profile --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD" \
  --advertise-client-urls "http://127.0.0.1:$ETCD" --listen-peer-urls "http://127.0.0.1:$PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER" --initial-cluster "profile=http://127.0.0.1:$PEER" \
  --unsafe-no-fsync --log-level error >"$WORK/etcd.log" 2>&1 &
pids+=($!); wait_port "$ETCD"
APP=$(port)
MESH_LOG=warn "$BIN/mesh-demo" echo --listen "127.0.0.1:$APP" --instance-id profile --echo-metadata false >"$WORK/app.log" 2>&1 &
pids+=($!); wait_port "$APP"
declare -A PID ADDR
for role in server client; do
  in=$(port); out=$(port); admin=$(port)
  MESH_LOG=warn "$BIN/mesh-proxy" --service "echo-$role" --instance-id "$role" --app-addr "127.0.0.1:$APP" \
    --inbound-addr "127.0.0.1:$in" --outbound-addr "127.0.0.1:$out" --admin-addr "127.0.0.1:$admin" \
    --etcd-endpoints "127.0.0.1:$ETCD" --workers 1 >"$WORK/$role.log" 2>&1 &
  pids+=($!); PID[$role]=$!; wait_ready "127.0.0.1:$admin"
  [ "$role" = server ] && ADDR[hop1]="127.0.0.1:$in echo"
  [ "$role" = client ] && ADDR[hop2]="127.0.0.1:$out echo-server"
done
PID[hop1]=${PID[server]}; PID[hop2]=${PID[client]}

python3 -c 'import sys; m=b"\x0a\x64"+b"x"*100; sys.stdout.buffer.write(b"\x00"+len(m).to_bytes(4,"big")+m)' >"$WORK/req.bin"
load() { # path h2load-args...
  local addr authority; read -r addr authority <<<"${ADDR[$1]}"; shift
  h2load "$@" -c 4 -m 12 -d "$WORK/req.bin" -H "content-type: application/grpc" -H "te: trailers" \
    -H ":authority: $authority" "http://$addr/mesh.demo.v1.Echo/Unary"
}
ok() { grep -oE 'status codes: [0-9]+ 2xx' | grep -oE '[0-9]+' | head -1; }

for path in $PATHS; do
  pid=${PID[$path]}
  load "$path" -n 20000 >/dev/null # warm up
  echo "==> $path: perf record for ${SECONDS_PER_RUN}s under load (pid $pid)" >&2
  load "$path" -D "$((SECONDS_PER_RUN + 2))" >"$WORK/$path.load.txt" &
  loader=$!
  sleep 1
  perf record -q -F 499 -g --call-graph dwarf,32768 -p "$pid" -o "$WORK/$path.perf.data" -- sleep "$SECONDS_PER_RUN" 2>/dev/null
  wait "$loader"
  perf script -i "$WORK/$path.perf.data" 2>/dev/null | inferno-collapse-perf --all >"$OUT/$path.folded"
  inferno-flamegraph --minwidth 0.2 --title "mesh-proxy, $path, 100-byte unary, closed loop 4x12" <"$OUT/$path.folded" >"$OUT/$path.svg"

  echo "==> $path: $CALLS calls under strace -c" >&2
  strace -c -f -p "$pid" -o "$WORK/$path.strace" &
  tracer=$!
  sleep 1
  done_ok=$(load "$path" -n "$CALLS" | ok)
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  [ "$done_ok" = "$CALLS" ] || { echo "$path: $done_ok of $CALLS calls OK under strace" >&2; exit 1; }

  read -r v0 n0 <<<"$(switches "$pid")"
  done_ok=$(load "$path" -n "$CALLS" | ok)
  read -r v1 n1 <<<"$(switches "$pid")"
  [ "$done_ok" = "$CALLS" ] || { echo "$path: $done_ok of $CALLS calls OK" >&2; exit 1; }

  python3 scripts/profile_report.py --path "$path" --folded "$OUT/$path.folded" --strace "$WORK/$path.strace" \
    --calls "$CALLS" --switches "$((v1 - v0))" "$((n1 - n0))" | tee "$OUT/$path.md"
done
echo "flame graphs and tables: $OUT/" >&2
