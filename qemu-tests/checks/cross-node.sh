#!/usr/bin/env bash
# From the web pod on NODE_A, fetch http://HOST:PORT/ until the page served by the web
# pod on the other worker answers (index.html holds the serving pod's hostname): proves
# pod-to-Service traffic crosses nodes. A HOST that is a name is resolved inside the pod
# with busybox nslookup (cluster DNS via the pod's resolv.conf). Prints what answered.
#   checks/cross-node.sh KUBECONFIG NODE_A HOST PORT
# (busybox-static's wget crashes without glibc's NSS modules, so HTTP is spoken with nc.)
set -euo pipefail
kc=$1 node=$2 host=$3 port=$4
k() { kubectl --kubeconfig "$kc" "$@"; }
pods=$(k get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}')
here=$(awk -v n="$node" '$2 == n {print $1; exit}' <<<"$pods")
there=$(awk -v n="$node" '$2 != n {print $1; exit}' <<<"$pods")
[ -n "$here" ] && [ -n "$there" ] || { echo "need web pods on $node and elsewhere: $pods" >&2; exit 1; }
ip=$host
if ! [[ $host =~ ^[0-9.]+$ ]]; then
  # busybox nslookup also tries the search suffixes and exits 1 if any is NXDOMAIN.
  answer=$(k exec "$here" -- busybox nslookup -type=a "$host" || true)
  ip=$(awk '/^Address/ {a=$NF} END {print a}' <<<"$answer")
  [[ $ip =~ ^[0-9.]+$ ]] || { echo "cannot resolve $host in $here: $answer" >&2; exit 1; }
  echo "$host resolves to $ip in $here"
fi
for _ in $(seq 1 20); do
  got=$(k exec "$here" -- busybox sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | busybox nc -w 3 $ip $port" 2>/dev/null | tail -n 1 | tr -d '\r' || true)
  if [ "$got" = "$there" ]; then echo "$here -> $host:$port -> $there"; exit 0; fi
done
echo "never reached $there from $here via $host:$port (last answer: ${got:-none})" >&2
exit 1
