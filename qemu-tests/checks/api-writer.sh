#!/usr/bin/env bash
# Creates ConfigMaps w1, w2, … in the default namespace through a kubeconfig's server until
# stopped; prints "acked N MILLIS" for every create the API acknowledged, "failed N MILLIS"
# otherwise (MILLIS: wall clock at the answer).
#   checks/api-writer.sh KUBECONFIG
set -uo pipefail
kc=$1
i=0
while true; do
  i=$((i + 1))
  if kubectl --kubeconfig "$kc" --request-timeout=3s create configmap "w$i" \
      --from-literal=n="$i" >/dev/null 2>&1; then
    echo "acked $i $(date +%s%3N)"
  else
    echo "failed $i $(date +%s%3N)"
  fi
done
