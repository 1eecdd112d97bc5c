#!/usr/bin/env bash
# The mesh's whole test suite, runnable on a fresh Debian machine:
#   1. installs what the tests need if it is missing: etcd, etcdctl, protoc, Prometheus (Debian),
#      and from PyPI Python grpcio (the independent gRPC client of the interop tests) and the
#      OpenTelemetry SDK with its OTLP exporter (the independent telemetry client);
#   2. checks formatting and lints (cargo fmt, cargo clippy -D warnings);
#   3. builds every binary, then runs every test. End-to-end tests start their own etcd on
#      free loopback ports (one per test, in a temp dir) and the mesh's real binaries;
#   4. verifies `docker compose up` on the local Docker engine (scripts/compose_check.sh;
#      MESH_SKIP_COMPOSE=1 skips it, for machines without Docker).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v prometheus >/dev/null || missing+=(prometheus)
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# An independent gRPC client for the interop tests: Python grpcio (PyPI; Debian's packages as a
# fallback where pip is not allowed to install).
if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
  echo "==> installing grpcio and grpcio-tools"
  python3 -m pip install --quiet grpcio grpcio-tools 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages grpcio grpcio-tools 2>/dev/null \
    || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"; DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-grpcio python3-grpc-tools >/dev/null; }
fi
# An independent telemetry client: the OpenTelemetry Python SDK and its OTLP/gRPC exporter.
if ! python3 -c 'import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc' 2>/dev/null; then
  echo "==> installing opentelemetry-sdk and opentelemetry-exporter-otlp-proto-grpc"
  python3 -m pip install --quiet opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc
fi
# Grafana's dashboard schema is checked with Python's jsonschema.
if ! python3 -c 'import jsonschema' 2>/dev/null; then
  echo "==> installing jsonschema"
  python3 -m pip install --quiet jsonschema 2>/dev/null || python3 -m pip install --quiet --break-system-packages jsonschema
fi
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (binaries the end-to-end tests run)"
cargo build --workspace --bins --locked
echo "==> cargo test"
cargo test --workspace --locked
if [ -n "${MESH_SKIP_COMPOSE:-}" ]; then
  echo "==> compose check SKIPPED (MESH_SKIP_COMPOSE is set)"
else
  echo "==> compose check (docker compose up, checked, torn down)"
  scripts/compose_check.sh
fi
