#!/usr/bin/env bash
# Prints the node name of the current etcd leader of a kimg cluster.
#   checks/etcd-leader.sh CLUSTER_DIR
set -euo pipefail
dir=$1
here=$(dirname "$0")
"$here/etcdctl.sh" "$dir" endpoint status -w json | python3 -c '
import json, sys, tomllib
status = json.load(sys.stdin)
nodes = tomllib.load(open(sys.argv[1] + "/cluster.toml", "rb"))["node"]
for s in status:
    if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
        ip = s["Endpoint"].split("//")[1].split(":")[0]
        print(next(n["name"] for n in nodes if n["ip"] == ip))
        sys.exit(0)
sys.exit("no leader among " + ", ".join(s["Endpoint"] for s in status))
' "$dir"
