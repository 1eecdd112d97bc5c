#!/usr/bin/env bash
# Proves the install step on a bare image: a throwaway container from the Rust image (bare Debian
# plus a Rust toolchain, nothing else: no protoc, no Python, no etcd) gets a clean copy of the
# repository (the files git tracks or would track, no build output), runs only
# scripts/install-deps.sh, and then:
#   1. builds the crates whose build scripts need system files (etcd-client and mesh-proto run
#      protoc on .proto files that import the well-known types) in a fresh target directory;
#   2. checks, independently of the install script's own list, that every program the tests and
#      scripts start and every Python module they import is there: the programs are read from the
#      test sources (`Command::new("...")`, `run("...", ...)`) and the modules from the Python files'
#      imports, so a tool a new test starts cannot be forgotten by the install list unnoticed.
# Every step runs even after one fails, and every failure is reported; any failure fails the check.
#
#   scripts/install_check.sh
#   MESH_INSTALL_WITHOUT=libprotobuf-dev scripts/install_check.sh   # must fail: shows the check bites
#
# Needs Docker. Where no registry is reachable the image is the local stand-in
# (compose/standins/build.sh). Downloaded crates are kept in the Docker volume
# mesh-install-check-cargo between runs (a cache: the build itself is always fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
image="${MESH_INSTALL_CHECK_IMAGE:-rust:1.95-slim-bookworm}"
started=$(date +%s)

compose/standins/build.sh

# A clean copy: tracked and not-ignored files only.
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -c | tar -C "$src" -x

echo "==> install check in a bare $image container${MESH_INSTALL_WITHOUT:+ (leaving out: $MESH_INSTALL_WITHOUT)}"
docker run --rm --network bridge \
  -v "$src:/src:ro" -v mesh-install-check-cargo:/usr/local/cargo/registry \
  -e MESH_INSTALL_WITHOUT="${MESH_INSTALL_WITHOUT:-}" -e CARGO_TERM_COLOR=never -w /src \
  "$image" bash -c '
set -uo pipefail
failed=()
step() { local name="$1"; shift; echo "--> $name"; "$@" || failed+=("$name"); }
if command -v protoc >/dev/null || [ -e /usr/include/google/protobuf/descriptor.proto ] || command -v etcd >/dev/null; then
  echo "the image is not bare: protoc, the protobuf includes or etcd are already there" >&2
  exit 1
fi
step "scripts/install-deps.sh" scripts/install-deps.sh
# (Fetched first: a package spec like `-p etcd-client` only matches crates already downloaded;
# and one build per spec: cargo matches the spec of a dependency only when it is the only one.)
export CARGO_TARGET_DIR=/tmp/target
step "cargo fetch" cargo fetch --locked --quiet
step "cargo build -p etcd-client (fresh target directory)" cargo build --quiet --locked -p etcd-client
step "cargo build -p mesh-proto" cargo build --quiet --locked -p mesh-proto
programs() {
  grep -rhoE "(Command::new|run)\(\"[a-z0-9_.-]+\"" tests/ | sed -E "s/.*\(\"([^\"]+)\"/\1/"
  echo cargo; echo docker
}
check_programs() {
  local ok=0 p
  for p in $(programs | sort -u); do
    case "$p" in docker | mesh*) continue ;; esac  # the host engine; the workspace binaries
    command -v "$p" >/dev/null || { echo "   missing program: $p"; ok=1; }
  done
  return $ok
}
modules() {
  grep -hoE "^\s*(import|from) [A-Za-z0-9_.]+" scripts/*.py tests/interop/*.py | awk "{print \$2}"
  # Python run inline by the tests: python3 -c "import json,sys,jsonschema; ..."
  grep -rhoE "\"import [A-Za-z0-9_.,]+" tests/ | sed -E "s/^\"import //" | tr , "\n"
}
check_modules() {
  local ok=0 m
  for m in $(modules | sort -u); do
    # A module beside the scripts (tests/interop/grpcio_client.py) is theirs, not an install.
    [ -e "scripts/$m.py" ] || [ -e "tests/interop/$m.py" ] && continue
    python3 -c "import $m" 2>/dev/null || { echo "   missing Python module: $m"; ok=1; }
  done
  return $ok
}
step "every program the tests start is on PATH" check_programs
step "every Python module the scripts import is importable" check_modules
if ((${#failed[@]})); then
  printf "FAILED: %s\n" "${failed[@]}" >&2
  exit 1
fi
'
echo "install check passed in $(( $(date +%s) - started )) s"
