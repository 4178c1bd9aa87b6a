#!/usr/bin/env bash
# The plain-Secret variant of the TLS manifests, for clusters without
# cert-manager: issues the same identities as http-front-door-certificate.yaml
# and mtls-pair-certificates.yaml with `attache certs`, and prints the Secrets
# (tls.crt, tls.key, ca.crt) that http-front-door.yaml, mtls-pair.yaml,
# postgres-pooler.yaml and mariadb-pooler.yaml mount:
#
#   docs/kubernetes/plain-secrets.sh [CA_DIR] | kubectl apply -f -
#
# CA_DIR (default ./attache-ca) holds the CA; it is created on the first run
# and reused afterwards, so running the script again re-issues every
# certificate under the same CA: that is rotation, and attache picks up the
# new files without a restart. Keep CA_DIR/ca.key out of the cluster.
# Certificates last 90 days; `attache` must be on PATH (or set ATTACHE).
set -euo pipefail
attache=${ATTACHE:-attache}
ca_dir=${1:-attache-ca}
leaves=$(mktemp -d)
trap 'rm -rf "$leaves"' EXIT

if [ ! -f "$ca_dir/ca.key" ]; then
  "$attache" certs ca --out "$ca_dir" >&2
fi

# name, then its SANs as `attache certs issue` flags
issue() {
  local name=$1
  shift
  "$attache" certs issue --ca "$ca_dir" --out "$leaves" --name "$name" "$@" >&2
}
issue web-tls --dns web.default.svc --dns web.default.svc.cluster.local \
  --uri spiffe://cluster.local/ns/default/sa/web
issue orders-identity --uri spiffe://cluster.local/ns/default/sa/orders
issue payments-identity --dns payments.default.svc.cluster.local \
  --uri spiffe://cluster.local/ns/default/sa/payments
# postgres-pooler.yaml's client certificate: common name = the Postgres user.
issue billing-db
# mariadb-pooler.yaml's client certificate, for a user created REQUIRE X509.
issue shop-db

encode() { base64 <"$1" | tr -d '\n'; }
separator=""
for name in web-tls orders-identity payments-identity billing-db shop-db; do
  printf '%sapiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\ntype: kubernetes.io/tls\ndata:\n' "$separator" "$name"
  printf '  tls.crt: %s\n  tls.key: %s\n  ca.crt: %s\n' \
    "$(encode "$leaves/$name.crt")" "$(encode "$leaves/$name.key")" "$(encode "$ca_dir/ca.crt")"
  separator=$'---\n'
done
