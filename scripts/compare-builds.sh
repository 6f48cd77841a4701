#!/usr/bin/env bash
# Same-run A/B of two squeeze builds (e.g. before and after a refactor that must not change
# behaviour): test accuracy and cost of every zoo model; all-MiniLM-L6-v2's STS-B dev scores
# with batch-1 latency and batch-32 throughput; and static int8 vgg (made once by NEW_BIN
# from recipes/vgg-int8-static.toml) with batch-1 latency and batch-256 throughput. The
# timed runs alternate the two binaries, ROUNDS times each (default 3). Writes JSON to OUT.
#   bash scripts/compare-builds.sh OLD_BIN NEW_BIN OUT [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 out=$3 rounds=${4:-3}
q=target/compare-builds/vgg-int8
rm -rf "$q" && mkdir -p "$(dirname "$q")"
"$new" compress zoo/vgg --recipe recipes/vgg-int8-static.toml --out "$q" > /dev/null
python3 - "$old" "$new" "$out" "$rounds" "$q" <<'PY'
import json, subprocess, sys, statistics
old, new, out, rounds, q = sys.argv[1:6]
def ev(binary, *args):
    r = subprocess.run([binary, "eval", *args, "--json"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)
bins = (("old", old), ("new", new))
res = {"zoo": {}, "minilm": {"old": [], "new": []}, "vgg_int8": {"old": [], "new": []}}
for arch in ["mlp", "lenet5", "vgg", "resnet", "densenet"]:
    res["zoo"][arch] = {k: {m: v for m, v in ev(b, f"zoo/{arch}", "--speed-runs", "0").items()
                            if m in ("accuracy", "params", "macs", "flops")}
                        for k, b in bins}
for _ in range(int(rounds)):
    for k, b in bins:
        d = ev(b, "models/all-MiniLM-L6-v2", "--task", "stsb", "--data", "data/stsb/sts-dev.csv")
        res["minilm"][k].append({m: d[m] for m in ("spearman", "pearson", "latency_ms_b1", "throughput_b32")})
        d = ev(b, q)
        res["vgg_int8"][k].append({m: d[m] for m in ("accuracy", "latency_ms_b1", "throughput_b256")})
def summary(rows, key):
    v = [r[key] for r in rows]
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}
res["summary"] = {w: {k: {m: summary(res[w][k], m) for m in res[w][k][0]} for k, _ in bins}
                  for w in ("minilm", "vgg_int8")}
res["command"] = f"bash scripts/compare-builds.sh OLD_BIN NEW_BIN {out} {rounds}"
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res["summary"], indent=1))
PY
