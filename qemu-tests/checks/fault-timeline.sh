#!/usr/bin/env bash
# What happened around a fault, for the run's record: the writer's answers from 2 s before
# MILLIS (the fault, `date +%s%3N` just before it) to 15 s after, as milliseconds relative
# to it, and every VIP hand-over the masters' consoles printed, dated the same way. It
# explains a long write gap (a stall behind etcd's election, or the VIP changing hands
# again) without keeping the scratch directory.
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
# Each VIP line is dated by when the runner saw its last byte arrive (`<vm>.console.arrivals`,
# `LENGTH EPOCH_MS` lines, 50 ms precision), in ms from the fault; `?` when undated.
for c in "$@"; do
  grep -a -b 'vip-\(released\|acquired\)' "$c" 2>/dev/null | tr -d '\r' |
    awk -v s="$since" -v name="$(basename "$c" .console.log)" -v arr="${c%.log}.arrivals" '
      BEGIN { n = 0; while ((getline l < arr) > 0) { split(l, f, " "); len[n] = f[1]; at[n] = f[2]; n++ } }
      {
        colon = index($0, ":"); text = substr($0, colon + 1)
        end = substr($0, 1, colon - 1) + length(text)  # the line ends at this byte
        t = "?"
        for (i = 0; i < n; i++) if (len[i] + 0 >= end) { t = sprintf("%+d", at[i] - s); break }
        sub(/.*kimg: /, "", text)
        print name " (" t " ms): " text
      }'
done
exit 0
