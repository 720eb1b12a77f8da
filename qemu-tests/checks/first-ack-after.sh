#!/usr/bin/env bash
# How long writes stopped after a fault: milliseconds from MILLIS (the fault, `date +%s%3N`
# just before it) to the first write checks/api-writer.sh saw acknowledged after it.
#   checks/first-ack-after.sh WRITER_LOG FAULT_MILLIS_FILE
# Prints "write-unavailable-ms N"; exits 1 while no write was acknowledged since.
set -euo pipefail
since=$(cat "$2")
first=$(awk -v s="$since" '$1 == "acked" && $3 >= s { print $3; exit }' "$1")
[ -n "$first" ] || { echo pending; exit 1; }
echo "write-unavailable-ms $((first - since))"
