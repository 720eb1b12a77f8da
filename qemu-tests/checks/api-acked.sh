#!/usr/bin/env bash
# Checks that every ConfigMap checks/api-writer.sh saw acknowledged exists now, and reports
# the longest gap between consecutive acknowledgements (the write unavailability).
#   checks/api-acked.sh KUBECONFIG WRITER_LOG
# Prints "acked A lost L max-gap-ms G"; exits 1 if anything is lost or nothing was acked.
set -euo pipefail
kc=$1 log=$2
kubectl --kubeconfig "$kc" get configmaps -o name | sed 's|^configmap/||' | sort -u > "$log.present"
python3 - "$log" "$log.present" <<'PY'
import sys
acked, times = [], []
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) == 3 and parts[0] == "acked":
        acked.append("w" + parts[1]); times.append(int(parts[2]))
present = set(l.strip() for l in open(sys.argv[2]))
lost = [k for k in acked if k not in present]
gap = max((b - a for a, b in zip(times, times[1:])), default=0)
print(f"acked {len(acked)} lost {len(lost)} max-gap-ms {gap}")
if lost: print("lost:", " ".join(lost[:20]))
sys.exit(1 if lost or not acked else 0)
PY
