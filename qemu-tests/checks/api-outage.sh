#!/usr/bin/env bash
# How long the API was unreachable after a fault: from MILLIS (the fault, `date +%s%3N`
# just before it) to the first "ok" of checks/api-prober.sh that follows a failure.
#   checks/api-outage.sh PROBER_LOG FAULT_MILLIS_FILE
# Prints "outage-ms N failures F" (N = 0 when no probe failed within 10 s of the fault);
# exits 1 while the API has not answered again yet (run it with retry-until-success).
set -euo pipefail
python3 - "$1" "$(cat "$2")" <<'PY'
import sys, time
since = int(sys.argv[2])
probes = [(l.split()[0], int(l.split()[1])) for l in open(sys.argv[1]) if len(l.split()) == 2]
after = [(s, t) for s, t in probes if t >= since]
first_fail = next((i for i, (s, _) in enumerate(after) if s == "fail"), None)
if first_fail is None:
    if time.time() * 1000 - since < 10000:
        print("pending"); sys.exit(1)
    print("outage-ms 0 failures 0"); sys.exit(0)
back = next(((s, t) for s, t in after[first_fail:] if s == "ok"), None)
fails = sum(1 for s, _ in after if s == "fail")
if back is None:
    print(f"outage-ms unrecovered failures {fails}"); sys.exit(1)
print(f"outage-ms {back[1] - since} failures {fails}")
PY
