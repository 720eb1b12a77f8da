#!/usr/bin/env bash
# Reads checks/arp-watch.py's log: fails if any probe was answered by two machines at once.
#   checks/arp-check.sh WATCH_LOG
# Prints "probes P answered A max-macs-per-probe M owners MAC>MAC…" (owners: the answering
# MAC each time it changed); exits 1 when M > 1 or no probe was answered.
set -euo pipefail
python3 - "$1" <<'PY'
import sys
probes = [l.split() for l in open(sys.argv[1]) if l.startswith("probe ")]
answered = [p for p in probes if p[3] != "-"]
most = max((len(p[3].split(",")) for p in answered), default=0)
owners = []
for p in answered:
    for mac in p[3].split(","):
        if not owners or owners[-1] != mac:
            owners.append(mac)
print(f"probes {len(probes)} answered {len(answered)} max-macs-per-probe {most} owners {'>'.join(owners)}")
sys.exit(1 if most > 1 or not answered else 0)
PY
