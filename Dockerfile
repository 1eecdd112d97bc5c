# One image with every mesh binary (mesh-proxy, mesh-registry, mesh-collector, meshctl) and the
# demo application (mesh-demo). Multi-stage: a Rust build (etcd-client needs protoc), then a slim
# Debian runtime running as a non-root user.
#
#   docker build -t mesh .
FROM rust:1.95-slim-bookworm AS build
# apt's output (debconf's notes included) only when it fails.
RUN (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        protobuf-compiler libprotobuf-dev) >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }; \
    rm -rf /var/lib/apt/lists/* /tmp/apt.log
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
        -p mesh-proxy -p mesh-registry -p mesh-collector -p meshctl -p mesh-demo \
    && mkdir /out \
    && cp target/release/mesh-proxy target/release/mesh-registry target/release/mesh-collector \
          target/release/meshctl target/release/mesh-demo /out/ \
    && strip /out/*

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 mesh \
    && useradd --system --uid 10001 --gid mesh --no-create-home --shell /usr/sbin/nologin mesh \
    && mkdir -p /var/lib/mesh/ca /var/lib/mesh/join /var/lib/mesh/edge \
    && chown -R mesh:mesh /var/lib/mesh
COPY --from=build /out/ /usr/local/bin/
USER mesh
WORKDIR /var/lib/mesh
