#!/usr/bin/env bash
# Asks the apiserver behind a kubeconfig's server (the VIP) for /readyz every 100 ms until
# stopped; prints "ok MILLIS" or "fail MILLIS" per probe (MILLIS: wall clock at the answer).
#   checks/api-prober.sh KUBECONFIG
set -uo pipefail
kc=$1
dir=$(mktemp -d)
field() { grep -m1 "$1:" "$kc" | awk '{print $2}'; }
field certificate-authority-data | base64 -d > "$dir/ca.crt"
field client-certificate-data | base64 -d > "$dir/client.crt"
field client-key-data | base64 -d > "$dir/client.key"
server=$(field server)
while true; do
  if curl -sf --max-time 1 --cacert "$dir/ca.crt" --cert "$dir/client.crt" --key "$dir/client.key" \
      "$server/readyz" >/dev/null 2>&1; then
    echo "ok $(date +%s%3N)"
  else
    echo "fail $(date +%s%3N)"
  fi
  sleep 0.1
done
