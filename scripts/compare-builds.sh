#!/usr/bin/env bash
# Same-run A/B of two squeeze builds (e.g. before and after a refactor that must not change
# behaviour): test accuracy and cost of every zoo model, and all-MiniLM-L6-v2's STS-B
# scores and speed, the two binaries alternating. Writes JSON to OUT.
#   bash scripts/compare-builds.sh OLD_BIN NEW_BIN OUT
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 out=$3
python3 - "$old" "$new" "$out" <<'PY'
import json, subprocess, sys
old, new, out = sys.argv[1:4]
def ev(binary, *args):
    r = subprocess.run([binary, "eval", *args, "--json"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)
res = {"zoo": {}, "minilm": {"old": [], "new": []}}
for arch in ["mlp", "lenet5", "vgg", "resnet", "densenet"]:
    res["zoo"][arch] = {k: {m: v for m, v in ev(b, f"zoo/{arch}", "--speed-runs", "0").items()
                            if m in ("accuracy", "params", "macs", "flops")}
                        for k, b in (("old", old), ("new", new))}
for _ in range(2):
    for k, b in (("old", old), ("new", new)):
        d = ev(b, "models/all-MiniLM-L6-v2", "--task", "stsb", "--data", "data/stsb/sts-dev.csv")
        res["minilm"][k].append({m: d[m] for m in ("spearman", "pearson", "latency_ms_b1", "throughput_b32")})
res["command"] = f"bash scripts/compare-builds.sh OLD_BIN NEW_BIN {out}"
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=1))
PY
