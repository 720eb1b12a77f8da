#!/usr/bin/env bash
# Checks that every write the writer saw acknowledged is readable now, and reports the
# longest gap between consecutive acknowledgements (the write unavailability).
#   checks/etcd-acked.sh CLUSTER_DIR WRITER_LOG
# Prints "acked A lost L max-gap-ms G"; exits 1 if anything is lost or nothing was acked.
set -euo pipefail
dir=$1 log=$2
here=$(dirname "$0")
"$here/etcdctl.sh" "$dir" get --prefix k --keys-only | grep -v '^$' | sort -u > "$log.present"
"$here/acked.py" k "$log" "$log.present"
