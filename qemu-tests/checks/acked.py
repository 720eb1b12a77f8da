#!/usr/bin/env python3
"""Compares a writer's log with what the store holds now (shared by etcd-acked.sh and
api-acked.sh): every "acked N MILLIS" line names key PREFIX+N, which must be present.
Prints "acked A lost L max-gap-ms G" (G: the longest gap between consecutive
acknowledgements, the write unavailability); exits 1 if anything is lost or nothing was
acked.
    checks/acked.py PREFIX WRITER_LOG PRESENT_KEYS_FILE
"""
import sys

prefix, log, present_file = sys.argv[1], sys.argv[2], sys.argv[3]
acked, times = [], []
for line in open(log):
    parts = line.split()
    if len(parts) == 3 and parts[0] == "acked":
        acked.append(prefix + parts[1])
        times.append(int(parts[2]))
present = set(l.strip() for l in open(present_file))
lost = [k for k in acked if k not in present]
gap = max((b - a for a, b in zip(times, times[1:])), default=0)
print(f"acked {len(acked)} lost {len(lost)} max-gap-ms {gap}")
if lost:
    print("lost:", " ".join(lost[:20]))
sys.exit(1 if lost or not acked else 0)
