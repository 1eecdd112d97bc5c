#!/bin/sh
# One-shot bootstrap for compose.yaml (idempotent): the control plane's root CA (into the `ca`
# volume, which only the CA mounts), and what each proxy needs to join (into the `join` volume:
# the trust bundle and one join token per service), the gateway's development certificate (into
# the `edge` volume: a CA of its own, dev-ca.crt, and gateway.crt for localhost), and the demo's
# canary policy for backend (backend-3, version v2, takes 10 % of the calls) unless backend
# already has a policy.
set -eu
CA=/var/lib/mesh/ca
JOIN=/var/lib/mesh/join
if [ ! -f "$CA/root.pem" ]; then
  mesh-registry init --ca-dir "$CA"
  echo "bootstrap: created the root CA"
fi
cp "$CA/bundle.pem" "$JOIN/bundle.pem.tmp" && mv "$JOIN/bundle.pem.tmp" "$JOIN/bundle.pem"
for service in $MESH_SERVICES; do
  if [ ! -s "$JOIN/$service.token" ]; then
    meshctl token create "$service" --ttl 8760h >"$JOIN/$service.token.tmp"
    mv "$JOIN/$service.token.tmp" "$JOIN/$service.token"
    echo "bootstrap: join token for $service"
  fi
done
mesh-registry dev-cert --out /var/lib/mesh/edge --name localhost,127.0.0.1,gateway
if ! meshctl show backend >/dev/null 2>&1; then
  # Before any backend has started: the subsets are empty for now.
  MESH_OPERATOR=mesh-bootstrap meshctl apply backend -f /policies/backend-canary-10.yaml --allow-empty-subsets
fi
