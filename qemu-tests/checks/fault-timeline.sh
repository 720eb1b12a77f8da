#!/usr/bin/env bash
# What happened around a fault, for the run's record: the writer's answers from 2 s before
# MILLIS (the fault, `date +%s%3N` just before it) to 15 s after, as milliseconds relative
# to it, and every VIP hand-over the masters' consoles printed. It explains a long write gap
# (a stall behind etcd's election, or the VIP changing hands again) without keeping the
# scratch directory.
#   checks/fault-timeline.sh WRITER_LOG FAULT_MILLIS_FILE CONSOLE_LOG...
# Prints one line per event; never fails.
set -uo pipefail
since=$(cat "$2")
log=$1
shift 2
awk -v s="$since" '
  ($1 == "acked" || $1 == "failed") && $3 >= s - 2000 && $3 <= s + 15000 {
    line = line sprintf(" %s%+d", ($1 == "acked" ? "a" : "F"), $3 - s)
  }
  END { print "writer(ms from fault):" line }' "$log"
for c in "$@"; do
  grep -a 'vip-\(released\|acquired\)' "$c" 2>/dev/null | tr -d '\r' | sed 's/.*kimg: //' | sed "s|^|$(basename "$c" .console.log): |"
done
exit 0
