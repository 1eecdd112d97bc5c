#!/usr/bin/env bash
# Builds, from Debian packages, local stand-ins for the images compose.yaml and the Dockerfile start
# from, under the same tags, for machines that reach no image registry (CI here):
#   debian:bookworm-slim      debootstrap --variant=minbase bookworm, imported
#   rust:1.95-slim-bookworm   that + gcc + this machine's Rust toolchain (rustup's, without docs)
#                             + this machine's extra CA certificates (an egress proxy that
#                             re-signs TLS needs them for crates.io)
#   quay.io/coreos/etcd:v3.5.17, prom/prometheus:v2.53.3   that + Debian's etcd / prometheus
# The tags are the official ones, the versions are not: the etcd stand-in runs Debian's etcd 3.4.23
# and the Prometheus stand-in Debian's Prometheus 2.42. compose.yaml and the checks use only what
# both versions of each have (etcd's v3 API and flags; Prometheus 2.x config, rules and API).
# Images already present are kept. Where a registry is reachable none of this is needed.
set -euo pipefail
cd "$(dirname "$0")"
have() { docker image inspect "$1" >/dev/null 2>&1; }
# `docker build` without buildx warns that its legacy builder is deprecated: harmless here.
build() {
  docker build -q "$@" 2> >(grep -v -E 'legacy builder is deprecated|Install the buildx component|docs.docker.com/go/buildx|^ *$' >&2) >/dev/null
}
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! have debian:bookworm-slim; then
  command -v debootstrap >/dev/null || { $sudo apt-get update -qq; DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null; }
  root="$(mktemp -d)"
  echo "==> debootstrap bookworm (minbase) into $root"
  $sudo debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  $sudo tar -C "$root" -c . | docker import - debian:bookworm-slim >/dev/null
  $sudo rm -rf "$root"
fi

if ! have rust:1.95-slim-bookworm; then
  toolchain="$(dirname "$(dirname "$(rustup which rustc)")")"
  ctx="$(mktemp -d)"
  echo "==> rust:1.95-slim-bookworm from $toolchain"
  mkdir -p "$ctx/rust"
  tar -C "$toolchain" --exclude=./share -c . | tar -C "$ctx/rust" -x
  mkdir -p "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cp rust.Dockerfile "$ctx/Dockerfile"
  build -t rust:1.95-slim-bookworm "$ctx"
  rm -rf "$ctx"
fi

if ! have quay.io/coreos/etcd:v3.5.17; then
  echo "==> quay.io/coreos/etcd:v3.5.17 (Debian's etcd)"
  build -t quay.io/coreos/etcd:v3.5.17 -f etcd.Dockerfile .
fi

if ! have prom/prometheus:v2.53.3; then
  echo "==> prom/prometheus:v2.53.3 (Debian's prometheus)"
  build -t prom/prometheus:v2.53.3 -f prometheus.Dockerfile .
fi
