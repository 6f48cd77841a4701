#!/usr/bin/env bash
# Times the README's two commands on a clean clone of this repository's HEAD (crates come
# from cargo's download cache; nothing else is reused) and records the seconds of each and
# the size of target/ afterwards under KEY (default "after") in results/setup-time.json.
#   bash scripts/setup-time.sh [KEY]
set -euo pipefail
cd "$(dirname "$0")/.."
key=${1:-after}
repo=$(pwd)
dir=$(mktemp -d)
git clone -q "$repo" "$dir/squeeze"
cd "$dir/squeeze"
s=$(date +%s); bash scripts/test.sh > "$dir/test.log" 2>&1; test_s=$(( $(date +%s) - s ))
s=$(date +%s); bash scripts/demo.sh > "$dir/demo.log" 2>&1; demo_s=$(( $(date +%s) - s ))
bytes=$(du -sb target | cut -f1)
cd "$repo"
python3 - "$key" "$test_s" "$demo_s" "$bytes" <<'PY'
import json, pathlib, sys
key, test_s, demo_s, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
p = pathlib.Path("results/setup-time.json")
d = json.loads(p.read_text()) if p.exists() else {}
d[key] = {"test_s": test_s, "demo_s": demo_s, "target_bytes": nbytes}
if key == "after":
    d.update(d["after"])
d["command"] = "bash scripts/setup-time.sh"
p.write_text(json.dumps(d, indent=2) + "\n")
PY
rm -rf "$dir"
