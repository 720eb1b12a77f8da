#!/usr/bin/env bash
# Checks that every ConfigMap checks/api-writer.sh saw acknowledged exists now, and reports
# the longest gap between consecutive acknowledgements (the write unavailability).
#   checks/api-acked.sh KUBECONFIG WRITER_LOG
# Prints "acked A lost L max-gap-ms G"; exits 1 if anything is lost or nothing was acked.
set -euo pipefail
kc=$1 log=$2
kubectl --kubeconfig "$kc" get configmaps -o name | sed 's|^configmap/||' | sort -u > "$log.present"
"$(dirname "$0")/acked.py" w "$log" "$log.present"
