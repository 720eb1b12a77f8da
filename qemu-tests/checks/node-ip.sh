#!/usr/bin/env bash
# Prints the IP of a node of a kimg cluster.   checks/node-ip.sh CLUSTER_DIR NODE
set -euo pipefail
python3 - "$1/cluster.toml" "$2" <<'PY'
import sys, tomllib
nodes = tomllib.load(open(sys.argv[1], "rb"))["node"]
print(next(n["ip"] for n in nodes if n["name"] == sys.argv[2]))
PY
