#!/usr/bin/env bash
# The longest time writes stopped around a fault: the largest interval between two
# consecutive acknowledgements checks/api-writer.sh saw, from the last one before MILLIS (the
# fault, `date +%s%3N` just before it) to the first one at least 10 s after it. Unlike
# checks/first-ack-after.sh, a write that was already on its way at the fault does not hide
# the stall that follows it.
#   checks/write-gap.sh WRITER_LOG FAULT_MILLIS_FILE
# Prints "write-gap-ms N"; exits 1 until writes have gone on for 10 s after the fault.
set -euo pipefail
since=$(cat "$2")
awk -v s="$since" '
  $1 != "acked" { next }
  $3 < s { prev = $3; next }
  prev == "" { print "no acknowledgement before the fault"; bad = 1; exit 1 }
  { if ($3 - prev > gap) gap = $3 - prev; prev = $3; if ($3 >= s + 10000) { done = 1; exit } }
  END {
    if (bad) exit 1
    if (!done) { print "pending"; exit 1 }
    print "write-gap-ms " gap
  }' "$1"
