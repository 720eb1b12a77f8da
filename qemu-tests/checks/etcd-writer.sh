#!/usr/bin/env bash
# Writes k1, k2, … to a kimg cluster's etcd until stopped; prints "acked N MILLIS" for every
# write etcd acknowledged (MILLIS: wall clock at the acknowledgement).
#   checks/etcd-writer.sh CLUSTER_DIR
set -uo pipefail
dir=$1
here=$(dirname "$0")
i=0
while true; do
  i=$((i + 1))
  if "$here/etcdctl.sh" "$dir" put "k$i" "v$i" >/dev/null 2>&1; then
    echo "acked $i $(date +%s%3N)"
  else
    echo "failed $i $(date +%s%3N)"
  fi
done
