#!/usr/bin/env bash
# From the web pod on NODE_A, fetch URL until the page served by the web pod on the other
# worker answers (index.html holds the serving pod's hostname): proves pod-to-Service
# traffic crosses nodes. Prints the answering pod.
#   checks/cross-node.sh KUBECONFIG NODE_A URL
set -euo pipefail
kc=$1 node=$2 url=$3
pods=$(kubectl --kubeconfig "$kc" get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}')
here=$(awk -v n="$node" '$2 == n {print $1; exit}' <<<"$pods")
there=$(awk -v n="$node" '$2 != n {print $1; exit}' <<<"$pods")
[ -n "$here" ] && [ -n "$there" ] || { echo "need web pods on $node and elsewhere: $pods" >&2; exit 1; }
for _ in $(seq 1 20); do
  got=$(kubectl --kubeconfig "$kc" exec "$here" -- busybox wget -q -T 3 -O- "$url" 2>/dev/null || true)
  if [ "$got" = "$there" ]; then echo "$here -> $url -> $there"; exit 0; fi
done
echo "never reached $there from $here via $url" >&2
exit 1
