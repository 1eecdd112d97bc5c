# Stand-in for quay.io/coreos/etcd:v3.5.17 (see build.sh): Debian's etcd, same command names.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends etcd-server etcd-client \
    && rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/etcd /usr/local/bin/etcd && ln -s /usr/bin/etcdctl /usr/local/bin/etcdctl
EXPOSE 2379
CMD ["/usr/local/bin/etcd"]
