# Stand-in for prom/prometheus:v2.53.3 (see build.sh): Debian's prometheus, with the official
# image's entrypoint, default flags, paths and user, and wget for the healthcheck.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/prometheus /bin/prometheus || true \
    && mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
