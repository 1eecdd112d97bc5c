#!/usr/bin/env bash
# The mesh's whole test suite, runnable on a fresh Debian machine:
#   1. installs what is missing (scripts/install-deps.sh, which can also be run alone): etcd,
#      etcdctl, protoc and the protobuf includes, Prometheus (Debian); from PyPI Python grpcio (the
#      independent gRPC client of the interop tests) and the OpenTelemetry SDK with its OTLP
#      exporter (the independent telemetry client); Compose v2 where Docker is present;
#   2. checks formatting and lints (cargo fmt, cargo clippy -D warnings);
#   3. builds every binary, then runs every test. End-to-end tests start their own etcd on
#      free loopback ports (one per test, in a temp dir) and the mesh's real binaries;
#   4. proves the install step on a bare image (scripts/install_check.sh), then verifies
#      `docker compose up` on the local Docker engine (scripts/compose_check.sh). Both need Docker;
#      MESH_SKIP_DOCKER=1 skips them, for machines without it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (binaries the end-to-end tests run)"
cargo build --workspace --bins --locked
echo "==> cargo test"
cargo test --workspace --locked
if [ -n "${MESH_SKIP_DOCKER:-}${MESH_SKIP_COMPOSE:-}" ]; then
  echo "==> install check and compose check SKIPPED (MESH_SKIP_DOCKER is set)"
else
  echo "==> install check (scripts/install-deps.sh on a bare image)"
  scripts/install_check.sh
  echo "==> compose check (docker compose up, checked, torn down)"
  scripts/compose_check.sh
fi
