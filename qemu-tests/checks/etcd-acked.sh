#!/usr/bin/env bash
# Checks that every write the writer saw acknowledged is readable now, and reports the
# longest gap between consecutive acknowledgements (the write unavailability).
#   checks/etcd-acked.sh CLUSTER_DIR WRITER_LOG
# Prints "acked A lost L max-gap-ms G"; exits 1 if anything is lost or nothing was acked.
set -euo pipefail
dir=$1 log=$2
here=$(dirname "$0")
"$here/etcdctl.sh" "$dir" get --prefix k --keys-only | grep -v '^$' | sort -u > "$log.present"
python3 - "$log" "$log.present" <<'PY'
import sys
acked, times = [], []
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) == 3 and parts[0] == "acked":
        acked.append("k" + parts[1]); times.append(int(parts[2]))
present = set(l.strip() for l in open(sys.argv[2]))
lost = [k for k in acked if k not in present]
gap = max((b - a for a, b in zip(times, times[1:])), default=0)
print(f"acked {len(acked)} lost {len(lost)} max-gap-ms {gap}")
if lost: print("lost keys:", " ".join(lost[:20]))
sys.exit(1 if lost or not acked else 0)
PY
