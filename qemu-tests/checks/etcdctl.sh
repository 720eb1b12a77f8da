#!/usr/bin/env bash
# etcdctl against a kimg cluster's etcd members over TLS, with the healthcheck client cert.
#   checks/etcdctl.sh CLUSTER_DIR [etcdctl args...]
# ENDPOINTS (comma list) overrides the default of every etcd node in cluster.toml.
set -euo pipefail
dir=$1; shift
pki=$dir/secrets/pki
if [ -z "${ENDPOINTS:-}" ]; then
  ENDPOINTS=$(python3 - "$dir/cluster.toml" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
print(",".join(f"https://{n['ip']}:2379" for n in c.get("node", []) if "etcd" in n["roles"]))
PY
)
fi
exec env ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" --cacert "$pki/etcd/ca.crt" \
  --cert "$pki/etcd/healthcheck-client.crt" --key "$pki/etcd/healthcheck-client.key" \
  --dial-timeout=2s --command-timeout=3s "$@"
